"""Parsing and checking of detmix samples (internal; the random draws are in :mod:`detmix.sampling`).

A sample is a plain dict::

    {"image": (H, W, C) numpy or (C, H, W) torch, "boxes": (N, 4) xyxy, "labels": (N,),
     "masks": (N, H, W) optional, <per-box extras>: (N, ...), <sample-level extras>: scalars}

Every public kernel goes through :func:`parse_sample`, so the rules about what a sample may hold
live here once. Errors name the argument, what was expected and what came.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_numpy_array, is_torch_array

#: Crowd regions (COCO ``iscrowd=1``): never targets, mixed with the pixels (see :class:`Crowd`).
CROWD_KEYS = frozenset({"crowd_boxes", "crowd_mask", "crowd_masks"})
#: Keys with a fixed meaning; everything else is an extra.
RESERVED = frozenset({"image", "boxes", "labels", "masks"}) | CROWD_KEYS
#: Array-valued keys that are known to describe the whole sample, never one row per box.
SAMPLE_LEVEL_KEYS = frozenset({"orig_size", "size", "image_size"}) | CROWD_KEYS
#: Keys written by the mixing kernels; they are replaced, never carried along.
OUTPUT_KEYS = frozenset({"weights", "source", "index", "lam", "dropped", "crowd_source", "crowd_index"})

_NUMPY_IMAGE_DTYPES = ("uint8", "float32", "float64")
_TORCH_IMAGE_DTYPES = ("uint8", "float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class Crowd:
    """A sample's crowd regions: ``boxes`` ``(M, 4)`` xyxy floats, and optionally ``mask``, the
    ``(H, W)`` union of the regions (as :class:`detmix.coco.CocoDetectionSource` gives it), and
    ``masks``, one ``(M, H, W)`` mask per region (as the service decodes them)."""

    boxes: Any
    mask: Any | None = None
    masks: Any | None = None

    @property
    def num(self) -> int:
        return int(self.boxes.shape[0])


@dataclass(frozen=True)
class Parsed:
    """A checked sample: arrays of one kind (numpy or torch), boxes in a float dtype."""

    kind: str  # "numpy" or "torch"
    xp: Any
    image: Any
    layout: str  # "HWC", "HW" (numpy) or "CHW" (torch)
    height: int
    width: int
    boxes: Any
    labels: Any
    masks: Any | None
    arrays: dict[str, Any] = field(default_factory=dict)  # extras that are arrays (per-box candidates)
    scalars: dict[str, Any] = field(default_factory=dict)  # extras that are not arrays
    crowd: Crowd | None = None  # None when the sample has no crowd key at all

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])


def _kind_of(image: Any, name: str) -> str:
    if is_numpy_array(image):
        return "numpy"
    if is_torch_array(image):
        return "torch"
    raise TypeError(
        f"{name}['image'] must be a numpy array (H, W, C) or a torch tensor (C, H, W), "
        f"got {type(image).__name__}"
    )


def _dtype_name(x: Any) -> str:
    return str(x.dtype).removeprefix("torch.")


def _as_kind(value: Any, kind: str, like: Any, name: str, dtype: Any = None) -> Any:
    """Convert lists/tuples (or arrays of the same kind) to the sample's array kind."""
    if kind == "numpy":
        if is_torch_array(value):
            raise TypeError(f"{name} is a torch tensor but the image is a numpy array; use one kind")
        return np.asarray(value, dtype=dtype)
    import torch

    if is_numpy_array(value):
        raise TypeError(f"{name} is a numpy array but the image is a torch tensor; use one kind")
    return torch.as_tensor(value, dtype=dtype, device=like.device)


def parse_sample(sample: Any, name: str, *, check_values: bool = True) -> Parsed:
    """Check ``sample`` and return it unpacked. ``name`` is used in error messages ("a", "b")."""
    if not isinstance(sample, dict):
        raise TypeError(f"{name} must be a dict with 'image', 'boxes' and 'labels', got {type(sample).__name__}")
    missing = [k for k in ("image", "boxes", "labels") if k not in sample]
    if missing:
        raise ValueError(f"{name} is missing {missing}; a sample needs 'image', 'boxes' and 'labels'")

    image = sample["image"]
    kind = _kind_of(image, name)
    xp = array_namespace(image)
    dtype = _dtype_name(image)
    allowed = _NUMPY_IMAGE_DTYPES if kind == "numpy" else _TORCH_IMAGE_DTYPES
    if dtype not in allowed:
        raise TypeError(f"{name}['image'] must have dtype in {allowed}, got {dtype}")
    if kind == "numpy":
        if image.ndim == 3:
            layout, (height, width) = "HWC", image.shape[:2]
        elif image.ndim == 2:
            layout, (height, width) = "HW", image.shape
        else:
            raise ValueError(f"{name}['image'] must be (H, W, C) or (H, W) for numpy, got shape {tuple(image.shape)}")
    else:
        if image.ndim != 3:
            raise ValueError(f"{name}['image'] must be (C, H, W) for torch, got shape {tuple(image.shape)}")
        layout, (height, width) = "CHW", tuple(image.shape[1:])
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"{name}['image'] must have a non-empty canvas, got height={height}, width={width}")

    boxes = _as_kind(sample["boxes"], kind, image, f"{name}['boxes']")
    if boxes.ndim == 1 and boxes.shape[0] == 0:  # [] -> (0, 4)
        boxes = xp.reshape(boxes, (0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}['boxes'] must have shape (N, 4) in xyxy pixels, got shape {tuple(boxes.shape)}")
    if not xp.isdtype(boxes.dtype, "real floating"):
        if not xp.isdtype(boxes.dtype, "integral"):
            raise TypeError(f"{name}['boxes'] must be a real-valued array, got dtype {_dtype_name(boxes)}")
        boxes = xp.astype(boxes, xp.float32)
    n = int(boxes.shape[0])

    labels = _as_kind(sample["labels"], kind, image, f"{name}['labels']")
    if labels.ndim == 1 and labels.shape[0] == 0 and n == 0:
        labels = xp.astype(labels, xp.int64)
    if labels.shape != (n,):
        raise ValueError(f"{name}['labels'] must have shape ({n},) to match {name}['boxes'], got {tuple(labels.shape)}")
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(
            f"{name}['labels'] must be integers, got dtype {_dtype_name(labels)} "
            "(encode string labels first, as the Albumentations adapter does)"
        )

    masks = sample.get("masks")
    if masks is not None:
        masks = _as_kind(masks, kind, image, f"{name}['masks']")
        if masks.shape != (n, height, width):
            raise ValueError(
                f"{name}['masks'] must have shape ({n}, {height}, {width}) (one mask per box on the image's "
                f"canvas), got {tuple(masks.shape)}"
            )
        masks = _canonical_mask(masks, f"{name}['masks']")

    arrays: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for key, value in sample.items():
        if key in RESERVED or key in OUTPUT_KEYS:
            continue
        if (is_numpy_array(value) or is_torch_array(value)) and value.ndim > 0:
            arrays[key] = value
        else:
            scalars[key] = value

    if check_values and n:
        boxes = clip_edge_drift(boxes, height, width)
        _check_box_values(xp, boxes, height, width, name)
    crowd = _parse_crowd(sample, kind, image, xp, height, width, name, check_values)
    return Parsed(kind, xp, image, layout, height, width, boxes, labels, masks, arrays, scalars, crowd)


def _canonical_mask(masks: Any, name: str) -> Any:
    """bool or uint8 masks; a bool array is made canonical (bytes 0/1): Pillow's mode ``"1"``
    arrays hold 0/255, which every byte-level reduction would count 255 times."""
    dtype = _dtype_name(masks)
    if dtype not in ("bool", "uint8"):
        raise TypeError(f"{name} must be bool or uint8, got dtype {dtype}")
    return canonical_bool(masks) if dtype == "bool" else masks


def canonical_bool(masks: Any) -> Any:
    """A bool array with bytes 0/1: ``masks`` itself when it already is one (one read of its
    bytes, no copy; on the host), else ``masks != 0``, whose bools are canonical. On an
    accelerator the comparison is made without looking (a look would synchronise)."""
    xp = array_namespace(masks)
    on_host = is_numpy_array(masks) or masks.device.type == "cpu"
    size = masks.size if is_numpy_array(masks) else masks.numel()
    if on_host and (size == 0 or int(xp.max(masks.view(xp.uint8))) <= 1):
        return masks
    return masks != 0


def _parse_crowd(
    sample: dict[str, Any], kind: str, image: Any, xp: Any, height: int, width: int, name: str, check_values: bool
) -> Crowd | None:
    """The crowd regions of a sample (:class:`Crowd`), or None when it has no crowd key."""
    if not any(sample.get(key) is not None for key in CROWD_KEYS):
        return None
    raw = sample.get("crowd_boxes")
    if raw is None:
        raise ValueError(f"{name} has a crowd mask but no 'crowd_boxes'; give the (M, 4) xyxy boxes of its crowd regions")
    boxes = _as_kind(raw, kind, image, f"{name}['crowd_boxes']")
    if boxes.ndim == 1 and boxes.shape[0] == 0:
        boxes = xp.reshape(boxes, (0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}['crowd_boxes'] must have shape (M, 4) in xyxy pixels, got shape {tuple(boxes.shape)}")
    if not xp.isdtype(boxes.dtype, "real floating"):
        boxes = xp.astype(boxes, xp.float32)
    m = int(boxes.shape[0])
    if check_values and m:
        boxes = clip_edge_drift(boxes, height, width)
        _check_box_values(xp, boxes, height, width, name, key="crowd_boxes")
    mask = sample.get("crowd_mask")
    if mask is not None:
        mask = _as_kind(mask, kind, image, f"{name}['crowd_mask']")
        if tuple(mask.shape) != (height, width):
            raise ValueError(
                f"{name}['crowd_mask'] must have shape ({height}, {width}) (the union of the crowd regions on the "
                f"image's canvas), got {tuple(mask.shape)}"
            )
        mask = _canonical_mask(mask, f"{name}['crowd_mask']")
    masks = sample.get("crowd_masks")
    if masks is not None:
        masks = _as_kind(masks, kind, image, f"{name}['crowd_masks']")
        if tuple(masks.shape) != (m, height, width):
            raise ValueError(
                f"{name}['crowd_masks'] must have shape ({m}, {height}, {width}) (one mask per crowd box on the "
                f"image's canvas), got {tuple(masks.shape)}"
            )
        masks = _canonical_mask(masks, f"{name}['crowd_masks']")
    return Crowd(boxes, mask, masks)


def _check_box_values(xp: Any, boxes: Any, height: int, width: int, name: str, key: str = "boxes") -> None:
    finite = xp.all(xp.isfinite(boxes), axis=1)
    if not bool(xp.all(finite)):
        i = int(xp.argmin(xp.astype(finite, xp.int32)))
        raise ValueError(f"{name}[{key!r}][{i}] must be finite, got {_row(boxes, i)}")
    inverted = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bool(xp.any(inverted)):
        i = int(xp.argmax(xp.astype(inverted, xp.int32)))
        raise ValueError(f"{name}[{key!r}][{i}] must satisfy x1 < x2 and y1 < y2 (xyxy), got {_row(boxes, i)}")
    outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
    if bool(xp.any(outside)):
        i = int(xp.argmax(xp.astype(outside, xp.int32)))
        raise ValueError(
            f"{name}[{key!r}][{i}] must lie inside the {width}x{height} canvas (0 <= x <= {width}, "
            f"0 <= y <= {height}), got {_row(boxes, i)}; clip boxes before mixing"
        )


#: How far (pixels) a box coordinate may lie outside the canvas and still be taken as on its edge:
#: float rounding, e.g. a tv_tensors XYXY -> CXCYWH -> XYXY round trip in float32 turns 480 into
#: 480.0000305. Such coordinates are clipped onto the edge; farther ones are refused.
EDGE_TOLERANCE = 1e-3


def clip_edge_drift(boxes: Any, height: Any, width: Any) -> Any:
    """``(N, 4)`` xyxy ``boxes`` with every coordinate within :data:`EDGE_TOLERANCE` outside
    ``[0, width] x [0, height]`` moved onto the edge; the others are unchanged (the box check
    refuses the ones farther out). ``height`` and ``width`` are numbers or ``(N,)`` arrays (one
    canvas per box, as the torch batch path has); nothing is read back from the device."""
    xp = array_namespace(boxes)
    if not (is_numpy_array(height) or is_torch_array(height)):
        height, width = float(height), float(width)
    else:
        height, width = xp.astype(height, boxes.dtype), xp.astype(width, boxes.dtype)
    tol = EDGE_TOLERANCE
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    coords = []
    for value, limit in ((x1, width), (y1, height), (x2, width), (y2, height)):
        value = xp.where((value < 0) & (value >= -tol), xp.zeros_like(value), value)
        value = xp.where((value > limit) & (value <= limit + tol), limit, value)
        coords.append(value)
    return xp.stack(coords, axis=1)


def _row(boxes: Any, i: int) -> list[float]:
    return [float(v) for v in boxes[i]]


def check_pair(pa: Parsed, pb: Parsed) -> None:
    """Two samples that are mixed must agree in array kind, dtype, canvas and annotations."""
    if pa.kind != pb.kind:
        raise TypeError(f"a and b must be the same array kind, got a: {pa.kind}, b: {pb.kind}")
    if pa.image.dtype != pb.image.dtype:
        raise TypeError(f"a['image'] and b['image'] must share a dtype, got {_dtype_name(pa.image)} and {_dtype_name(pb.image)}")
    if tuple(pa.image.shape) != tuple(pb.image.shape):
        raise ValueError(
            f"a['image'] and b['image'] must have the same shape (same canvas), got {tuple(pa.image.shape)} and "
            f"{tuple(pb.image.shape)}; use detmix.align_pair(a, b, mode='pad' or 'resize') first"
        )
    if pa.kind == "torch" and pa.image.device != pb.image.device:
        raise ValueError(f"a and b must be on the same device, got {pa.image.device} and {pb.image.device}")
    if (pa.masks is None) != (pb.masks is None):
        have, lack = ("a", "b") if pa.masks is not None else ("b", "a")
        raise ValueError(f"masks were given for {have} but not for {lack}; give masks for both samples or neither")


def split_extras(
    pa: Parsed, pb: Parsed, box_keys: Iterable[str] | None = None
) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
    """Decide which extras ride along with the boxes: ``{key: (a's rows, b's rows)}``; the rest
    are sample-level values of ``a``, returned as the second dict.

    With ``box_keys`` given, exactly those keys are per-box, and each must be an array with one
    row per box in both samples. Without, a key is per-box when it is an array with one row per
    box in both ``a`` and ``b`` (ambiguous only when an unrelated array happens to have as many
    rows as there are boxes in both samples: pass ``box_keys`` to be exact). Keys in
    :data:`SAMPLE_LEVEL_KEYS` (``crowd_boxes``, ``crowd_mask``...) are never per-box.
    """
    if box_keys is not None:
        keys = list(box_keys)
        for key in keys:
            for p, name in ((pa, "a"), (pb, "b")):
                value = p.arrays.get(key)
                if value is None:
                    raise ValueError(f"box_keys names {key!r} but {name}[{key!r}] is missing or not an array")
                if value.shape[0] != p.num_boxes:
                    raise ValueError(
                        f"{name}[{key!r}] must have one row per box ({p.num_boxes}), got {value.shape[0]} rows"
                    )
    else:
        keys = [
            k for k, v in pa.arrays.items()
            if k not in SAMPLE_LEVEL_KEYS
            and v.shape[0] == pa.num_boxes and k in pb.arrays and pb.arrays[k].shape[0] == pb.num_boxes
        ]
    per_box = {}
    for key in keys:
        va = _as_kind(pa.arrays[key], pa.kind, pa.image, f"a[{key!r}]")
        vb = _as_kind(pb.arrays[key], pa.kind, pa.image, f"b[{key!r}]")
        if tuple(va.shape[1:]) != tuple(vb.shape[1:]):
            raise ValueError(
                f"a[{key!r}] and b[{key!r}] must have the same row shape, got {tuple(va.shape[1:])} and "
                f"{tuple(vb.shape[1:])}"
            )
        per_box[key] = (va, vb)
    sample_level = {**pa.scalars, **{k: v for k, v in pa.arrays.items() if k not in per_box}}
    return per_box, sample_level
