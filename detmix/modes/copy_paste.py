"""Copy-Paste (Ghiasi et al. 2021): objects of the partner pasted onto ``a`` by their masks.

The pasted region is the union of the selected instances' masks (or, with ``by_box``, of the
pixels of their boxes, as MMDetection's ``paste_by_box``): pixels of ``b`` inside it, ``a``
outside. ``a``'s objects lose the pasted pixels by the CutMix rules (``mask & ~region``, exact
boxes, visibility, thresholds); the selected objects of ``b`` keep their masks and boxes whole;
``b``'s other objects are not pasted and are reported in ``dropped`` with the reason
``NOT_SELECTED``. Everything after the selection is the region CutMix of
:func:`detmix.functional.cutmix`. The partner is aligned to ``a``'s canvas first, as in every
pair mode (the paper's large-scale jitter of ``b`` is not drawn here).

Parameters: ``select``, the indices of ``b``'s pasted objects (drawn: all of them, or a uniform
number of them at random, optionally of some classes only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from detmix import functional as F
from detmix._fields import Thresholds
from detmix._parse import parse_sample
from detmix.modes import Mode, register
from detmix.modes.cutmix import cutmix
from detmix.sampling import MixParams

__all__ = ["CopyPaste", "CopyPasteConfig", "copy_paste"]


class CopyPasteConfig(Thresholds):
    """Copy-Paste parameters: which of the partner's objects are pasted, and the CutMix
    thresholds for ``a``'s objects under them."""

    select: Literal["all", "random"] = Field(
        default="random", description="paste all of the partner's objects, or a uniform number of them at random"
    )
    classes: list[int] | None = Field(default=None, max_length=1000, description="paste only objects of these labels")
    by_box: bool = Field(default=False, description="paste the pixels of the boxes (partners without masks)")


def copy_paste(
    a: dict[str, Any],
    b: dict[str, Any],
    select: Sequence[int],
    *,
    by_box: bool = False,
    min_visibility: float = 0.0,
    min_area: float = 0.0,
    min_size: float = 1.0,
    weight: F.WeightMode = "visibility",
    box_keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Paste ``b``'s objects ``select`` (row indices) onto ``a`` by their masks (``by_box``: by
    their boxes' pixels). The result has :func:`~detmix.functional.cutmix`'s keys; ``b``'s
    objects that were not selected are in ``dropped`` with reason ``NOT_SELECTED`` and
    visibility 0, and ``lam`` is the share of ``a``'s pixels left."""
    pb = parse_sample(b, "b")  # a is checked by cutmix
    try:
        rows = sorted({int(i) for i in select})
    except (TypeError, ValueError):
        raise TypeError(f"select must be a sequence of row indices of b's objects, got {select!r}") from None
    if rows and not (0 <= rows[0] and rows[-1] < pb.num_boxes):
        raise ValueError(f"select must hold row indices of b's {pb.num_boxes} objects, got {list(select)}")
    if pb.masks is None and not by_box:
        raise ValueError("copy_paste pastes b's objects by their masks: give masks (for a and b), or by_box=True to "
                         "paste the pixels of their boxes")
    xp = pb.xp
    dev = getattr(pb.boxes, "device", None)
    chosen = xp.asarray(rows, dtype=xp.int64, device=dev)
    if by_box:
        shapes = F.pixel_boxes(xp.take(pb.boxes, chosen, axis=0), pb.height, pb.width)
    else:
        shapes = xp.take(pb.masks, chosen, axis=0) != 0
    region = xp.any(shapes, axis=0) if rows else xp.zeros((pb.height, pb.width), dtype=xp.bool, device=dev)

    # Only the selected objects of b take part; the others are reported apart.
    kept_b = {**b, "boxes": xp.take(pb.boxes, chosen, axis=0), "labels": xp.take(pb.labels, chosen, axis=0)}
    if pb.masks is not None:
        kept_b["masks"] = xp.take(pb.masks, chosen, axis=0)
    for key, value in pb.arrays.items():
        if key in a and value.shape[0] == pb.num_boxes and (box_keys is None or key in box_keys):
            kept_b[key] = xp.take(value, chosen, axis=0)
    out = cutmix(a, kept_b, region=region, min_visibility=min_visibility, min_area=min_area, min_size=min_size,
                 weight=weight, box_keys=box_keys)

    # Row indices of b back to b's own, and b's other objects dropped as not selected.
    lost = out["dropped"]
    if rows:
        from_b, lost_b = out["source"] == 1, lost["source"] == 1
        out["index"] = xp.where(from_b, xp.take(chosen, xp.where(from_b, out["index"], 0), axis=0), out["index"])
        lost["index"] = xp.where(lost_b, xp.take(chosen, xp.where(lost_b, lost["index"], 0), axis=0), lost["index"])
    others = xp.asarray([i for i in range(pb.num_boxes) if i not in set(rows)], dtype=xp.int64, device=dev)
    n = int(others.shape[0])
    lost["source"] = xp.concat([lost["source"], xp.ones(n, dtype=xp.int64, device=dev)])
    lost["index"] = xp.concat([lost["index"], others])
    lost["visibility"] = xp.concat([lost["visibility"], xp.zeros(n, dtype=lost["visibility"].dtype, device=dev)])
    lost["reason"] = xp.concat([lost["reason"], xp.full(n, int(F.DropReason.NOT_SELECTED), dtype=xp.int64, device=dev)])
    return out


class CopyPaste(Mode):
    name = "copy_paste"
    config = CopyPasteConfig
    extra_keys = ("select",)
    reads_partner = True

    def sample(self, rng: Any, cfg: CopyPasteConfig, height: int, width: int, partners: Any = ()) -> MixParams:
        if not partners:
            raise ValueError("copy_paste selects among the partner's objects: pass partners= (the partner sample on "
                             "the canvas), as detmix.draw_params does")
        labels = np.asarray(partners[0]["labels"].cpu() if hasattr(partners[0]["labels"], "cpu")
                            else partners[0]["labels"]).reshape(-1)
        candidates = [i for i, label in enumerate(labels.tolist()) if cfg.classes is None or label in cfg.classes]
        if cfg.select == "all" or not candidates:
            chosen = candidates
        else:
            count = int(rng.integers(1, len(candidates) + 1))
            chosen = sorted(int(i) for i in rng.choice(candidates, size=count, replace=False))
        # lam is known once the pasted region is: the record keeps the draw, apply reports lam.
        return MixParams(self.name, 1.0, None, (int(height), int(width)), {"select": tuple(chosen)})

    def check(self, params: MixParams) -> None:
        select = params["select"]
        if not (isinstance(select, tuple) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                  for i in select)):
            raise ValueError(f"select must be a list of row indices (ints >= 0) of the partner's objects, got {select!r}")
        if len(set(select)) != len(select):
            raise ValueError(f"select must not name an object twice, got {list(select)}")

    def apply(self, a: dict, partners: Any, params: MixParams, cfg: CopyPasteConfig, box_keys: Any = None) -> dict:
        return copy_paste(a, partners[0], params["select"], by_box=cfg.by_box, min_visibility=cfg.min_visibility,
                          min_area=cfg.min_area, min_size=cfg.min_size, weight=cfg.weight, box_keys=box_keys)

    def describe(self, params: MixParams) -> str:
        return f"copy_paste  {len(params['select'])} objects"


register(CopyPaste())
