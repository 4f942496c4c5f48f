"""ResizeMix (Qin et al. 2020): the whole partner, resized into ``paste_box``, pasted onto ``a``.

Every box, mask and crowd region of ``b`` is scaled and translated with it; ``a``'s follow the
CutMix rules with ``paste_box`` as the cut. Parameters: a scale ``tau ~ U(scale)`` of the sides
(paper: ``[0.1, 0.8]``), the box placed uniformly on the canvas; ``lam = 1 - area / (H W)``.
The partner is read at its own size (not aligned first), so nothing is resampled twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field, field_validator

from detmix import functional as F
from detmix._fields import BoxRules, Unit
from detmix._parse import parse_sample
from detmix.align import place_sample, resize_sample
from detmix.modes import Mode, register
from detmix.modes.cutmix import cutmix
from detmix.sampling import MixParams

__all__ = ["ResizeMix", "ResizeMixConfig", "resizemix"]


class ResizeMixConfig(BoxRules):
    """ResizeMix parameters: the range of the paste box's side over the canvas's, and the
    CutMix thresholds for ``a``'s boxes."""

    scale: tuple[Unit, Unit] = Field(default=(0.1, 0.8), description="[low, high] side of the paste box / canvas")

    @field_validator("scale")
    @classmethod
    def _ordered_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not (0 < value[0] <= value[1]):
            raise ValueError(f"scale must be [low, high] with 0 < low <= high <= 1, got {list(value)}")
        return value


def resizemix(
    a: dict[str, Any],
    b: dict[str, Any],
    paste_box: Sequence[int],
    *,
    min_visibility: float = 0.0,
    min_area: float = 0.0,
    min_size: float = 1.0,
    weight: F.WeightMode = "visibility",
    box_keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Paste all of ``b``, resized to ``paste_box = (x1, y1, x2, y2)`` (whole pixels on ``a``'s
    canvas; ``b`` may have any size), onto ``a``. ``b``'s boxes and masks are scaled and shifted
    with its pixels (one resize, as ``align_pair(..., "resize")``), then the pair is a CutMix with
    ``paste_box`` as the cut: the result has :func:`~detmix.functional.cutmix`'s keys. With
    masks, each of ``b``'s boxes becomes the tight box of its resized mask: a resize moves every
    pixel, so no box of ``b`` is "untouched" and its mask is the truth."""
    pa = parse_sample(a, "a")
    x1, y1, x2, y2 = F.check_cut_box(paste_box, pa.height, pa.width, name="paste_box")
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"paste_box must not be empty, got {[x1, y1, x2, y2]}")
    small = resize_sample(b, y2 - y1, x2 - x1, name="b")
    small = _tight_to_masks(small)
    placed = place_sample(small, (x1, y1, x2, y2), pa.height, pa.width, name="b")
    return cutmix(a, placed, (x1, y1, x2, y2), min_visibility=min_visibility, min_area=min_area, min_size=min_size,
                  weight=weight, box_keys=box_keys)


def _tight_to_masks(sample: dict[str, Any]) -> dict[str, Any]:
    """With masks, a resized box is the tight box of its resized mask: the resize moved every
    pixel and the mask (resampled by nearest neighbour) is what the output shows, so the scaled
    box is no longer exact and nothing of ``b`` is "untouched". A box whose mask vanished in the
    resize keeps its scaled box (and then counts as invisible: its mask is empty)."""
    p = parse_sample(sample, "b")
    if p.masks is None or not p.num_boxes:
        return sample
    xp = p.xp
    tight = F.masks_to_boxes(p.masks, p.boxes.dtype)
    shown = xp.any(p.masks != 0, axis=(1, 2))
    return {**sample, "boxes": xp.where(shown[:, None], tight, p.boxes)}


class ResizeMix(Mode):
    name = "resizemix"
    config = ResizeMixConfig
    extra_keys = ("paste_box",)
    resizes_partner = True

    def sample(self, rng: Any, cfg: ResizeMixConfig, height: int, width: int, partners: Any = ()) -> MixParams:
        tau = float(rng.uniform(cfg.scale[0], cfg.scale[1]))
        h, w = max(1, min(height, round(tau * height))), max(1, min(width, round(tau * width)))
        x1, y1 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = (x1, y1, x1 + w, y1 + h)
        return MixParams(self.name, 1.0 - w * h / (height * width), None, (int(height), int(width)), {"paste_box": box})

    def check(self, params: MixParams) -> None:
        box = params["paste_box"]
        if not (isinstance(box, tuple) and len(box) == 4 and all(isinstance(v, int) for v in box)):
            raise ValueError(f"paste_box must be 4 whole pixels (x1, y1, x2, y2), got {box!r}")
        if not (0 <= box[0] < box[2] and 0 <= box[1] < box[3]):
            raise ValueError(f"paste_box must satisfy 0 <= x1 < x2 and 0 <= y1 < y2, got {list(box)}")
        if params.canvas is None:
            return
        height, width = params.canvas
        x1, y1, x2, y2 = F.check_cut_box(box, height, width, name="paste_box")
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"paste_box must not be empty, got {list(box)}")
        lam = 1.0 - (x2 - x1) * (y2 - y1) / (height * width)
        if abs(lam - params.lam) > 1e-9:
            raise ValueError(f"lam must be 1 - area(paste_box) / (height * width) = {lam!r}, got {params.lam!r}")

    def apply(self, a: dict, partners: Any, params: MixParams, cfg: ResizeMixConfig, box_keys: Any = None) -> dict:
        return resizemix(a, partners[0], params["paste_box"], min_visibility=cfg.min_visibility, min_area=cfg.min_area,
                         min_size=cfg.min_size, weight=cfg.weight, box_keys=box_keys)

    def outline(self, params: MixParams) -> tuple[int, int, int, int]:
        return params["paste_box"]


register(ResizeMix())
