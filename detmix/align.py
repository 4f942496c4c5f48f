"""Bringing two samples of different sizes onto one canvas, the step every adapter takes first.

* ``"pad"``: both samples are placed top-left on a canvas of the larger height and width, filled
  with ``fill``; geometry is unchanged (the detection MixUp of "Bag of Freebies", and the way
  torchvision's ``GeneralizedRCNNTransform`` batches images).
* ``"resize"``: ``b`` is resized to ``a``'s canvas (bilinear for the image, nearest for masks)
  and its boxes are scaled with it.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from array_api_compat import array_namespace

from detmix._sample import Parsed, parse_sample

__all__ = ["align_pair", "canvas_size"]

AlignMode = Literal["pad", "resize"]


def canvas_size(sample: dict[str, Any]) -> tuple[int, int]:
    """``(height, width)`` of a sample's image (numpy HWC/HW or torch CHW)."""
    parsed = parse_sample(sample, "sample", check_values=False)
    return parsed.height, parsed.width


def _with(sample: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(sample)
    out.update({k: v for k, v in changes.items() if v is not None})
    return out


def _pad_image(p: Parsed, height: int, width: int, fill: float) -> Any:
    xp = p.xp
    if p.layout == "CHW":
        shape = (p.image.shape[0], height, width)
    elif p.layout == "HWC":
        shape = (height, width, p.image.shape[2])
    else:
        shape = (height, width)
    out = xp.full(shape, fill, dtype=p.image.dtype, device=getattr(p.image, "device", None))
    if p.layout == "CHW":
        out[:, : p.height, : p.width] = p.image
    else:
        out[: p.height, : p.width, ...] = p.image
    return out


def _pad_masks(p: Parsed, height: int, width: int) -> Any:
    xp = p.xp
    out = xp.zeros((p.num_boxes, height, width), dtype=p.masks.dtype, device=getattr(p.masks, "device", None))
    out[:, : p.height, : p.width] = p.masks
    return out


def _resize_image(p: Parsed, height: int, width: int) -> Any:
    if p.kind == "torch":
        import torch
        import torch.nn.functional as tF

        x = p.image[None].to(torch.float32)
        y = tF.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]
        if p.image.dtype == torch.uint8:
            return y.round_().clamp_(0, 255).to(torch.uint8)
        return y.to(p.image.dtype)

    from PIL import Image

    image = p.image
    channels = image[..., None] if p.layout == "HW" else image
    if image.dtype == np.uint8 and channels.shape[2] in (1, 3, 4):
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels.shape[2]]
        src = channels[..., 0] if mode == "L" else channels
        out = np.asarray(Image.fromarray(src, mode).resize((width, height), Image.Resampling.BILINEAR))
        return out.reshape(height, width, -1) if p.layout == "HWC" else out
    planes = [
        np.asarray(Image.fromarray(channels[..., c].astype(np.float32), "F").resize((width, height), Image.Resampling.BILINEAR))
        for c in range(channels.shape[2])
    ]
    out = np.stack(planes, axis=-1)
    if image.dtype == np.uint8:
        out = np.clip(np.rint(out), 0, 255)
    out = out.astype(image.dtype)
    return out[..., 0] if p.layout == "HW" else out


def _resize_masks(p: Parsed, height: int, width: int) -> Any:
    """Nearest neighbour by index arithmetic (pixel centres), the same on numpy and torch."""
    xp = p.xp
    dev = getattr(p.masks, "device", None)
    rows = xp.astype(xp.floor((xp.arange(height, dtype=xp.float64, device=dev) + 0.5) * (p.height / height)), xp.int64)
    cols = xp.astype(xp.floor((xp.arange(width, dtype=xp.float64, device=dev) + 0.5) * (p.width / width)), xp.int64)
    rows = xp.clip(rows, max=p.height - 1)
    cols = xp.clip(cols, max=p.width - 1)
    return xp.take(xp.take(p.masks, rows, axis=1), cols, axis=2)


def _resize_boxes(p: Parsed, height: int, width: int) -> Any:
    xp = array_namespace(p.boxes)
    sx, sy = width / p.width, height / p.height
    scale = xp.asarray([sx, sy, sx, sy], dtype=p.boxes.dtype, device=getattr(p.boxes, "device", None))
    boxes = p.boxes * scale
    limit = xp.asarray([width, height, width, height], dtype=p.boxes.dtype, device=getattr(p.boxes, "device", None))
    return xp.clip(boxes, min=xp.zeros_like(limit), max=limit)


def align_pair(
    a: dict[str, Any], b: dict[str, Any], mode: AlignMode = "pad", *, fill: float = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(a, b)`` on one canvas. Samples that already share a canvas are returned as
    they are; otherwise new dicts (inputs are never modified). See the module docstring."""
    if mode not in ("pad", "resize"):
        raise ValueError(f"mode must be 'pad' or 'resize', got {mode!r}")
    pa, pb = parse_sample(a, "a"), parse_sample(b, "b")
    if pa.kind != pb.kind:
        raise TypeError(f"a and b must be the same array kind, got a: {pa.kind}, b: {pb.kind}")
    if (pa.height, pa.width) == (pb.height, pb.width):
        return a, b
    if mode == "resize":
        masks = None if pb.masks is None else _resize_masks(pb, pa.height, pa.width)
        return a, _with(
            b,
            image=_resize_image(pb, pa.height, pa.width),
            boxes=_resize_boxes(pb, pa.height, pa.width),
            masks=masks,
        )
    height, width = max(pa.height, pb.height), max(pa.width, pb.width)
    out = []
    for p, s in ((pa, a), (pb, b)):
        if (p.height, p.width) == (height, width):
            out.append(s)
            continue
        masks = None if p.masks is None else _pad_masks(p, height, width)
        out.append(_with(s, image=_pad_image(p, height, width, fill), boxes=p.boxes, masks=masks))
    return out[0], out[1]
