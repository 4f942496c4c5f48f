"""Batch mixing for torchvision detection models: a whole batch at once, on any device.

:class:`BatchMix` takes what torchvision's detection models take, ``images`` (a ``(B, C, H, W)``
tensor or a list of ``(C, H, W)`` tensors) and ``targets`` (a list of dicts with ``boxes``,
``labels`` and optional ``masks``), pairs the images within the batch and mixes each pair with
the box, mask and weight rules of :mod:`detmix.functional`, which it calls once for the whole
batch: the boxes of all images are flattened into one ``(R, 4)`` tensor with a batch index, the
cut boxes are one ``(B, 4)`` tensor, and every rule is evaluated by the same array kernels that
:func:`detmix.functional.cutmix` and :func:`detmix.functional.mixup` use. The result for each pair
equals those functions applied to that pair with the same parameters (after the same padding).

>>> mix = BatchMix("deit", per="pair")
>>> images, targets = mix(images, targets, generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
>>> mix.last_params.pair(0)                                                               # doctest: +SKIP
MixParams(mode='cutmix', lam=0.71, cut_box=(12, 40, 180, 150), canvas=(640, 640))

Host and device: the parameters (B values) are drawn on the host; they and the row tables reach
the device in two copies, the kept rows in a third (pinned and non-blocking on CUDA). The one
device->host copy of a call is the keep mask of the rows (R booleans), because each returned
target holds a variable number of boxes. No step synchronises per image or per box.

:class:`MixCollate` wraps a :class:`BatchMix` as a ``DataLoader`` ``collate_fn``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from array_api_compat import array_namespace
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from detmix import functional as kernels  # not F: in torch code that reads as torch.nn.functional
from detmix._parse import CROWD_KEYS, Crowd, _parse_crowd, clip_edge_drift
from detmix.modes import get_mode, mode_names
from detmix.recipes import Recipe, load_recipe
from detmix.sampling import MixParams, sample_params

__all__ = ["MODES", "BatchMix", "BatchParams", "MixCollate"]  # noqa: F822 (MODES: module __getattr__)

#: The mode codes of :attr:`BatchParams.mode` are indices into :func:`detmix.modes.mode_names`
#: (``MODES`` in this module, read when asked: a mode registered later has the next code): 0 none,
#: 1 mixup, 2 cutmix, then the region family.
_NONE = 0


def __getattr__(name: str) -> Any:
    if name == "MODES":
        return mode_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BatchParams:
    """What one :class:`BatchMix` call did: enough to log it and replay it exactly.

    Output image ``i`` keeps the canvas of input image ``i`` and takes pixels and boxes from
    image ``partner[i]``, as :func:`detmix.apply_params` does with ``pair(i)``.

    Attributes:
        partner (Tensor): ``(B,)`` int64, the batch index of the image mixed into image ``i``;
            ``i`` itself where nothing was mixed.
        mode (Tensor): ``(B,)`` int64 codes into :data:`MODES` (0 none, 1 mixup, 2 cutmix...).
        lam (Tensor): ``(B,)`` float64, the share of output ``i`` that comes from image ``i``
            (1 where nothing was mixed; for CutMix recomputed from the clipped cut box).
        cut (Tensor): ``(B, 4)`` int64 half-open cut boxes ``(x1, y1, x2, y2)``; zeros where the
            mode is not CutMix.
        canvas (tuple[int, int]): ``(height, width)`` of the padded batch the parameters are for.
        per (str): ``"batch"`` (one mode, lam and cut box for the whole batch) or ``"pair"``.
        extra (tuple of dict): each pair's mode-specific parameters (:attr:`MixParams.extra`,
            e.g. ResizeMix's ``paste_box``); empty dicts by default.
    """

    partner: torch.Tensor
    mode: torch.Tensor
    lam: torch.Tensor
    cut: torch.Tensor
    canvas: tuple[int, int]
    per: Literal["batch", "pair"] = "pair"
    extra: tuple[dict[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        partner = torch.as_tensor(self.partner, dtype=torch.int64, device="cpu").reshape(-1)
        size = partner.shape[0]
        mode = torch.as_tensor(self.mode, dtype=torch.int64, device="cpu").reshape(-1)
        lam = torch.as_tensor(self.lam, dtype=torch.float64, device="cpu").reshape(-1)
        cut = torch.as_tensor(self.cut, dtype=torch.int64, device="cpu")
        if cut.numel() == 0:
            cut = cut.reshape(0, 4)
        if mode.shape != (size,) or lam.shape != (size,) or cut.shape != (size, 4):
            raise ValueError(
                f"BatchParams needs partner (B,), mode (B,), lam (B,) and cut (B, 4) for one B, got "
                f"{tuple(partner.shape)}, {tuple(mode.shape)}, {tuple(lam.shape)} and {tuple(cut.shape)}"
            )
        height, width = (int(v) for v in self.canvas)
        if self.per not in ("batch", "pair"):
            raise ValueError(f"per must be 'batch' or 'pair', got {self.per!r}")
        if size and bool(((partner < 0) | (partner >= size)).any()):
            raise ValueError(f"partner must hold batch indices in [0, {size}), got {partner.tolist()}")
        names = mode_names()
        if size and bool(((mode < 0) | (mode >= len(names))).any()):
            raise ValueError(f"mode must hold codes into {names} (0 none, 1 mixup, 2 cutmix...), got {mode.tolist()}")
        if size and not bool(((lam >= 0) & (lam <= 1)).all()):
            raise ValueError(f"lam must be in [0, 1], got {lam.tolist()}")
        is_cut = torch.tensor([get_mode(names[int(c)]).uses_cut_box for c in mode.tolist()], dtype=torch.bool)
        inside = (
            (cut[:, 0] >= 0) & (cut[:, 0] <= cut[:, 2]) & (cut[:, 2] <= width)
            & (cut[:, 1] >= 0) & (cut[:, 1] <= cut[:, 3]) & (cut[:, 3] <= height)
        )
        if size and not bool((inside | ~is_cut).all()):
            i = int(torch.nonzero(is_cut & ~inside)[0, 0])
            raise ValueError(
                f"cut[{i}] must satisfy 0 <= x1 <= x2 <= {width} and 0 <= y1 <= y2 <= {height} (the "
                f"{width}x{height} canvas), got {cut[i].tolist()}"
            )
        cut = torch.where(is_cut[:, None], cut, torch.zeros_like(cut))
        extra = tuple({} for _ in range(size)) if self.extra is None else tuple(dict(e) for e in self.extra)
        if len(extra) != size:
            raise ValueError(f"extra must hold one dict per pair ({size}), got {len(extra)}")
        for name, value in (("partner", partner), ("mode", mode), ("lam", lam), ("cut", cut), ("extra", extra)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "canvas", (height, width))
        # Each mode checks its own parameters (lam of a cut box, a paste box...): one read of each tensor.
        codes, lams, boxes = mode.tolist(), lam.tolist(), cut.tolist()
        for i in range(size):
            try:
                self._pair(names[codes[i]], lams[i], boxes[i], extra[i])
            except ValueError as error:
                raise ValueError(f"pair {i}: {error}") from None

    def __len__(self) -> int:
        return int(self.partner.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BatchParams):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    @property
    def modes(self) -> tuple[str, ...]:
        """The mode of every pair as a string of :data:`MODES`."""
        names = mode_names()
        return tuple(names[c] for c in self.mode.tolist())

    def pair(self, i: int) -> MixParams:
        """The :class:`~detmix.sampling.MixParams` of output ``i``: with
        ``detmix.apply_params(a=sample i, b=sample partner[i], params=pair(i), recipe)`` on the
        padded samples it gives output ``i`` of the batch."""
        return self._pair(mode_names()[int(self.mode[i])], float(self.lam[i]), self.cut[i].tolist(), self.extra[i])

    def _pair(self, name: str, lam: float, cut: list[int], extra: dict[str, Any]) -> MixParams:
        box = tuple(int(v) for v in cut) if get_mode(name).uses_cut_box else None
        return MixParams(name, lam, box, self.canvas, extra)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers, for JSON or YAML logs; :meth:`from_dict` reads it back."""
        return {
            "per": self.per,
            "canvas": list(self.canvas),
            "partner": self.partner.tolist(),
            "mode": list(self.modes),
            "lam": self.lam.tolist(),
            "cut": self.cut.tolist(),
            **({"extra": [{k: list(v) if isinstance(v, tuple) else v for k, v in e.items()} for e in self.extra]}
               if any(self.extra) else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchParams:
        """The :class:`BatchParams` that :meth:`to_dict` wrote."""
        names = mode_names()
        try:
            mode = [names.index(m) for m in data["mode"]]
        except ValueError:
            raise ValueError(f"mode must hold {names}, got {list(data['mode'])}") from None
        return cls(
            partner=torch.tensor(list(data["partner"]), dtype=torch.int64),
            mode=torch.tensor(mode, dtype=torch.int64),
            lam=torch.tensor(list(data["lam"]), dtype=torch.float64),
            cut=torch.tensor(list(data["cut"]), dtype=torch.int64).reshape(-1, 4),
            canvas=tuple(data["canvas"]),
            per=data.get("per", "pair"),
            extra=tuple({k: tuple(v) if isinstance(v, list) else v for k, v in e.items()}
                        for e in data.get("extra", [{}] * len(mode))),
        )


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
                m = m != 0
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


# --------------------------------------------------------------------------------------------
# BatchMix
# --------------------------------------------------------------------------------------------


class BatchMix:
    """Mix a batch of detection samples with itself: CutMix and MixUp for torchvision detection
    models, on any device, with boxes, labels, masks and per-box weights following the pixels.

    Each image ``i`` is paired with ``partner[i]`` from a random cyclic order of the batch
    (``order = torch.randperm(B)``, ``partner[order[k]] = order[k + 1 mod B]``): for ``B >= 2``
    no image is paired with itself and every image is mixed into exactly one other. Output ``i``
    keeps image ``i``'s canvas and sample-level keys (``image_id``...) and equals
    ``detmix.apply_params(sample i, sample partner[i], last_params.pair(i), recipe)`` on the
    padded samples. A batch of one has no partner: its image comes back unmixed (mode
    ``"none"``: weight 1 on every box).

    Images of different sizes are padded to a common canvas the way torchvision's
    ``GeneralizedRCNNTransform`` batches them: placed top-left on a canvas of the largest height
    and width (rounded up to ``size_divisible``), filled with ``fill``; box coordinates do not
    change. ``recipe.align`` is not used: a batch has one canvas.

    Args:
        recipe (str, path, dict or Recipe): the mixing recipe (see :func:`detmix.load_recipe`):
            ``prob``, ``switch_prob`` (the DeiT switch), the MixUp and CutMix sections with their
            thresholds and weight modes.
        per (str): ``"batch"``: one draw of mode, lam and cut box for the whole batch (timm's
            ``mode="batch"``, torchvision's ``v2.CutMix``); ``"pair"``: every pair draws its own
            (timm's ``"pair"``).
        box_keys (sequence of str, optional): the target keys that hold one row per box
            (``area``, ``iscrowd``, ids...). Default: every tensor with one row per box in every
            target. They are gathered with the boxes; every other key is sample-level and is
            taken from the image whose canvas is kept.
        generator (torch.Generator, optional): the generator to draw from when a call passes none.
            With neither, the draws come from torch's default (global) generator, as
            torchvision's ``v2.CutMix`` draws: ``torch.manual_seed`` makes them repeatable; an
            injected generator replays exactly whatever else draws from the global one.
        fill (float): value of the padding pixels. Default 0.
        size_divisible (int): round the padded canvas up to a multiple of this (32 in
            ``GeneralizedRCNNTransform``). Default 1.

    Inputs:
        images: a ``(B, C, H, W)`` tensor or a list of ``(C, H, W)`` tensors (``tv_tensors.Image``
            or plain), uint8 or float, all on one device.
        targets: a list of ``B`` dicts with ``boxes`` (an ``(N, 4)`` tensor in absolute xyxy
            pixels, or a ``tv_tensors.BoundingBoxes`` in any unrotated format whose
            ``canvas_size`` is its image's), ``labels`` ``(N,)`` integers and optional ``masks``
            ``(N, H, W)`` bool or uint8 (a tensor or ``tv_tensors.Mask``; for every target or
            none). Boxes must lie inside their image with ``x1 < x2`` and ``y1 < y2``
            (``v2.ClampBoundingBoxes`` and ``v2.SanitizeBoundingBoxes`` ensure it).

    Returns:
        ``(images, targets)`` of the same structure: a tensor for a tensor, a list of views of one
        ``(B, C, H', W')`` tensor for a list (so images grow to the padded canvas), tv_tensors
        types kept. Each target holds the kept ``boxes`` (in the input's format, with
        ``canvas_size`` the padded canvas; float), ``labels``, ``masks`` and per-box extras,
        own boxes first then the partner's, plus ``weights`` (per box, the dtype of the boxes),
        ``mix_source`` (per box, int64: 0 own image, 1 partner) and ``mix_partner`` (0-d int64:
        the batch index of the image mixed in, its own index when nothing was). Labels, masks and
        extras come back in the dtype common to the batch. Inputs are not modified; when nothing
        is mixed and no padding is needed, the input image tensor itself is returned.

    Randomness comes only from the ``torch.Generator`` (given, or torch's default one): the permutation and one 63-bit seed are
    drawn on the generator's device (one copy to the host, none for a CPU generator); the seed
    starts a numpy generator from which :func:`detmix.sample_params` draws each pair's switch,
    lam (Beta, which torch cannot draw from a generator) and cut box (once per batch with
    ``per="batch"``). MixUp's
    lam is rounded to float32 when drawn, so that the batch, blended with lam in a float32
    tensor, equals the per-sample blend bit for bit. :attr:`last_params` holds the draw of the
    last call; :meth:`apply` replays it.
    """

    def __init__(
        self,
        recipe: str | Recipe | dict = "deit",
        *,
        per: Literal["batch", "pair"] = "batch",
        box_keys: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        fill: float = 0,
        size_divisible: int = 1,
    ) -> None:
        self.recipe = load_recipe(recipe)
        if per not in ("batch", "pair"):
            raise ValueError(f"per must be 'batch' or 'pair', got {per!r}")
        self.per = per
        if isinstance(box_keys, str):
            raise TypeError(f"box_keys must be a sequence of key names, got the string {box_keys!r}")
        self.box_keys = None if box_keys is None else tuple(box_keys)
        if self.box_keys is not None:
            reserved = sorted((_RESERVED | set(_OUTPUT_KEYS)) & set(self.box_keys))
            if reserved:
                raise ValueError(f"box_keys must not name {reserved}: they are handled by BatchMix")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(fill):
            raise ValueError(f"fill must be a finite number, got {fill!r}")
        self.fill = fill
        if isinstance(size_divisible, bool) or not isinstance(size_divisible, int) or size_divisible < 1:
            raise ValueError(f"size_divisible must be an int >= 1, got {size_divisible!r}")
        self.size_divisible = size_divisible
        #: The :class:`BatchParams` of the last call (``None`` before the first).
        self.last_params: BatchParams | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(recipe={self.recipe.name!r}, per={self.per!r})"

    # ---------------------------------------------------------------- randomness

    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        generator = self.generator if generator is None else generator
        if generator is None:
            # As torchvision's v2.CutMix: torch's global generator (torch.manual_seed seeds it).
            return torch.default_generator
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator

    def make_params(
        self, batch_size: int, canvas: tuple[int, int], generator: torch.Generator | None = None,
        partners: Any = None,
    ) -> BatchParams:
        """Draw the parameters of a batch of ``batch_size`` images on a ``(height, width)``
        canvas. This is the only place where :class:`BatchMix` draws random numbers.
        ``partners(j)`` gives image ``j`` as a numpy sample on the canvas, for the modes whose
        draw looks at the partner (SaliencyMix); the call reads it back from the device."""
        generator = self._generator(generator)
        size = int(batch_size)
        if size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size!r}")
        height, width = (int(v) for v in canvas)
        if size == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return BatchParams(empty, empty, empty.double(), empty.reshape(0, 4), (height, width), self.per)
        if height < 1 or width < 1:
            raise ValueError(f"canvas must be (height, width) >= 1, got {canvas!r}")
        dev = generator.device
        order = torch.randperm(size, generator=generator, device=dev)
        seed = torch.randint(0, 2**63 - 1, (1,), generator=generator, device=dev)
        draws = _to_host(torch.cat([order, seed]))
        order, rng = draws[:size], np.random.default_rng(int(draws[size]))
        partner = np.empty(size, np.int64)
        partner[order] = np.roll(order, -1)

        # The draw of each pair is detmix.sample_params (the DeiT switch, Beta lam with its clamp,
        # the cut box), once per batch or once per pair: the same rule as every other adapter.
        n = 1 if self.per == "batch" else size
        reads = partners is not None and any(get_mode(m).reads_partner for m in self.recipe.sections())
        drawn = [sample_params(rng, self.recipe, height, width, partners=(partners(int(partner[k])),) if reads else ())
                 for k in range(n)]
        names = mode_names()
        mode = np.array([names.index(p.mode) for p in drawn], np.int64)
        lam = np.array([p.lam for p in drawn], np.float64)
        cut = np.array([p.cut_box or (0, 0, 0, 0) for p in drawn], np.int64).reshape(n, 4)
        # A blend's lam rounded to float32, so the batched blend equals the per-sample one bit for bit.
        blend = _kinds(mode) == "blend"
        lam = np.where(blend, lam.astype(np.float32).astype(np.float64), lam)
        extra = [dict(p.extra) for p in drawn]
        if n == 1:
            mode, lam, cut = np.repeat(mode, size), np.repeat(lam, size), np.repeat(cut, size, axis=0)
            extra = extra * size
        itself = partner == np.arange(size)  # only in a batch of one
        mode = np.where(itself, _NONE, mode)
        unmixed = mode == _NONE
        lam = np.where(unmixed, 1.0, lam)
        cut = np.where(unmixed[:, None], 0, cut)
        partner = np.where(unmixed, np.arange(size), partner)
        extra = [{} if u else e for u, e in zip(unmixed, extra)]
        return BatchParams(
            torch.from_numpy(partner), torch.from_numpy(mode.astype(np.int64)), torch.from_numpy(lam),
            torch.from_numpy(cut), (height, width), self.per, tuple(extra),
        )

    # ---------------------------------------------------------------- entry points

    def __call__(
        self, images: Any, targets: Sequence[Mapping[str, Any]], generator: torch.Generator | None = None
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Mix ``images`` and ``targets`` (see the class docstring) with parameters drawn from
        ``generator`` (or the one given to :class:`BatchMix`, or torch's default generator)."""
        generator = self._generator(generator)
        batch = _parse_batch(images, targets, self.box_keys, self.size_divisible)
        params = self.make_params(batch.size, batch.canvas, generator, partners=lambda j: _host_sample(batch, j))
        return self._apply(batch, params)

    def apply(
        self, images: Any, targets: Sequence[Mapping[str, Any]], params: BatchParams
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Mix with given ``params`` (e.g. :attr:`last_params`, or ``BatchParams.from_dict`` of a
        log): the same inputs give the same output."""
        if not isinstance(params, BatchParams):
            raise TypeError(f"params must be a BatchParams, got {type(params).__name__}")
        batch = _parse_batch(images, targets, self.box_keys, self.size_divisible)
        if len(params) != batch.size:
            raise ValueError(f"params are for a batch of {len(params)} images, got {batch.size}")
        if batch.size and params.canvas != batch.canvas:
            raise ValueError(
                f"params were drawn for canvas {params.canvas} but the batch's padded canvas is {batch.canvas}"
            )
        for name in set(params.modes):
            if get_mode(name).config is not None and self.recipe.section(name) is None:
                raise ValueError(
                    f"params ask for mode {name!r} but recipe {self.recipe.name!r} has no {name!r} section"
                )
        return self._apply(batch, params)

    # ---------------------------------------------------------------- the batch

    def _apply(self, batch: _Batch, params: BatchParams) -> tuple[Any, list[dict[str, Any]]]:
        self.last_params = params
        if batch.size == 0:
            return batch.images, []
        dev = batch.device
        true_partner = params.partner.numpy()
        # Modes without a vectorised path ("pairwise") are run pair by pair at the end; the batch
        # pass treats their images as unmixed.
        kinds = _kinds(params.mode.numpy())
        pairwise = np.array([k is None for k in kinds]) & (params.mode.numpy() != _NONE)
        mode = np.where(pairwise, _NONE, params.mode.numpy())
        partner = np.where(pairwise, np.arange(batch.size), true_partner)
        blend = (kinds == "blend") & ~pairwise
        cuts = np.where(pairwise[:, None], 0, params.cut.numpy())
        counts = batch.counts
        rows = _rows(counts, mode, partner, blend)
        total, num_cut = len(rows.src), rows.num_cut

        # What the device needs from the host: the row tables and the parameters, in two copies.
        heights, widths = np.repeat(batch.sizes[:, 0], counts), np.repeat(batch.sizes[:, 1], counts)
        parts = (rows.src, rows.out, rows.source, rows.mode, partner, cuts.reshape(-1), widths, heights, true_partner)
        ints = _to_device(np.concatenate(parts).astype(np.int64), dev)
        src, out_img, source, row_mode, partner_t, cut_t, lim_w, lim_h, true_partner_t = torch.split(
            ints, [len(p) for p in parts])
        cut_t = cut_t.reshape(-1, 4)
        lam64 = params.lam.numpy()
        floats = _to_device(np.stack([lam64, 1.0 - lam64]), dev)

        # Boxes of all images flattened (N, 4) xyxy, and the rows (R) they become.
        boxes, dtype = _flat_xyxy(batch)
        # Float drift past an edge (a format round trip in float32) is clipped, as in every face.
        boxes = clip_edge_drift(boxes, lim_h, lim_w)
        bad = _bad_boxes(boxes, lim_w, lim_h)
        pasted = source == 1
        lam_t, rest_t = floats[0].to(dtype), floats[1].to(dtype)
        share = torch.where(pasted, rest_t.index_select(0, out_img), lam_t.index_select(0, out_img))
        row_boxes = boxes.index_select(0, src)
        masks = None
        if batch.masks is not None:
            masks = _take(_flat_masks(batch.masks, batch.canvas, dev), src)

        new_boxes, new_masks, weights, reasons = [], [], [], []
        if num_cut:  # CutMix images, and unmixed ones (CutMix with an empty cut, no thresholds)
            sl = slice(0, num_cut)
            cut_rows = cut_t.index_select(0, out_img[sl]).to(dtype)
            if masks is not None:
                m, vis, tight = kernels.cutmix_masks(masks[sl], cut_rows, pasted[sl], dtype)
                b = kernels.visible_boxes(row_boxes[sl], tight, vis)
                new_masks.append(m)
            else:
                b, vis = kernels.cutmix_boxes(row_boxes[sl], cut_rows, pasted[sl])
            new_boxes.append(b)
            reason, weight = _rules(self.recipe, "cut", b, vis, share[sl], row_mode[sl], rows.mode[sl])
            reasons.append(reason)
            weights.append(weight)
        if total > num_cut:  # blended images: geometry unchanged, rules on each image's share
            sl = slice(num_cut, total)
            reason, weight = _rules(self.recipe, "blend", row_boxes[sl], share[sl], share[sl], row_mode[sl],
                                    rows.mode[sl])
            reasons.append(reason)
            weights.append(weight)
            new_boxes.append(row_boxes[sl])
            if masks is not None:
                new_masks.append(masks[sl])
        new_boxes_t = _cat(new_boxes, row_boxes)
        weights_t = _cat(weights, share)
        reason_t = _cat(reasons, torch.zeros(0, dtype=torch.int64, device=dev))
        masks_t = None if masks is None else _cat(new_masks, masks)

        # The one device->host copy: which boxes are kept (and which inputs are invalid).
        flags = _to_host(torch.cat([bad, reason_t < 0]))
        if flags[: len(bad)].any():
            raise _box_error(batch, boxes, int(np.flatnonzero(flags[: len(bad)])[0]))
        kept = np.flatnonzero(flags[len(bad):])
        kept = kept[np.argsort(rows.out[kept], kind="stable")]  # output order: image, source, row
        per_image = np.bincount(rows.out[kept], minlength=batch.size).tolist()
        gather = _to_device(np.concatenate([kept, rows.src[kept], rows.source[kept]]).astype(np.int64), dev)
        kept_t, kept_src, kept_source = torch.split(gather, [len(kept)] * 3)

        out_targets = self._targets(
            batch, per_image, true_partner_t,
            boxes=new_boxes_t.index_select(0, kept_t),
            labels=torch.cat(batch.labels).index_select(0, kept_src),
            masks=None if masks_t is None else _take(masks_t, kept_t),
            weights=weights_t.index_select(0, kept_t),
            source=kept_source,
            extras={k: _take(torch.cat(v), kept_src) for k, v in batch.per_box.items()},
        )
        self._mix_crowd(batch, params, out_targets, pairwise)
        overrides = self._pairwise(batch, params, np.flatnonzero(pairwise), out_targets) if pairwise.any() else {}
        return self._images(batch, mode, blend, partner, partner_t, cut_t, floats[0], overrides), out_targets

    def _pairwise(self, batch: _Batch, params: BatchParams, images: np.ndarray,
                  targets: list[dict[str, Any]]) -> dict[int, torch.Tensor]:
        """Outputs of the images whose mode has no vectorised batch path: the mode's own kernel
        (:meth:`detmix.modes.Mode.apply`) on the padded pair, as every other face runs it. Their
        targets are replaced in ``targets``; their pixels are returned by image index."""
        x = _padded(batch, self.fill)
        boxes, _ = _flat_xyxy(batch)
        boxes = list(boxes.split(batch.counts.tolist()))
        height, width = batch.canvas
        keys = tuple(batch.per_box)
        pixels = {}
        for i in images.tolist():
            j = int(params.partner[i])
            pair = params.pair(i)
            mode = get_mode(pair.mode)
            a = _device_sample(batch, x, boxes, i, keys)
            b = _device_sample(batch, x, boxes, j, keys, padded=not mode.resizes_partner)
            out = mode.apply(a, (b,), pair, self.recipe.section(pair.mode), box_keys=keys)
            pixels[i] = out["image"]
            given = batch.targets[i]
            new = {k: v for k, v in given.items() if k not in _RESERVED and k not in _OUTPUT_KEYS and k not in keys}
            fmt = batch.formats[i]
            out_boxes = out["boxes"] if fmt in (None, _XYXY) else TF.convert_bounding_box_format(out["boxes"], _XYXY, fmt)
            value = given["boxes"]
            new["boxes"] = (tv_tensors.wrap(out_boxes, like=value, canvas_size=batch.canvas)
                            if isinstance(value, tv_tensors.BoundingBoxes) else out_boxes)
            new["labels"] = out["labels"]
            if "masks" in out:
                like = given.get("masks")
                new["masks"] = tv_tensors.wrap(out["masks"], like=like) if isinstance(like, tv_tensors.TVTensor) else out["masks"]
            for key in keys:
                new[key] = out[key]
            for key in CROWD_KEYS:
                if key in out:
                    new[key] = out[key]
            new["weights"] = out["weights"]
            new["mix_source"] = out["source"]
            new["mix_partner"] = params.partner[i].to(batch.device)
            targets[i] = new
        return pixels

    def _mix_crowd(self, batch: _Batch, params: BatchParams, targets: list[dict[str, Any]], pairwise: np.ndarray) -> None:
        """Each output's crowd regions, from its own image and its partner's by
        :func:`detmix.functional.mix_crowd` on the padded canvas. One call per image with crowd
        keys (crowd regions are few); the parameters are on the host already, so nothing
        synchronises."""
        if all(c is None for c in batch.crowd):
            return
        height, width = batch.canvas
        kinds = _kinds(params.mode.numpy())
        for i, target in enumerate(targets):
            if pairwise[i]:  # the mode's own kernel mixes them
                continue
            j = int(params.partner[i])
            pair = self._padded_crowd(batch, i), self._padded_crowd(batch, j) if j != i else None
            if pair[0] is None and pair[1] is None:
                continue
            if kinds[i] == "blend":
                mixed = kernels.mix_crowd(*pair, height, width, lam=float(params.lam[i]))
            else:  # a cut box (zeros for an unmixed image)
                mixed = kernels.mix_crowd(*pair, height, width, cut=tuple(int(v) for v in params.cut[i].tolist()))
            boxes = mixed["crowd_boxes"]
            given = batch.targets[i].get("crowd_boxes")
            if isinstance(given, tv_tensors.BoundingBoxes):
                if given.format != _XYXY:
                    boxes = TF.convert_bounding_box_format(boxes, _XYXY, given.format)
                boxes = tv_tensors.wrap(boxes, like=given, canvas_size=batch.canvas)
            target["crowd_boxes"] = boxes
            for key in ("crowd_mask", "crowd_masks"):
                if key in mixed:
                    like = batch.targets[i].get(key)
                    target[key] = tv_tensors.wrap(mixed[key], like=like) if isinstance(like, tv_tensors.TVTensor) else mixed[key]

    @staticmethod
    def _padded_crowd(batch: _Batch, i: int) -> Crowd | None:
        crowd = batch.crowd[i]
        height, width = batch.canvas
        if crowd is None or tuple(batch.sizes[i]) == (height, width):
            return crowd
        return Crowd(crowd.boxes, _pad_to(crowd.mask, height, width), _pad_to(crowd.masks, height, width))

    def _images(self, batch: _Batch, mode: np.ndarray, blend: np.ndarray, batch_partner: np.ndarray,
                partner: torch.Tensor, cut: torch.Tensor, lam: torch.Tensor, overrides: dict[int, torch.Tensor]):
        x = _padded(batch, self.fill)
        if (mode == _NONE).all():
            out = x
        else:
            lam4 = lam.to(torch.float64 if x.dtype == torch.float64 else torch.float32).reshape(-1, 1, 1, 1)
            size = x.shape[0]
            chunk = size if x.device.type != "cpu" else max(1, _CPU_CHUNK_BYTES // (x[0].numel() * 4))
            if chunk >= size:
                out = _mix_pixels(x, _take(x, partner), cut, lam4, blend)
            else:  # CPU: chunks whose float32 temporaries stay small (see _CPU_CHUNK_BYTES)
                out = torch.empty_like(x)
                host_partner = batch_partner if chunk == 1 else None
                for start in range(0, size, chunk):
                    sl = slice(start, start + chunk)
                    if host_partner is not None:  # one image: its partner is a view, nothing to gather
                        j = int(host_partner[start])
                        b = x[j : j + 1]
                    else:
                        b = _take(x, partner[sl])
                    out[sl] = _mix_pixels(x[sl], b, cut[sl], lam4[sl], blend[sl])
        if overrides:
            if out is x:  # never write into the caller's tensor
                out = x.clone()
            for i, pixels in overrides.items():
                out[i] = pixels
        images = batch.images
        if isinstance(images, torch.Tensor):
            return tv_tensors.wrap(out, like=images) if isinstance(images, tv_tensors.TVTensor) else out
        return [
            tv_tensors.wrap(o, like=src) if isinstance(src, tv_tensors.TVTensor) else o
            for o, src in zip(out.unbind(0), images)
        ]

    def _targets(self, batch: _Batch, per_image: list[int], partner: torch.Tensor, *, boxes, labels, masks,
                 weights, source, extras) -> list[dict[str, Any]]:
        boxes_split = _restore_formats(boxes, per_image, batch)
        split = {
            "labels": labels.split(per_image),
            "weights": weights.split(per_image),
            "mix_source": source.split(per_image),
            **{k: v.split(per_image) for k, v in extras.items()},
        }
        masks_split = None if masks is None else masks.split(per_image)
        out = []
        for i, target in enumerate(batch.targets):
            new: dict[str, Any] = {}
            for key, value in target.items():
                if key == "boxes":
                    new[key] = boxes_split[i]
                elif key == "masks" and masks_split is not None:
                    m = masks_split[i]
                    new[key] = tv_tensors.wrap(m, like=value) if isinstance(value, tv_tensors.TVTensor) else m
                elif key in split:
                    new[key] = split[key][i]
                elif key not in _OUTPUT_KEYS:
                    new[key] = value  # sample-level: from the image whose canvas is kept
            for key in extras:
                new.setdefault(key, split[key][i])
            new["weights"] = split["weights"][i]
            new["mix_source"] = split["mix_source"][i]
            new["mix_partner"] = partner[i]
            out.append(new)
        return out


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
    crowd = BatchMix._padded_crowd(batch, i) if padded else batch.crowd[i]
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
    """``(..., h, w)`` masks top-left on a ``height x width`` canvas of zeros."""
    if m is None:
        return None
    out = m.new_zeros((*m.shape[:-2], height, width))
    out[..., : m.shape[-2], : m.shape[-1]] = m
    return out


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


# --------------------------------------------------------------------------------------------
# DataLoader
# --------------------------------------------------------------------------------------------


class MixCollate:
    """A ``DataLoader`` ``collate_fn`` that mixes each batch: a list of ``(image, target)``
    becomes ``(images, targets)`` lists mixed by ``mix`` (see :class:`BatchMix`).

    Args:
        mix (BatchMix): the batch transform.
        generator (torch.Generator, optional): where the draws come from; default
            ``mix.generator``; with neither, torch's default generator, which the ``DataLoader``
            seeds in each worker from its base seed and the worker's id. In the main process (``num_workers=0``) it is used as it is. A
            worker process has a copy of it, so each worker draws from its own generator seeded
            from ``generator.initial_seed()`` and the worker's seed
            (``torch.utils.data.get_worker_info().seed``, new every epoch): workers and epochs
            differ, and a DataLoader given ``generator=`` too is reproducible.

    Example::

        loader = DataLoader(dataset, batch_size=32, shuffle=True,
                            collate_fn=MixCollate(BatchMix("deit"), generator=torch.Generator().manual_seed(0)))
    """

    def __init__(self, mix: BatchMix, generator: torch.Generator | None = None) -> None:
        if not isinstance(mix, BatchMix):
            raise TypeError(f"mix must be a BatchMix, got {type(mix).__name__}")
        generator = mix.generator if generator is None else generator
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.mix = mix
        self.generator = generator
        self._worker: tuple[int, int] | None = None
        self._worker_generator: torch.Generator | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mix!r})"

    def _current_generator(self) -> torch.Generator | None:
        info = torch.utils.data.get_worker_info()
        if info is None or self.generator is None:
            return self.generator
        key = (int(info.id), int(info.seed))
        if self._worker != key:
            seed = np.random.SeedSequence([self.generator.initial_seed(), key[1]]).generate_state(1, np.uint64)[0]
            self._worker_generator = torch.Generator(device=self.generator.device).manual_seed(int(seed) >> 1)
            self._worker = key
        return self._worker_generator

    def __call__(self, batch: Sequence[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
        images, targets = [], []
        for i, item in enumerate(batch):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError(f"batch[{i}] must be an (image, target) pair, got {type(item).__name__}")
            images.append(item[0])
            targets.append(item[1])
        out_images, out_targets = self.mix(images, targets, generator=self._current_generator())
        return list(out_images), out_targets
