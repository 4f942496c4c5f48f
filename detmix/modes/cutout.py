"""Cutout (DeVries & Taylor 2017): a region of the image erased to ``fill``, nothing pasted.

Detection-aware: ``a``'s boxes and masks follow exactly as in CutMix with an empty partner (a
covered object is dropped or shrunk, with its visible share as weight); the partner is not read.
Parameters: the erased share ``area ~ U(area)`` of the canvas (default 5-25%), a box of that area
with the canvas's aspect, centred uniformly and clipped to the canvas (``lam`` recomputed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from detmix import functional as F
from detmix._fields import Number, Thresholds, Unit
from detmix._parse import parse_sample
from detmix.modes import Mode, register
from detmix.modes.cutmix import check_cut_params, cutmix
from detmix.sampling import MixParams, sample_cut_box

__all__ = ["Cutout", "CutoutConfig", "cutout"]


class CutoutConfig(Thresholds):
    """Cutout parameters: the range of the erased share, the ``fill`` of the erased pixels and the
    CutMix thresholds for the boxes."""

    area: tuple[Unit, Unit] = Field(default=(0.05, 0.25), description="[low, high] share of the canvas erased")
    fill: Number = Field(default=0.0, ge=0.0, le=255.0, description="value of the erased pixels (uint8: a whole number)")

    @field_validator("area")
    @classmethod
    def _ordered_area(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"area must be [low, high] with low <= high, got {list(value)}")
        return value


def cutout(
    a: dict[str, Any],
    cut_box: Sequence[int] | None = None,
    *,
    region: Any = None,
    fill: float = 0,
    min_visibility: float = 0.0,
    min_area: float = 0.0,
    min_size: float = 1.0,
    weight: F.WeightMode = "visibility",
    box_keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Erase the ``cut_box`` (or ``region``) of ``a`` to ``fill``; ``a``'s boxes, masks and crowd
    regions follow as in :func:`~detmix.functional.cutmix` with nothing pasted. The result has
    :func:`~detmix.functional.cutmix`'s keys; every dropped box has ``source`` 0."""
    pa = parse_sample(a, "a")
    xp = pa.xp
    dev = getattr(pa.image, "device", None)
    _check_fill(fill, pa.image.dtype, xp)
    blank: dict[str, Any] = {
        "image": xp.full(pa.image.shape, fill, dtype=pa.image.dtype, device=dev),
        "boxes": xp.zeros((0, 4), dtype=pa.boxes.dtype, device=dev),
        "labels": xp.zeros((0,), dtype=pa.labels.dtype, device=dev),
    }
    if pa.masks is not None:
        blank["masks"] = xp.zeros((0, pa.height, pa.width), dtype=pa.masks.dtype, device=dev)
    for key, value in pa.arrays.items():  # the per-box extras of a, with no rows
        if value.shape[0] == pa.num_boxes and (box_keys is None or key in box_keys):
            blank[key] = value[:0]
    return cutmix(a, blank, cut_box, region=region, min_visibility=min_visibility, min_area=min_area,
                  min_size=min_size, weight=weight, box_keys=box_keys)


def _check_fill(fill: Any, dtype: Any, xp: Any) -> None:
    """``fill`` must be a finite number the image's dtype holds as it is: for uint8, a whole
    number in [0, 255] (numpy would wrap 300 to 44, torch would refuse it)."""
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not np.isfinite(fill):
        raise ValueError(f"fill must be a finite number, got {fill!r}")
    if xp.isdtype(dtype, "integral"):
        if fill != int(fill) or not (0 <= fill <= 255):
            raise ValueError(f"fill must be a whole number in [0, 255] for a uint8 image, got {fill!r}")


class Cutout(Mode):
    name = "cutout"
    config = CutoutConfig
    uses_cut_box = True

    def sample(self, rng: Any, cfg: CutoutConfig, height: int, width: int, partners: Any = ()) -> MixParams:
        lam = 1.0 - float(rng.uniform(cfg.area[0], cfg.area[1]))
        box, lam = sample_cut_box(rng, lam, height, width)
        return MixParams(self.name, lam, box, (int(height), int(width)))

    def check(self, params: MixParams) -> None:
        check_cut_params(params)

    def apply(self, a: dict, partners: Any, params: MixParams, cfg: CutoutConfig, box_keys: Any = None) -> dict:
        return cutout(a, params.cut_box, fill=cfg.fill, min_visibility=cfg.min_visibility, min_area=cfg.min_area,
                      min_size=cfg.min_size, weight=cfg.weight, box_keys=box_keys)

    def window(self, params: MixParams) -> tuple[int, int, int, int]:
        return (0, 0, 0, 0)  # the partner is not read

    def partner_in_play(self, params: MixParams) -> bool:
        return False


register(Cutout())
