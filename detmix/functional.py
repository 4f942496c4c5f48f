"""Pure kernels of detection-aware CutMix and MixUp.

Two layers, as in ``torchvision.transforms.v2.functional``:

* array kernels (:func:`cutmix_boxes`, :func:`cutmix_masks`, :func:`masks_to_boxes`,
  :func:`drop_reasons`, :func:`cutmix_image`, :func:`mixup_image`) work on plain arrays, written
  once against the array API so the same text runs on numpy arrays and torch tensors (CPU or
  CUDA). They are vectorised over boxes and take the cut box per box, so a batch flattened with a
  batch index goes through the same code as a single pair;
* sample functions (:func:`cutmix`, :func:`mixup`) check a pair of samples, call the kernels and
  assemble the result.

Nothing here draws random numbers: parameters come from :mod:`detmix.sampling`.

Conventions: boxes are absolute-pixel ``xyxy`` floats; a cut box is ``(x1, y1, x2, y2)`` in
integer pixels, half-open ``[x1, x2) x [y1, y2)``; ``lam`` is the share of the output that comes
from ``a`` (the image whose canvas is kept).
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

from array_api_compat import array_namespace, device, is_numpy_array

from detmix._parse import Crowd, Parsed, split_extras

__all__ = [
    "DropReason",
    "WeightMode",
    "box_weights",
    "cutmix",
    "cutmix_boxes",
    "cutmix_image",
    "copy_paste",
    "cutmix_masks",
    "cutout",
    "fmix_region",
    "resizemix",
    "drop_reasons",
    "masks_to_boxes",
    "mixup",
    "mixup_drop_reasons",
    "mixup_image",
    "mix_crowd",
    "region_mask",
    "visible_boxes",
    "box_region_masks",
    "pixel_boxes",
    "region_boxes",
    "paste_image",
    "check_region",
]

WeightMode = Literal["visibility", "lam", "hard"]
_WEIGHT_MODES = ("visibility", "lam", "hard")


class DropReason(enum.IntEnum):
    """Why a box was dropped; stored as ``dropped["reason"]`` codes."""

    INVISIBLE = 0  #: nothing of the object is left in the output
    MIN_VISIBILITY = 1  #: visibility < min_visibility
    MIN_AREA = 2  #: area of the new box < min_area
    MIN_SIZE = 3  #: width or height of the new box < min_size
    MIN_WEIGHT = 4  #: MixUp share of its image < min_weight
    NOT_SELECTED = 5  #: Copy-Paste: an object of the partner that was not among the pasted ones


# --------------------------------------------------------------------------------------------
# Array kernels
# --------------------------------------------------------------------------------------------


def region_mask(cut: Any, height: int, width: int) -> Any:
    """Boolean ``(..., H, W)`` map of the half-open cut box(es) ``cut`` of shape ``(..., 4)``."""
    xp = array_namespace(cut)
    ys = xp.arange(height, device=device(cut))
    xs = xp.arange(width, device=device(cut))
    inside_y = (ys >= cut[..., 1, None]) & (ys < cut[..., 3, None])  # (..., H)
    inside_x = (xs >= cut[..., 0, None]) & (xs < cut[..., 2, None])  # (..., W)
    return inside_y[..., :, None] & inside_x[..., None, :]


def cutmix_boxes(boxes: Any, cut: Any, pasted: Any) -> tuple[Any, Any]:
    """Apply the CutMix box rules to every box at once.

    Args:
        boxes: ``(N, 4)`` xyxy float boxes.
        cut: ``(4,)`` or ``(N, 4)`` cut box(es), same dtype as ``boxes``.
        pasted: ``(N,)`` bool, True for the boxes of the pasted image ``b`` (kept *inside* the
            cut), False for those of ``a`` (kept *outside* it).

    Returns:
        ``(new_boxes, visibility)``. A box of ``b`` becomes ``box ∩ cut`` with visibility
        ``area(box ∩ cut) / area(box)``; a box of ``a`` becomes the tight box of ``box \\ cut``
        (it only shrinks where the cut spans its whole height or width) with visibility
        ``1 - area(box ∩ cut) / area(box)``. Boxes with visibility 0 have meaningless coordinates.
    """
    xp = array_namespace(boxes)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    cx1, cy1, cx2, cy2 = cut[..., 0], cut[..., 1], cut[..., 2], cut[..., 3]

    ix1, iy1 = xp.maximum(x1, cx1), xp.maximum(y1, cy1)
    ix2, iy2 = xp.minimum(x2, cx2), xp.minimum(y2, cy2)
    iw, ih = xp.clip(ix2 - ix1, min=0), xp.clip(iy2 - iy1, min=0)
    inter = iw * ih
    area = (x2 - x1) * (y2 - y1)

    # a: the cut removes a strip of the box only where it spans the box's whole height (or width).
    spans_height = (cy1 <= y1) & (cy2 >= y2) & (iw > 0)
    spans_width = (cx1 <= x1) & (cx2 >= x2) & (ih > 0)
    nx1 = xp.where(spans_height & (cx1 <= x1), cx2, x1)
    nx2 = xp.where(spans_height & (cx2 >= x2), cx1, x2)
    ny1 = xp.where(spans_width & (cy1 <= y1), cy2, y1)
    ny2 = xp.where(spans_width & (cy2 >= y2), cy1, y2)

    new = xp.where(
        pasted[:, None],
        xp.stack([ix1, iy1, ix2, iy2], axis=1),
        xp.stack([nx1, ny1, nx2, ny2], axis=1),
    )
    # A box too small for its area to be represented (float underflow) counts as invisible.
    safe = xp.where(area > 0, area, xp.ones_like(area))
    visibility = xp.where(area > 0, xp.where(pasted, inter, area - inter) / safe, xp.zeros_like(area))
    return new, visibility


def _binary(masks: Any, canonical: bool = False) -> Any:
    """0/1 uint8 masks from bool or uint8 ones: any non-zero byte is one pixel. A bool array
    made by Pillow (mode ``"1"``) holds bytes 0/255, so it is compared first (the comparison's
    bools are canonical 0/1 on numpy and torch alike), unless the caller knows it ``canonical``
    (a parsed sample's are): then it is reinterpreted as uint8, no copy. Reductions on uint8 are
    far faster than on bool (torch): the one place where the kernels look at the backend, since
    the array API has no reinterpreting view."""
    xp = array_namespace(masks)
    if canonical and masks.dtype == xp.bool:
        return masks.view(xp.uint8)
    return (masks != 0).view(xp.uint8)


def _pixel_counts(on: Any) -> Any:
    """``(N,)`` int64 pixel counts of ``(N, H, W)`` 0/1 uint8 masks. Rows are summed in int16
    when they fit (several times faster than int32 on numpy and on torch's CPU), then the rows
    in int64: exact either way."""
    xp = array_namespace(on)
    rows = xp.sum(on, axis=2, dtype=xp.int16 if on.shape[2] < 2**15 else xp.int32)
    return xp.sum(rows, axis=1, dtype=xp.int64)


def masks_to_boxes(masks: Any, dtype: Any = None) -> Any:
    """Tight xyxy boxes of ``(N, H, W)`` masks in COCO's convention (as pycocotools ``toBbox``:
    right and bottom edges one past the last pixel). Empty masks give ``(0, 0, 0, 0)``."""
    xp = array_namespace(masks)
    _, height, width = masks.shape
    # uint8 masks are reduced as they are (non-zero is foreground) and only their (N, W) and
    # (N, H) profiles are made 0/1, which saves a pass over the masks.
    on = masks if masks.dtype == xp.uint8 else _binary(masks)
    cols = xp.astype(xp.max(on, axis=1) != 0, xp.uint8)  # (N, W) 0/1
    rows = xp.astype(xp.max(on, axis=2) != 0, xp.uint8)  # (N, H) 0/1
    x1 = xp.argmax(cols, axis=1)
    x2 = width - xp.argmax(xp.flip(cols, axis=1), axis=1)
    y1 = xp.argmax(rows, axis=1)
    y2 = height - xp.argmax(xp.flip(rows, axis=1), axis=1)
    boxes = xp.stack([x1, y1, x2, y2], axis=1)
    empty = xp.max(rows, axis=1) == 0
    boxes = xp.where(empty[:, None], xp.zeros_like(boxes), boxes)
    return xp.astype(boxes, dtype if dtype is not None else xp.float32)


def visible_boxes(boxes: Any, mask_boxes: Any, visibility: Any) -> Any:
    """The box rule with instance masks: an object the pasted region does not touch (all of its
    mask's pixels are still its own, visibility 1) keeps its input box exactly; a touched one
    gets the tight box of its visible mask (``mask_boxes``, :func:`masks_to_boxes`) clipped to
    its input box, so it never grows. ``boxes`` and ``mask_boxes`` are ``(N, 4)`` xyxy of one
    float dtype; a box whose visible mask lies outside its input box comes out empty
    (``x2 <= x1``), which :func:`drop_reasons` counts as invisible."""
    xp = array_namespace(boxes)
    clipped = xp.concat([xp.maximum(boxes[:, :2], mask_boxes[:, :2]), xp.minimum(boxes[:, 2:], mask_boxes[:, 2:])], axis=1)
    return xp.where((visibility >= 1)[:, None], boxes, clipped)


def box_region_masks(boxes: Any, height: int, width: int) -> Any:
    """Boolean ``(N, H, W)`` maps of the pixels that float xyxy ``boxes`` cover, in part or
    whole: columns ``floor(x1) <= x < ceil(x2)``, rows likewise."""
    xp = array_namespace(boxes)
    cover = xp.concat([xp.floor(boxes[:, :2]), xp.ceil(boxes[:, 2:])], axis=1)
    return region_mask(cover, height, width)


def pixel_boxes(boxes: Any, height: int, width: int) -> Any:
    """Boolean ``(N, H, W)`` maps of the pixels of float xyxy ``boxes`` whose centres
    ``(x + 0.5, y + 0.5)`` lie inside them: columns ``ceil(x1 - 0.5) <= x < ceil(x2 - 0.5)``."""
    xp = array_namespace(boxes)
    return region_mask(xp.ceil(boxes - 0.5), height, width)


def region_boxes(boxes: Any, region: Any, pasted: Any) -> tuple[Any, Any]:
    """The box rule of a CutMix over any region, for boxes without masks.

    A box's pixels are those whose centres lie inside it (:func:`pixel_boxes`); its visibility is
    the share of them on its side (``a``'s outside ``region``, ``b``'s inside); a box the region
    does not touch keeps its input box, a touched one becomes the tight box of its visible pixels
    (COCO convention) clipped to its input box (:func:`visible_boxes`). A box with no pixel centre
    inside it counts as invisible. For a rectangle on integer boxes this is the rule of
    :func:`cutmix_boxes`.

    Work in proportion to the boxes' sides, not ``N x H x W``: the region is summed once along
    its rows and once along its columns; each box reads its rows' and columns' counts from them.

    Args:
        boxes: ``(N, 4)`` xyxy floats.
        region: ``(H, W)`` bool, True where ``b`` shows.
        pasted: ``(N,)`` bool, True for ``b``'s boxes.

    Returns:
        ``(new_boxes, visibility)`` in the dtype of ``boxes``.
    """
    xp = array_namespace(boxes)
    dev = device(boxes)
    height, width = region.shape
    n = boxes.shape[0]
    cover = xp.ceil(boxes - 0.5)  # the pixel rows/columns whose centres lie inside each box
    c0 = xp.astype(xp.clip(cover[:, 0], min=0, max=width), xp.int64)
    r0 = xp.astype(xp.clip(cover[:, 1], min=0, max=height), xp.int64)
    c1 = xp.astype(xp.clip(cover[:, 2], min=0, max=width), xp.int64)
    r1 = xp.astype(xp.clip(cover[:, 3], min=0, max=height), xp.int64)
    c1, r1 = xp.maximum(c1, c0), xp.maximum(r1, r0)
    on = xp.astype(region, xp.int64)
    along_x = xp.cumulative_sum(on, axis=1, include_initial=True)  # (H, W + 1)
    along_y = xp.cumulative_sum(on, axis=0, include_initial=True)  # (H + 1, W)
    # Region pixels of each box in each of its rows (N, H) and columns (N, W).
    in_rows = xp.take(along_x, c1, axis=1).T - xp.take(along_x, c0, axis=1).T
    in_cols = xp.take(along_y, r1, axis=0) - xp.take(along_y, r0, axis=0)
    rows = xp.arange(height, device=dev)[None, :]
    cols = xp.arange(width, device=dev)[None, :]
    row_in = (rows >= r0[:, None]) & (rows < r1[:, None])
    col_in = (cols >= c0[:, None]) & (cols < c1[:, None])
    side = pasted[:, None]
    # Visible pixels per row / column: the region's for b, the rest of the box's span for a.
    vis_rows = xp.where(row_in, xp.where(side, in_rows, (c1 - c0)[:, None] - in_rows), xp.zeros_like(in_rows))
    vis_cols = xp.where(col_in, xp.where(side, in_cols, (r1 - r0)[:, None] - in_cols), xp.zeros_like(in_cols))
    before = (c1 - c0) * (r1 - r0)
    after = xp.sum(vis_rows, axis=1)
    dtype = boxes.dtype
    before_f, after_f = xp.astype(before, dtype), xp.astype(after, dtype)
    visibility = xp.where(before > 0, after_f / xp.where(before > 0, before_f, xp.ones_like(before_f)),
                          xp.zeros_like(before_f))
    any_row = xp.astype(vis_rows > 0, xp.uint8)
    any_col = xp.astype(vis_cols > 0, xp.uint8)
    y1 = xp.argmax(any_row, axis=1)
    y2 = height - xp.argmax(xp.flip(any_row, axis=1), axis=1)
    x1 = xp.argmax(any_col, axis=1)
    x2 = width - xp.argmax(xp.flip(any_col, axis=1), axis=1)
    tight = xp.astype(xp.stack([x1, y1, x2, y2], axis=1), dtype) if n else xp.zeros((0, 4), dtype=dtype, device=dev)
    tight = xp.where((after > 0)[:, None], tight, xp.zeros_like(tight))
    return visible_boxes(boxes, tight, visibility), visibility


def cutmix_masks(
    masks: Any, cut: Any, pasted: Any, dtype: Any = None, *, region: Any = None, canonical: bool = False
) -> tuple[Any, Any, Any]:
    """Apply the CutMix rules to instance masks.

    Args:
        masks: ``(N, H, W)`` bool or uint8 (any non-zero value is foreground).
        cut: four ints ``(x1, y1, x2, y2)``, one cut box for all masks, applied by a copy and a
            slice assignment; or an array of shape ``(4,)`` or ``(N, 4)``, applied with
            ``where`` so that no coordinate has to leave the device. Both give the same result.
            None when ``region`` is given.
        region: instead of ``cut``, an ``(H, W)`` bool map of where ``b`` shows (any shape).
        canonical: the caller knows bool ``masks`` hold bytes 0/1 (a parsed sample's do), so
            they are read without a copy.
        pasted: ``(N,)`` bool as in :func:`cutmix_boxes`.
        dtype: float dtype of the returned boxes and visibility (default float32).

    Returns:
        ``(new_masks, visibility, boxes)``: ``mask & cut`` for pasted masks and ``mask & ~cut``
        for the others (bool masks stay bool, uint8 masks come back 0/1), the share of each
        mask's pixels that is left (0 for an empty mask), and the tight boxes of the new masks
        (:func:`masks_to_boxes`).
    """
    xp = array_namespace(masks)
    dtype = dtype if dtype is not None else xp.float32
    _, height, width = masks.shape
    on = _binary(masks, canonical)
    before = _pixel_counts(on)
    if region is not None:
        keep = on & xp.astype(region[None] == pasted[:, None, None], xp.uint8)
        after = _pixel_counts(keep)
    elif isinstance(cut, (tuple, list)):
        keep, after = _cut_window(on, cut, pasted, before)
    else:
        region = region_mask(cut, height, width)
        if region.ndim == 2:
            region = region[None]
        keep = on & xp.astype(region == pasted[:, None, None], xp.uint8)
        after = _pixel_counts(keep)
    before, after = xp.astype(before, dtype), xp.astype(after, dtype)
    safe = xp.where(before > 0, before, xp.ones_like(before))
    visibility = xp.where(before > 0, after / safe, xp.zeros_like(before))
    new_masks = keep if masks.dtype == xp.uint8 else keep.view(xp.bool)
    return new_masks, visibility, masks_to_boxes(keep, dtype)


def _cut_window(on: Any, cut: Sequence[int], pasted: Any, before: Any) -> tuple[Any, Any]:
    """:func:`cutmix_masks` for one cut box of four ints: the kept pixels of 0/1 uint8 masks
    ``on`` (a copy with a window assigned, no full-size region map) and their counts (the
    pixels in the window counted, ``before`` the counts of ``on``). The box is clipped to the
    canvas as the region map clips it."""
    xp = array_namespace(on)
    _, height, width = on.shape
    x1, x2 = (min(max(int(v), 0), width) for v in (cut[0], cut[2]))
    y1, y2 = (min(max(int(v), 0), height) for v in (cut[1], cut[3]))
    window = (slice(None), slice(y1, y2), slice(x1, x2))
    inside = on[window]
    keep = on * xp.astype(~pasted, xp.uint8)[:, None, None]  # outside the cut: only the others
    keep[window] = inside * xp.astype(pasted, xp.uint8)[:, None, None]  # inside it: only the pasted
    within = _pixel_counts(inside)
    return keep, xp.where(pasted, within, before - within)


def drop_reasons(
    boxes: Any,
    visibility: Any,
    *,
    min_visibility: float = 0.0,
    min_area: float = 0.0,
    min_size: float = 0.0,
) -> Any:
    """``(N,)`` int64 codes: -1 for a kept box, else the first :class:`DropReason` that applies
    (invisible, then min_visibility, min_area, min_size). A box left empty (``x2 <= x1`` or
    ``y2 <= y1``, see :func:`visible_boxes`) counts as invisible."""
    xp = array_namespace(boxes)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    reason = xp.full(visibility.shape, -1, dtype=xp.int64, device=device(boxes))
    # Lowest priority first: a later rule overwrites an earlier one.
    for hit, code in (
        ((w < min_size) | (h < min_size), DropReason.MIN_SIZE),
        (w * h < min_area, DropReason.MIN_AREA),
        (visibility < min_visibility, DropReason.MIN_VISIBILITY),
        ((visibility <= 0) | (w <= 0) | (h <= 0), DropReason.INVISIBLE),
    ):
        reason = xp.where(hit, xp.full_like(reason, int(code)), reason)
    return reason


def mixup_drop_reasons(share: Any, *, min_weight: float = 0.0) -> Any:
    """``(N,)`` int64 codes for MixUp: -1 for a kept box, :attr:`DropReason.INVISIBLE` where its
    image's share is 0, :attr:`DropReason.MIN_WEIGHT` where it is below ``min_weight``."""
    xp = array_namespace(share)
    reason = xp.full(share.shape, -1, dtype=xp.int64, device=device(share))
    reason = xp.where(share < min_weight, xp.full_like(reason, int(DropReason.MIN_WEIGHT)), reason)
    return xp.where(share <= 0, xp.full_like(reason, int(DropReason.INVISIBLE)), reason)


def box_weights(mode: str, visibility: Any, share: Any) -> Any:
    """Per-box weights: the visibility, the share of the box's image in the output (``"lam"``)
    or ones (``"hard"``)."""
    xp = array_namespace(visibility)
    if mode == "visibility":
        return visibility
    if mode == "lam":
        return share
    if mode == "hard":
        return xp.ones_like(visibility)
    raise ValueError(f"weight must be one of {_WEIGHT_MODES}, got {mode!r}")


def cutmix_image(a: Any, b: Any, cut: Any, layout: str = "CHW") -> Any:
    """``a`` outside the cut, ``b`` inside it. ``layout`` is "HWC", "HW" or "CHW".

    ``cut`` is either four ints ``(x1, y1, x2, y2)``, applied by a copy and one slice
    assignment, or an array of shape ``(4,)`` or ``(B, 4)`` (one cut per image of a batch with
    leading dimension ``B``), applied with ``where`` so that no coordinate has to leave the
    device."""
    xp = array_namespace(a)
    if layout not in ("HWC", "HW", "CHW"):
        raise ValueError(f"layout must be 'HWC', 'HW' or 'CHW', got {layout!r}")
    if isinstance(cut, (tuple, list)):
        x1, y1, x2, y2 = (int(v) for v in cut)
        out = xp.asarray(a, copy=True)
        window = (..., slice(y1, y2), slice(x1, x2)) if layout != "HWC" else (..., slice(y1, y2), slice(x1, x2), slice(None))
        out[window] = b[window]
        return out
    if layout == "HWC":
        region = region_mask(cut, a.shape[-3], a.shape[-2])[..., None]
    elif layout == "HW":
        region = region_mask(cut, a.shape[-2], a.shape[-1])
    else:
        region = region_mask(cut, a.shape[-2], a.shape[-1])[..., None, :, :]
    return xp.where(region, b, a)


def paste_image(a: Any, b: Any, region: Any, layout: str = "CHW") -> Any:
    """``a`` outside ``region`` (an ``(H, W)`` bool map), ``b`` inside it; ``layout`` as in
    :func:`cutmix_image`."""
    xp = array_namespace(a)
    if layout == "HWC":
        region = region[..., None]
    elif layout == "CHW":
        region = region[None]
    return xp.where(region, b, a)


def mixup_image(a: Any, b: Any, lam: Any) -> Any:
    """``lam * a + (1 - lam) * b``; uint8 is computed in float32, rounded half to even and
    clipped, so it never wraps around. ``lam`` may be a scalar or an array broadcastable to
    ``a`` (one value per image of a batch)."""
    xp = array_namespace(a)
    if a.dtype == xp.uint8:
        if _by_table(a, b, lam):
            return _mixup_uint8_by_table(xp, a, b, lam)
        return _mixup_uint8(xp, a, b, lam)
    if a.dtype in (xp.float32, xp.float64):
        return lam * a + (1 - lam) * b
    # float16 / bfloat16: blend in float32, store in the input dtype.
    return xp.astype(_blend_float32(xp, a, b, lam), a.dtype)


#: Below this many values a uint8 MixUp is blended directly: the table costs 65,536 of them.
_TABLE_MIN_SIZE = 1 << 18


def _blend_float32(xp: Any, a: Any, b: Any, lam: Any) -> Any:
    return lam * xp.astype(a, xp.float32) + (1 - lam) * xp.astype(b, xp.float32)


def _mixup_uint8(xp: Any, a: Any, b: Any, lam: Any) -> Any:
    """The uint8 blend: float32, rounded half to even, clipped."""
    return xp.astype(xp.clip(xp.round(_blend_float32(xp, a, b, lam)), min=0, max=255), xp.uint8)


def _by_table(a: Any, b: Any, lam: Any) -> bool:
    """A large numpy pair of one shape and a scalar ``lam``: :func:`_mixup_uint8_by_table`."""
    return (
        is_numpy_array(a)
        and is_numpy_array(b)
        and b.dtype == a.dtype
        and b.shape == a.shape
        and isinstance(lam, numbers.Real)
        and not isinstance(lam, bool)
        and a.size >= _TABLE_MIN_SIZE
    )


def _mixup_uint8_by_table(xp: Any, a: Any, b: Any, lam: Any) -> Any:
    """:func:`_mixup_uint8` looked up: the blend evaluated once for each of the 65,536 pairs of
    levels, then indexed by ``a * 256 + b``. Each output value is the same float32 expression of
    the same two levels, so the result is bit for bit the direct one; a photograph takes about
    40% of the time (four passes over the pixels instead of eight)."""
    levels = xp.arange(256, dtype=xp.uint8)
    table = xp.reshape(_mixup_uint8(xp, levels[:, None], levels[None, :], lam), (-1,))
    index = xp.astype(a, xp.uint16)
    index <<= 8
    index |= b
    return xp.reshape(xp.take(table, xp.reshape(index, (-1,))), a.shape)


def mix_crowd(
    crowd_a: Crowd | None, crowd_b: Crowd | None, height: int, width: int, *, cut: Sequence[int] | None = None,
    region: Any = None, lam: float | None = None,
) -> dict[str, Any] | None:
    """Mix the crowd regions (COCO ``iscrowd=1``) of a pair: they are never targets, only
    regions to ignore, and they follow the pixels like any mask.

    With ``cut`` (CutMix, four ints; ``(0, 0, 0, 0)`` mixes nothing) or ``region`` (an ``(H, W)``
    bool map, CutMix over any region): ``a``'s regions outside the cut, ``b``'s inside it. With ``lam`` (MixUp): the regions of both, but none of a side
    whose share of the blend is 0. A region's box is its input box while the cut does not touch
    it and otherwise the tight box of its visible part, clipped to its input box (the object
    box rule, :func:`visible_boxes`); a region with nothing visible is removed. Without masks
    the visible part is the box rule's (:func:`cutmix_boxes`). A region's mask is its own
    ``masks`` row or, from a union ``mask``, the union's pixels under its box.

    Args:
        crowd_a, crowd_b: the regions of ``a`` and ``b`` on one ``height x width`` canvas, or
            None for a sample without crowd keys (taken as no regions).

    Returns:
        None when neither side has crowd keys; else ``crowd_boxes`` ``(K, 4)``, ``crowd_source``
        and ``crowd_index`` ``(K,)`` int64 (side 0/1 and row there), and ``crowd_mask``
        ``(H, W)`` (the mixed union, as the image: a's outside the cut and b's inside, or the
        union of the shown sides for MixUp) and ``crowd_masks`` ``(K, H, W)`` where given.
    """
    if crowd_a is None and crowd_b is None:
        return None
    given = crowd_a if crowd_a is not None else crowd_b
    xp = array_namespace(given.boxes)
    dev = device(given.boxes)
    dtype = given.boxes.dtype
    empty = Crowd(xp.zeros((0, 4), dtype=dtype, device=dev))
    ca, cb = crowd_a or empty, crowd_b or empty
    for key in ("mask", "masks"):
        for have, lack, given, other in (("a", "b", ca, cb), ("b", "a", cb, ca)):
            if getattr(given, key) is not None and getattr(other, key) is None and other.num:
                raise ValueError(
                    f"crowd_{key} was given for {have} but not for {lack}, which has crowd_boxes; give crowd_{key} "
                    "for both samples or neither"
                )
    boxes = xp.concat([xp.astype(ca.boxes, dtype), xp.astype(cb.boxes, dtype)], axis=0)
    source = xp.concat([xp.zeros(ca.num, dtype=xp.int64, device=dev), xp.ones(cb.num, dtype=xp.int64, device=dev)])
    index = xp.concat([xp.arange(ca.num, dtype=xp.int64, device=dev), xp.arange(cb.num, dtype=xp.int64, device=dev)])
    pasted = source == 1
    per_region = _crowd_masks(ca, height, width, xp, dev), _crowd_masks(cb, height, width, xp, dev)
    masks = None if per_region[0] is None and per_region[1] is None else xp.concat(
        [m if m is not None else xp.zeros((c.num, height, width), dtype=xp.bool, device=dev)
         for m, c in zip(per_region, (ca, cb))], axis=0)

    if region is not None:
        if masks is not None:
            masks, visibility, tight = cutmix_masks(masks, None, pasted, dtype, region=region, canonical=True)
            boxes = visible_boxes(boxes, tight, visibility)
        else:
            boxes, visibility = region_boxes(boxes, region, pasted)
        keep = drop_reasons(boxes, visibility) < 0
    elif cut is not None:
        x1, y1, x2, y2 = (int(v) for v in cut)
        if masks is not None:
            masks, visibility, tight = cutmix_masks(masks, (x1, y1, x2, y2), pasted, dtype, canonical=True)
            boxes = visible_boxes(boxes, tight, visibility)
        else:
            box = xp.asarray([x1, y1, x2, y2], dtype=dtype, device=dev)
            boxes, visibility = cutmix_boxes(boxes, box, pasted)
        keep = drop_reasons(boxes, visibility) < 0
    else:
        share = xp.where(pasted, xp.full_like(boxes[:, 0], 1.0 - lam), xp.full_like(boxes[:, 0], lam))
        keep = share > 0
    out: dict[str, Any] = {
        "crowd_boxes": boxes[keep],
        "crowd_source": source[keep],
        "crowd_index": index[keep],
    }
    if ca.mask is not None or cb.mask is not None:
        ref = ca.mask if ca.mask is not None else cb.mask
        ma, mb = (c.mask if c.mask is not None else xp.zeros_like(ref) for c in (ca, cb))
        if region is not None:
            union = xp.where(region, xp.astype(mb, ref.dtype), ma)
        elif cut is not None:
            union = cutmix_image(ma, xp.astype(mb, ref.dtype), (x1, y1, x2, y2), "HW")
        else:  # the union of the sides shown in the blend
            shown = [m != 0 for m, on in ((ma, lam > 0), (mb, lam < 1)) if on]
            union = xp.astype(shown[0] | shown[1] if len(shown) == 2 else shown[0], ref.dtype)
        out["crowd_mask"] = union
    if masks is not None and (ca.masks is not None or cb.masks is not None):
        out["crowd_masks"] = masks[keep]
    return out


def _crowd_masks(crowd: Crowd, height: int, width: int, xp: Any, dev: Any) -> Any | None:
    """One bool mask per region: its own, or the union's pixels under its box."""
    if crowd.masks is not None:
        return crowd.masks != 0
    if crowd.mask is not None:
        return box_region_masks(crowd.boxes, height, width) & (crowd.mask != 0)[None]
    return None


# --------------------------------------------------------------------------------------------
# Sample functions
# --------------------------------------------------------------------------------------------


def _check_unit(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a non-negative number, got {type(value).__name__}")
    value = float(value)
    if not (0.0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _check_weight(weight: Any) -> str:
    if weight not in _WEIGHT_MODES:
        raise ValueError(f"weight must be one of {_WEIGHT_MODES}, got {weight!r}")
    return weight


def check_cut_box(cut_box: Any, height: int, width: int, name: str = "cut_box") -> tuple[int, int, int, int]:
    """Validate a cut box against a ``height x width`` canvas and return it as four ints
    (``name`` is the argument named in errors)."""
    try:
        values = [float(v) for v in cut_box]
    except TypeError:
        raise TypeError(f"{name} must be a sequence of 4 numbers (x1, y1, x2, y2), got {cut_box!r}") from None
    if len(values) != 4:
        raise ValueError(f"{name} must have 4 numbers (x1, y1, x2, y2), got {len(values)}")
    if not all(math.isfinite(v) and v == int(v) for v in values):
        raise ValueError(f"{name} must hold whole pixel coordinates, got {list(cut_box)}")
    x1, y1, x2, y2 = (int(v) for v in values)
    if not (0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height):
        raise ValueError(
            f"{name} must satisfy 0 <= x1 <= x2 <= {width} and 0 <= y1 <= y2 <= {height} "
            f"(half-open, on the {width}x{height} canvas), got {(x1, y1, x2, y2)}"
        )
    return x1, y1, x2, y2


def check_region(region: Any, p: Parsed, name: str = "region") -> Any:
    """An ``(H, W)`` map of where ``b`` shows, of the sample's array kind and device: bool, or
    integers with any non-zero value True. Returns it as canonical bool."""
    xp = p.xp
    if p.kind == "numpy":
        from array_api_compat import is_torch_array

        if is_torch_array(region):
            raise TypeError(f"{name} is a torch tensor but the image is a numpy array; use one kind")
        region = xp.asarray(region)
    else:
        import torch

        if not isinstance(region, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor (H, W) like the image, got {type(region).__name__}")
        if region.device != p.image.device:
            raise ValueError(f"{name} is on {region.device} but the image is on {p.image.device}")
    if tuple(region.shape) != (p.height, p.width):
        raise ValueError(f"{name} must have shape ({p.height}, {p.width}) (the canvas), got {tuple(region.shape)}")
    if not (region.dtype == xp.bool or xp.isdtype(region.dtype, "integral")):
        raise TypeError(f"{name} must be bool (True where b shows), got dtype {region.dtype}")
    return region != 0


def _concat_pair(xp: Any, x: Any, y: Any) -> Any:
    return xp.concat([x, y], axis=0)


def _source_and_index(xp: Any, pa: Parsed, pb: Parsed) -> tuple[Any, Any]:
    dev = device(pa.boxes)
    source = xp.concat(
        [xp.zeros(pa.num_boxes, dtype=xp.int64, device=dev), xp.ones(pb.num_boxes, dtype=xp.int64, device=dev)]
    )
    index = xp.concat(
        [xp.arange(pa.num_boxes, dtype=xp.int64, device=dev), xp.arange(pb.num_boxes, dtype=xp.int64, device=dev)]
    )
    return source, index


def _assemble(
    pa: Parsed,
    pb: Parsed,
    image: Any,
    boxes: Any,
    masks: Any | None,
    visibility: Any,
    share: Any,
    reason: Any,
    weight: str,
    lam: float,
    box_keys: Sequence[str] | None,
    crowd: dict[str, Any] | None,
) -> dict[str, Any]:
    """Gather the kept rows of everything that rides with the boxes, record the dropped, and add
    the mixed crowd regions (:func:`mix_crowd`)."""
    xp = pa.xp
    source, index = _source_and_index(xp, pa, pb)
    keep = reason < 0
    gone = ~keep
    weights = box_weights(weight, visibility, share)

    per_box, sample_level = split_extras(pa, pb, box_keys)
    out: dict[str, Any] = dict(sample_level)
    out["image"] = image
    out["boxes"] = xp.astype(boxes[keep], pa.boxes.dtype)
    out["labels"] = _concat_pair(xp, pa.labels, xp.astype(pb.labels, pa.labels.dtype))[keep]
    if masks is not None:
        out["masks"] = masks[keep]
    for key, (value, other) in per_box.items():
        if other.dtype != value.dtype:
            other = xp.astype(other, value.dtype)
        out[key] = _concat_pair(xp, value, other)[keep]
    out["weights"] = weights[keep]
    out["source"] = source[keep]
    out["index"] = index[keep]
    out["lam"] = lam
    out["dropped"] = {
        "source": source[gone],
        "index": index[gone],
        "visibility": visibility[gone],
        "reason": reason[gone],
    }
    if crowd is not None:
        out.update(crowd)
    return out


# The sample functions live with their modes (detmix.modes.*), each mode one unit; they are part
# of this namespace, the library's functional API. Imported last: the modes use the kernels above.
from detmix.modes.copy_paste import copy_paste  # noqa: E402
from detmix.modes.cutmix import cutmix  # noqa: E402
from detmix.modes.cutout import cutout  # noqa: E402
from detmix.modes.fmix import fmix_region  # noqa: E402
from detmix.modes.mixup import mixup  # noqa: E402
from detmix.modes.resizemix import resizemix  # noqa: E402
