"""The machinery under :class:`detmix.torch.BatchMix` (internal): parsing a batch of torchvision
inputs (host metadata only: shapes, dtypes, devices), the host <-> device copies, the row tables of
the flattened boxes, the pixel and row kernels by batch kind, and the samples a pairwise mode gets.
:mod:`detmix.torch` keeps the public adapter: ``BatchParams``, ``BatchMix``, ``MixCollate``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from array_api_compat import array_namespace
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from detmix import functional as kernels  # not F: in torch code that reads as torch.nn.functional
from detmix._parse import CROWD_KEYS, Crowd, _parse_crowd, canonical_bool
from detmix.align import _pad_masks
from detmix.modes import get_mode, mode_names
from detmix.recipes import Recipe

_NONE = 0


def _kinds(codes: np.ndarray) -> np.ndarray:
    """The :data:`detmix.modes.BatchKind` of each mode code, as an object array."""
    names = mode_names()
    return np.array([get_mode(names[int(c)]).batch_kind for c in codes], dtype=object)

_IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: Keys with a fixed meaning in a target; every other key is an extra.
_RESERVED = frozenset({"boxes", "labels", "masks"}) | CROWD_KEYS
#: Keys written by BatchMix; an input's values under them are replaced, never carried along.
_OUTPUT_KEYS = ("weights", "mix_source", "mix_partner")
_XYXY = tv_tensors.BoundingBoxFormat.XYXY


# --------------------------------------------------------------------------------------------
# Parsing a batch (host metadata only: shapes, dtypes, devices; values are checked on the device)
# --------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    images: Any  # the caller's images (tensor or list), for wrapping the output
    items: list[torch.Tensor]  # plain (C, h, w) per image
    stacked: torch.Tensor | None  # the caller's (B, C, H, W) tensor, plain
    sizes: np.ndarray  # (B, 2) int64 heights and widths
    canvas: tuple[int, int]
    device: torch.device
    boxes: list[torch.Tensor]  # plain (n, 4), in the format of formats[i]
    formats: list[tv_tensors.BoundingBoxFormat | None]  # None for plain xyxy tensors
    labels: list[torch.Tensor]
    masks: list[torch.Tensor] | None
    per_box: dict[str, list[torch.Tensor]]
    targets: Sequence[Mapping[str, Any]]
    crowd: list[Crowd | None]  # each target's crowd regions (None: no crowd key)

    @property
    def size(self) -> int:
        return len(self.items)

    @property
    def counts(self) -> np.ndarray:
        return np.asarray([b.shape[0] for b in self.boxes], dtype=np.int64)


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_subclass(torch.Tensor) if type(x) is not torch.Tensor else x


def _dtype_name(x: torch.Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


def _parse_images(images: Any) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(
                "images must be a (B, C, H, W) tensor or a list of (C, H, W) tensors, got a tensor of "
                f"shape {tuple(images.shape)}"
            )
        stacked = _plain(images)
        items = list(stacked.unbind(0))
    elif isinstance(images, (list, tuple)):
        stacked = None
        items = []
        for i, image in enumerate(images):
            if not isinstance(image, torch.Tensor):
                raise TypeError(f"images[{i}] must be a torch.Tensor (C, H, W), got {type(image).__name__}")
            if image.ndim != 3:
                raise ValueError(f"images[{i}] must have shape (C, H, W), got {tuple(image.shape)}")
            items.append(_plain(image))
    else:
        raise TypeError(
            "images must be a (B, C, H, W) tensor or a list of (C, H, W) tensors, got "
            f"{type(images).__name__}"
        )
    for i, image in enumerate(items):
        if image.dtype not in _IMAGE_DTYPES:
            names = tuple(str(d).removeprefix("torch.") for d in _IMAGE_DTYPES)
            raise TypeError(f"images[{i}] must have dtype in {names}, got {_dtype_name(image)}")
        if image.shape[1] < 1 or image.shape[2] < 1:
            raise ValueError(f"images[{i}] must have a non-empty canvas, got shape {tuple(image.shape)}")
        first = items[0]
        if image.shape[0] != first.shape[0]:
            raise ValueError(f"images[{i}] has {image.shape[0]} channels but images[0] has {first.shape[0]}")
        if image.dtype != first.dtype:
            raise TypeError(f"images[{i}] has dtype {_dtype_name(image)} but images[0] has {_dtype_name(first)}")
        if image.device != first.device:
            raise ValueError(f"images[{i}] is on {image.device} but images[0] is on {first.device}")
    return items, stacked


def _on(value: torch.Tensor, device: torch.device, name: str) -> None:
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the images are on {device}; move targets with the images")


def _parse_boxes(value: Any, i: int, height: int, width: int, device: torch.device):
    name = f"targets[{i}]['boxes']"
    fmt = None
    if isinstance(value, tv_tensors.BoundingBoxes):
        if tv_tensors.is_rotated_bounding_format(value.format):
            raise ValueError(
                f"{name} has the rotated format {value.format.name}; BatchMix supports XYXY, XYWH and CXCYWH"
            )
        if tuple(value.canvas_size) != (height, width):
            raise ValueError(
                f"{name}.canvas_size must be the (height, width) of images[{i}], {(height, width)}, got "
                f"{tuple(value.canvas_size)}"
            )
        fmt = value.format
    elif not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor (N, 4) in xyxy pixels or a tv_tensors.BoundingBoxes, got "
            f"{type(value).__name__}"
        )
    boxes = _plain(value)
    if boxes.ndim == 1 and boxes.shape[0] == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        if boxes.dtype == torch.bool or boxes.is_complex():
            raise TypeError(f"{name} must be real numbers, got dtype {_dtype_name(boxes)}")
        boxes = boxes.to(torch.float32)
    _on(boxes, device, name)
    return boxes, fmt


def _parse_targets(targets: Any, items: list[torch.Tensor], box_keys: tuple[str, ...] | None):
    size = len(items)
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"targets must be a list of dicts (one per image), got {type(targets).__name__}")
    if len(targets) != size:
        raise ValueError(f"targets must have one dict per image ({size} images), got {len(targets)} targets")
    if size == 0:
        return [], [], [], None, {}, [], targets
    targets = _crowd_rows_out(targets)
    device = items[0].device
    boxes, formats, labels, masks = [], [], [], []
    for i, (target, image) in enumerate(zip(targets, items)):
        if not isinstance(target, Mapping):
            raise TypeError(f"targets[{i}] must be a dict with 'boxes' and 'labels', got {type(target).__name__}")
        missing = [k for k in ("boxes", "labels") if k not in target]
        if missing:
            raise ValueError(f"targets[{i}] is missing {missing}; each target needs 'boxes' and 'labels'")
        for key, value in target.items():
            if isinstance(value, tv_tensors.KeyPoints):
                raise TypeError(
                    f"targets[{i}][{key!r}] holds KeyPoints, which BatchMix does not mix; remove them first"
                )
        height, width = int(image.shape[1]), int(image.shape[2])
        b, fmt = _parse_boxes(target["boxes"], i, height, width, device)
        n = b.shape[0]
        lab = target["labels"]
        if not isinstance(lab, torch.Tensor):
            raise TypeError(f"targets[{i}]['labels'] must be a torch.Tensor ({n},), got {type(lab).__name__}")
        lab = _plain(lab)
        if lab.shape != (n,):
            raise ValueError(
                f"targets[{i}]['labels'] must have shape ({n},) to match targets[{i}]['boxes'], got {tuple(lab.shape)}"
            )
        if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
            raise TypeError(f"targets[{i}]['labels'] must be integers, got dtype {_dtype_name(lab)}")
        _on(lab, device, f"targets[{i}]['labels']")
        boxes.append(b)
        formats.append(fmt)
        labels.append(lab)
        m = target.get("masks")
        if m is not None:
            if not isinstance(m, torch.Tensor):
                raise TypeError(
                    f"targets[{i}]['masks'] must be a torch.Tensor or tv_tensors.Mask, got {type(m).__name__}"
                )
            m = _plain(m)
            if m.shape != (n, height, width):
                raise ValueError(
                    f"targets[{i}]['masks'] must have shape ({n}, {height}, {width}) (one mask per box on the canvas "
                    f"of images[{i}]), got {tuple(m.shape)}"
                )
            if m.dtype not in (torch.bool, torch.uint8):
                raise TypeError(f"targets[{i}]['masks'] must be bool or uint8, got dtype {_dtype_name(m)}")
            _on(m, device, f"targets[{i}]['masks']")
            if m.dtype == torch.bool:  # canonical 0/1 bytes (a Pillow-made array holds 0/255)
                m = canonical_bool(m)
        masks.append(m)
    have = [i for i, m in enumerate(masks) if m is not None]
    if have and len(have) != size:
        lack = next(i for i, m in enumerate(masks) if m is None)
        raise ValueError(
            f"targets[{have[0]}] has 'masks' but targets[{lack}] has none; give masks for every target or for none"
        )
    per_box = _per_box_extras(targets, [b.shape[0] for b in boxes], box_keys, device)
    crowd = [_target_crowd(t, image, i, device) for i, (t, image) in enumerate(zip(targets, items))]
    for attr in ("mask", "masks"):  # any two targets may be paired: one rule for the whole batch
        given = [i for i, c in enumerate(crowd) if c is not None and getattr(c, attr) is not None]
        lack = [i for i, c in enumerate(crowd) if c is not None and getattr(c, attr) is None and c.num]
        if given and lack:
            raise ValueError(
                f"targets[{given[0]}] has 'crowd_{attr}' but targets[{lack[0]}], which has crowd_boxes, has none; "
                f"give crowd_{attr} for every target with crowd regions or for none"
            )
    return boxes, formats, labels, (masks if have else None), per_box, crowd, targets


def _crowd_rows_out(targets: Sequence[Any]) -> list[Any]:
    """``targets`` with the rows that ``iscrowd`` flags (torchvision's v2 COCO targets keep crowd
    regions among the boxes) moved out of ``boxes``, ``labels``, ``masks`` and the other per-box
    values into ``crowd_boxes`` (and, with masks, ``crowd_masks``), merged with the crowd keys
    already there. The flags of the whole batch are read in one device->host copy."""
    flagged = [i for i, t in enumerate(targets) if isinstance(t, Mapping) and t.get("iscrowd") is not None
               and isinstance(t.get("boxes"), torch.Tensor)]  # else the checks of _parse_targets name what is wrong
    on_device = [i for i in flagged if isinstance(targets[i]["iscrowd"], torch.Tensor)]
    read = {}
    if on_device:
        flags = [_plain(targets[i]["iscrowd"]).reshape(-1) for i in on_device]
        host = _to_host(torch.cat([f.to(flags[0].device) != 0 for f in flags]))
        read = dict(zip(on_device, np.split(host, np.cumsum([f.shape[0] for f in flags])[:-1])))
    out = list(targets)
    for i in flagged:
        crowd = read[i] if i in read else np.asarray(targets[i]["iscrowd"]).reshape(-1) != 0
        out[i] = _crowd_rows_of(targets[i], i, crowd)
    return out


def _crowd_rows_of(target: Mapping[str, Any], i: int, crowd: np.ndarray) -> Mapping[str, Any]:
    """``targets[i]`` with its rows ``crowd`` (host bools) moved to the crowd keys (see
    :func:`_crowd_rows_out`); as given when none is."""
    boxes = target["boxes"]
    n = int(boxes.shape[0]) if boxes.ndim == 2 else 0
    if crowd.shape[0] != n:
        raise ValueError(f"targets[{i}]['iscrowd'] must have one value per box ({n}), got {crowd.shape[0]}")
    if not crowd.any():
        return target
    keep, moved = np.flatnonzero(~crowd), np.flatnonzero(crowd)

    def take(value: Any, index: np.ndarray) -> Any:
        if isinstance(value, torch.Tensor):
            picked = _plain(value).index_select(0, _to_device(index, value.device))
            return tv_tensors.wrap(picked, like=value) if isinstance(value, tv_tensors.TVTensor) else picked
        if isinstance(value, np.ndarray):
            return value[index]
        return type(value)(value[k] for k in index.tolist())

    new = dict(target)
    for key, value in target.items():
        rows = (value.shape[0] if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim > 0
                else len(value) if isinstance(value, (list, tuple)) else None)
        if rows == n and key not in CROWD_KEYS and key not in _OUTPUT_KEYS:
            new[key] = take(value, keep)
    crowd_boxes, given = take(boxes, moved), target.get("crowd_boxes")
    if given is not None:  # in the format of the crowd boxes given (plain tensors: xyxy)
        given = given if isinstance(given, torch.Tensor) else torch.as_tensor(np.asarray(given))
        fmt = given.format if isinstance(given, tv_tensors.BoundingBoxes) else _XYXY
        old = crowd_boxes.format if isinstance(crowd_boxes, tv_tensors.BoundingBoxes) else _XYXY
        converted = _plain(TF.convert_bounding_box_format(_plain(crowd_boxes), old_format=old, new_format=fmt))
        merged = torch.cat([_plain(given).reshape(-1, 4), converted.to(given.dtype).to(given.device)])
        crowd_boxes = tv_tensors.wrap(merged, like=given) if isinstance(given, tv_tensors.TVTensor) else merged
    new["crowd_boxes"] = crowd_boxes
    masks = target.get("masks")
    if isinstance(masks, torch.Tensor) and masks.ndim == 3 and masks.shape[0] == n:
        regions = take(masks, moved)
        if target.get("crowd_masks") is not None:
            old = target["crowd_masks"]
            merged = torch.cat([_plain(old), _plain(regions).to(old.dtype).to(old.device)])
            new["crowd_masks"] = tv_tensors.wrap(merged, like=old) if isinstance(old, tv_tensors.TVTensor) else merged
        elif target.get("crowd_mask") is not None:
            old = target["crowd_mask"]
            union = ((_plain(old) != 0) | (_plain(regions) != 0).any(0).to(old.device)).to(old.dtype)
            new["crowd_mask"] = tv_tensors.wrap(union, like=old) if isinstance(old, tv_tensors.TVTensor) else union
        elif given is None or given.numel() == 0:
            new["crowd_masks"] = regions
        # else: the crowd regions given have boxes and no mask, so the moved ones join them as boxes
    return new


def _target_crowd(target: Mapping[str, Any], image: torch.Tensor, i: int, device: torch.device) -> Crowd | None:
    """The crowd regions of ``targets[i]`` (plain tensors, xyxy boxes), checked as the core checks them."""
    plain = {k: _plain(v) for k, v in target.items() if k in CROWD_KEYS and isinstance(v, torch.Tensor)}
    boxes = target.get("crowd_boxes")
    if isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format != _XYXY:
        plain["crowd_boxes"] = _plain(TF.convert_bounding_box_format(boxes, new_format=_XYXY))
    for key, value in plain.items():
        _on(value, device, f"targets[{i}][{key!r}]")
    xp = array_namespace(image)
    return _parse_crowd(plain, "torch", image, xp, int(image.shape[1]), int(image.shape[2]), f"targets[{i}]", True)


def _per_box_extras(targets, counts, box_keys, device) -> dict[str, list[torch.Tensor]]:
    """``{key: rows per target}`` of the extras that ride with the boxes (see :class:`BatchMix`)."""
    skip = _RESERVED | set(_OUTPUT_KEYS)
    if box_keys is not None:
        for key in box_keys:
            for i, (target, n) in enumerate(zip(targets, counts)):
                value = target.get(key)
                if not isinstance(value, torch.Tensor) or value.ndim == 0:
                    raise ValueError(f"box_keys names {key!r} but targets[{i}][{key!r}] is missing or not a tensor")
                if value.shape[0] != n:
                    raise ValueError(
                        f"targets[{i}][{key!r}] must have one row per box ({n}), got {value.shape[0]} rows"
                    )
        keys = list(box_keys)
    else:
        keys = [
            key for key in targets[0] if key not in skip and all(
                isinstance(t.get(key), torch.Tensor) and t[key].ndim > 0 and t[key].shape[0] == n
                for t, n in zip(targets, counts)
            )
        ]
    out = {}
    for key in keys:
        rows = [_plain(t[key]) for t in targets]
        for i, value in enumerate(rows):
            if value.shape[1:] != rows[0].shape[1:]:
                raise ValueError(
                    f"targets[{i}][{key!r}] has rows of shape {tuple(value.shape[1:])} but targets[0][{key!r}] has "
                    f"{tuple(rows[0].shape[1:])}"
                )
            _on(value, device, f"targets[{i}][{key!r}]")
        out[key] = rows
    return out


def _parse_batch(images: Any, targets: Any, box_keys: tuple[str, ...] | None, size_divisible: int) -> _Batch:
    items, stacked = _parse_images(images)
    boxes, formats, labels, masks, per_box, crowd, targets = _parse_targets(targets, items, box_keys)
    sizes = np.asarray([(int(x.shape[1]), int(x.shape[2])) for x in items], dtype=np.int64).reshape(-1, 2)
    if len(items):
        height, width = (int(math.ceil(int(v) / size_divisible) * size_divisible) for v in sizes.max(axis=0))
    elif stacked is not None:
        height, width = (int(math.ceil(int(v) / size_divisible) * size_divisible) for v in stacked.shape[2:])
    else:
        height, width = 0, 0
    device = items[0].device if items else (stacked.device if stacked is not None else torch.device("cpu"))
    return _Batch(
        images, items, stacked, sizes, (height, width), device, boxes, formats, labels, masks, per_box, targets, crowd
    )


# --------------------------------------------------------------------------------------------
# Host <-> device
# --------------------------------------------------------------------------------------------


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """One host->device copy, asynchronous (from pinned memory) on CUDA; none on the CPU."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _to_host(tensor: torch.Tensor) -> np.ndarray:
    """One device->host copy: the caller's one synchronisation point."""
    return tensor.cpu().numpy()


# --------------------------------------------------------------------------------------------
# Flattening: which input row goes to which output row (host arithmetic on the box counts)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    src: np.ndarray  # (R,) row in the flat input boxes
    out: np.ndarray  # (R,) output image
    source: np.ndarray  # (R,) 0: the output image's own box, 1: its partner's
    mode: np.ndarray  # (R,) mode of the output image
    num_cut: int  # rows [0, num_cut) belong to "cut" modes or unmixed images, the rest to "blend" modes


def _rows(counts: np.ndarray, mode: np.ndarray, partner: np.ndarray, blend: np.ndarray) -> _Rows:
    """Output image ``i`` gets its own boxes and, when mixed, those of ``partner[i]``; rows are
    grouped by kernel (the cut rules for the ``"cut"`` modes and unmixed images, the blend rules
    for ``"blend"`` ones: ``blend[i]``) and, within a group, ordered by output image, source,
    then row."""
    size = len(counts)
    offsets = np.cumsum(counts) - counts
    images = np.arange(size)
    mixed = mode != _NONE
    seg_out = np.concatenate([images, images[mixed]])
    seg_src = np.concatenate([images, partner[mixed]])
    seg_source = np.concatenate([np.zeros(size, np.int64), np.ones(int(mixed.sum()), np.int64)])
    seg_group = blend[seg_out].astype(np.int64)
    order = np.lexsort((seg_source, seg_out, seg_group))
    seg_out, seg_src, seg_source, seg_group = seg_out[order], seg_src[order], seg_source[order], seg_group[order]
    seg_len = counts[seg_src]
    total = int(seg_len.sum())
    row_seg = np.repeat(np.arange(len(seg_len)), seg_len)
    within = np.arange(total) - (np.cumsum(seg_len) - seg_len)[row_seg]
    out = seg_out[row_seg]
    return _Rows(
        src=(offsets[seg_src][row_seg] + within).astype(np.int64),
        out=out.astype(np.int64),
        source=seg_source[row_seg].astype(np.int64),
        mode=mode[out].astype(np.int64),
        num_cut=int(seg_len[seg_group == 0].sum()),
    )


#: On the CPU the pixel kernels run on chunks of the batch of at most this many bytes of float32
#: per chunk (one image at least): the kernels' temporaries then stay in the cache and the
#: allocator's reused memory instead of page-faulting fresh batch-sized buffers, which made the
#: whole-batch call up to 4x slower than a per-image loop on a 2-core CPU. Accelerators take the
#: whole batch in one call.
_CPU_CHUNK_BYTES = 8 << 20


def _mix_pixels(a, b, cut, lam4, blend) -> torch.Tensor:
    """Output pixels of the images ``a`` with partners ``b``: blended images (``blend``, host
    bools) through :func:`~detmix.functional.mixup_image`, the others through
    :func:`~detmix.functional.cutmix_image` (unmixed and blended images have an empty cut)."""
    is_mixup = blend
    if is_mixup.all():
        return kernels.mixup_image(a, b, lam4)
    out = kernels.cutmix_image(a, b, cut, "CHW")
    if is_mixup.any():
        idx = _to_device(np.flatnonzero(is_mixup), a.device)
        blended = kernels.mixup_image(_take(a, idx), _take(b, idx), lam4.index_select(0, idx))
        out = out.contiguous()
        out.view(out.shape[0], -1).index_copy_(0, idx, blended.reshape(blended.shape[0], -1))
    return out


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` along dim 0, through a 2-D ``index_select`` (much faster on the CPU than a
    4-D one, the same kernel on CUDA)."""
    if x.ndim <= 2:
        return x.index_select(0, index)
    return x.reshape(x.shape[0], math.prod(x.shape[1:])).index_select(0, index).reshape(index.shape[0], *x.shape[1:])


def _cat(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if not parts:
        return like[:0]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _rules(recipe: Recipe, kind: str, boxes, visibility, share, row_mode, host_mode):
    """Drop reasons and weights of the rows of one batch kind: each mode present among the rows
    applies its own thresholds and weight mode from its recipe section
    (:meth:`detmix.modes.Mode.row_rules`), combined with ``where`` on the device."""
    names = mode_names()
    reason = weight = None
    for code in np.unique(host_mode):
        mode = get_mode(names[int(code)])
        r, w = mode.row_rules(recipe.section(mode.name) if mode.config is not None else None, boxes, visibility, share)
        if reason is None:
            reason, weight = r, w
        else:
            here = row_mode == int(code)
            reason, weight = torch.where(here, r, reason), torch.where(here, w, weight)
    return reason, weight


def _flat_xyxy(batch: _Batch) -> tuple[torch.Tensor, torch.dtype]:
    """All boxes as one ``(N, 4)`` xyxy tensor in the batch's common float dtype."""
    dtype = batch.boxes[0].dtype
    for b in batch.boxes[1:]:
        dtype = torch.promote_types(dtype, b.dtype)
    formats = set(batch.formats)
    if len(formats) == 1:  # one conversion for the whole batch
        flat = torch.cat(batch.boxes).to(dtype)
        fmt = next(iter(formats))
        return (flat if fmt in (None, _XYXY) else TF.convert_bounding_box_format(flat, fmt, _XYXY)), dtype
    parts = [
        b.to(dtype) if f in (None, _XYXY) else TF.convert_bounding_box_format(b.to(dtype), f, _XYXY)
        for b, f in zip(batch.boxes, batch.formats)
    ]
    return torch.cat(parts), dtype


def _restore_formats(boxes: torch.Tensor, per_image: list[int], batch: _Batch) -> list[torch.Tensor]:
    """Split the kept xyxy boxes per image, in each input's format, BoundingBoxes on the canvas."""
    formats = set(batch.formats)
    if len(formats) == 1:
        fmt = next(iter(formats))
        converted = boxes if fmt in (None, _XYXY) else TF.convert_bounding_box_format(boxes, _XYXY, fmt)
        parts = converted.split(per_image)
    else:
        parts = [
            b if f in (None, _XYXY) else TF.convert_bounding_box_format(b, _XYXY, f)
            for b, f in zip(boxes.split(per_image), batch.formats)
        ]
    out = []
    for part, target in zip(parts, batch.targets):
        value = target["boxes"]
        if isinstance(value, tv_tensors.BoundingBoxes):
            part = tv_tensors.wrap(part, like=value, canvas_size=batch.canvas)
        out.append(part)
    return out


def _bad_boxes(boxes: torch.Tensor, lim_w: torch.Tensor, lim_h: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(1)
    finite = torch.isfinite(boxes).all(1)
    return ~finite | (x2 <= x1) | (y2 <= y1) | (x1 < 0) | (y1 < 0) | (x2 > lim_w) | (y2 > lim_h)


def _box_error(batch: _Batch, boxes: torch.Tensor, row: int) -> ValueError:
    """The error for the first invalid input box (an error path: reading values back is fine)."""
    offsets = np.cumsum(batch.counts)
    i = int(np.searchsorted(offsets, row, side="right"))
    j = row - int(offsets[i] - batch.counts[i])
    values = [float(v) for v in boxes[row].tolist()]
    height, width = (int(v) for v in batch.sizes[i])
    fmt = batch.formats[i]
    name = f"targets[{i}]['boxes'][{j}]"
    got = f"got {values}" + (f" (xyxy, converted from {fmt.name})" if fmt not in (None, _XYXY) else "")
    x1, y1, x2, y2 = values
    if not all(math.isfinite(v) for v in values):
        return ValueError(f"{name} must be finite, {got}")
    if not (x1 < x2 and y1 < y2):
        return ValueError(f"{name} must satisfy x1 < x2 and y1 < y2 (xyxy), {got}")
    return ValueError(
        f"{name} must lie inside the {width}x{height} canvas of images[{i}] (0 <= x <= {width}, 0 <= y <= {height}), "
        f"{got}; clamp boxes first (v2.ClampBoundingBoxes)"
    )


def _padded(batch: _Batch, fill: float) -> torch.Tensor:
    """The ``(B, C, H, W)`` batch on the common canvas, top-left, as GeneralizedRCNNTransform."""
    height, width = batch.canvas
    if batch.stacked is not None and tuple(batch.stacked.shape[2:]) == (height, width):
        return batch.stacked
    first = batch.items[0]
    if all(tuple(x.shape[1:]) == (height, width) for x in batch.items):
        return torch.stack(batch.items)
    out = first.new_full((batch.size, first.shape[0], height, width), fill)
    if batch.stacked is not None:
        out[:, :, : batch.stacked.shape[2], : batch.stacked.shape[3]].copy_(batch.stacked)
    else:
        for i, x in enumerate(batch.items):  # one device copy per image, no synchronisation
            out[i, :, : x.shape[1], : x.shape[2]].copy_(x)
    return out


def _device_sample(batch: _Batch, x: torch.Tensor, boxes: list[torch.Tensor], i: int, keys: tuple[str, ...],
                   padded: bool = True) -> dict:
    """Image ``i`` of the batch as a detmix sample on the padded canvas (torch, on its device), or
    at its own size (``padded=False``, for a mode that resizes the partner itself)."""
    height, width = batch.canvas if padded else (int(v) for v in batch.sizes[i])
    image = x[i] if padded else batch.items[i]
    sample = {"image": image, "boxes": boxes[i], "labels": batch.labels[i]}
    if batch.masks is not None:
        sample["masks"] = _pad_to(batch.masks[i], height, width)
    for key in keys:
        sample[key] = batch.per_box[key][i]
    crowd = padded_crowd(batch, i) if padded else batch.crowd[i]
    if crowd is not None:
        sample["crowd_boxes"] = crowd.boxes
        if crowd.mask is not None:
            sample["crowd_mask"] = crowd.mask
        if crowd.masks is not None:
            sample["crowd_masks"] = crowd.masks
    return sample


def _host_sample(batch: _Batch, i: int) -> dict[str, Any]:
    """Image ``i`` as a numpy sample on the padded canvas (HWC), for a draw that reads the
    partner (SaliencyMix): a device->host copy of one image."""
    height, width = batch.canvas
    image = batch.items[i]
    pixels = image.new_full((image.shape[0], height, width), 0)
    pixels[:, : image.shape[1], : image.shape[2]] = image
    boxes, fmt = batch.boxes[i], batch.formats[i]
    if fmt not in (None, _XYXY):
        boxes = TF.convert_bounding_box_format(boxes, fmt, _XYXY)
    return {
        "image": np.ascontiguousarray(_to_host(pixels).transpose(1, 2, 0)),
        "boxes": _to_host(boxes.to(torch.float64)),
        "labels": _to_host(batch.labels[i]),
    }


def _pad_to(m: torch.Tensor | None, height: int, width: int) -> torch.Tensor | None:
    """``(..., h, w)`` masks top-left on a ``height x width`` canvas of zeros (alignment's padding)."""
    return None if m is None else _pad_masks(m, height, width)


def _flat_masks(masks: list[torch.Tensor], canvas: tuple[int, int], device: torch.device) -> torch.Tensor:
    height, width = canvas
    dtype = masks[0].dtype
    for m in masks[1:]:
        dtype = torch.promote_types(dtype, m.dtype)
    if all(tuple(m.shape[1:]) == (height, width) for m in masks):
        return torch.cat(masks).to(dtype)
    out = torch.zeros((sum(m.shape[0] for m in masks), height, width), dtype=dtype, device=device)
    start = 0
    for m in masks:
        out[start : start + m.shape[0], : m.shape[1], : m.shape[2]] = m
        start += m.shape[0]
    return out


def padded_crowd(batch: _Batch, i: int) -> Crowd | None:
    """Target ``i``'s crowd regions on the padded canvas (None: it has no crowd key)."""
    crowd = batch.crowd[i]
    height, width = batch.canvas
    if crowd is None or tuple(batch.sizes[i]) == (height, width):
        return crowd
    return Crowd(crowd.boxes, _pad_to(crowd.mask, height, width), _pad_to(crowd.masks, height, width))
