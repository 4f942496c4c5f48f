"""Bringing two samples of different sizes onto one canvas, the step every adapter takes first.

* ``"pad"``: both samples are placed top-left on a canvas of the larger height and width, filled
  with ``fill``; geometry is unchanged (the detection MixUp of "Bag of Freebies", and the way
  torchvision's ``GeneralizedRCNNTransform`` batches images).
* ``"resize"``: ``b`` is resized to ``a``'s canvas (bilinear for the image, nearest for masks)
  and its boxes are scaled with it.

Crowd regions (``crowd_boxes``, ``crowd_mask``, ``crowd_masks``) are aligned with the image like
the boxes and masks.

CutMix reads ``b``'s pixels inside its cut box only, so :func:`align_pair` takes that box as
``window`` and computes nothing of ``b``'s image outside it. uint8 images on the numpy path are
resized by Pillow in two separable passes run one at a time, so that a window comes out bit for
bit as the same window of the whole resize (the tests hold it to that); other images are
resized whole and cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from array_api_compat import array_namespace

from detmix._parse import Parsed, parse_sample
from detmix.functional import check_cut_box

__all__ = ["align_canvas", "align_pair", "canvas_size", "place_sample", "resize_sample"]

AlignMode = Literal["pad", "resize"]
Window = tuple[int, int, int, int]


def align_canvas(canvas_a: tuple[int, int], canvas_b: tuple[int, int], mode: AlignMode) -> tuple[int, int]:
    """``(height, width)`` of the canvas :func:`align_pair` puts ``a`` and ``b`` on: ``a``'s for
    ``"resize"``, the larger of each side for ``"pad"``. Known before anything is aligned, so the
    parameters of a mix can be drawn first."""
    if mode not in ("pad", "resize"):
        raise ValueError(f"mode must be 'pad' or 'resize', got {mode!r}")
    (ha, wa), (hb, wb) = canvas_a, canvas_b
    return (int(ha), int(wa)) if mode == "resize" else (max(int(ha), int(hb)), max(int(wa), int(wb)))


def canvas_size(sample: dict[str, Any], name: str = "sample") -> tuple[int, int]:
    """``(height, width)`` of a sample's image (numpy HWC/HW or torch CHW); ``name`` is the
    argument named in errors."""
    parsed = parse_sample(sample, name, check_values=False)
    return parsed.height, parsed.width


def _with(sample: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(sample)
    out.update({k: v for k, v in changes.items() if v is not None})
    return out


def _on_canvas(p: Parsed, source: Any, shape: tuple[int, ...], rows: slice, cols: slice, fill: float) -> Any:
    """A ``fill`` canvas of ``shape`` (``p``'s layout and dtype) holding ``source[rows, cols]``
    at the same place."""
    xp = p.xp
    out = xp.full(shape, fill, dtype=source.dtype, device=getattr(source, "device", None))
    if p.layout == "CHW":
        out[:, rows, cols] = source[:, rows, cols]
    else:
        out[rows, cols, ...] = source[rows, cols, ...]
    return out


def _canvas_shape(p: Parsed, height: int, width: int) -> tuple[int, ...]:
    """The shape of an image of ``p``'s layout and channels on a ``height x width`` canvas."""
    if p.layout == "CHW":
        return (p.image.shape[0], height, width)
    if p.layout == "HWC":
        return (height, width, p.image.shape[2])
    return (height, width)


def _pad_image(p: Parsed, height: int, width: int, fill: float, window: Window | None = None) -> Any:
    """``p``'s image top-left on a ``fill`` canvas; with ``window``, only its pixels inside it."""
    shape = _canvas_shape(p, height, width)
    x1, y1, x2, y2 = (0, 0, p.width, p.height) if window is None else window
    return _on_canvas(p, p.image, shape, slice(y1, min(y2, p.height)), slice(x1, min(x2, p.width)), fill)


def _only_window(p: Parsed, image: Any, window: Window, fill: float) -> Any:
    """A ``fill`` canvas like ``image`` holding ``image``'s pixels inside ``window`` only."""
    x1, y1, x2, y2 = window
    return _on_canvas(p, image, tuple(image.shape), slice(y1, y2), slice(x1, x2), fill)


def _source_lines(lo: int, hi: int, src: int, dst: int) -> tuple[int, int]:
    """Source lines ``[r0, r1)`` that cover what Pillow's bilinear pass ``src -> dst`` reads for
    output lines ``[lo, hi)``: centre ``(i + 0.5) * src / dst``, support ``max(src / dst, 1)``,
    with a line of margin on each side."""
    scale = src / dst
    support = max(scale, 1.0)
    return max(0, math.floor((lo + 0.5) * scale - support) - 1), min(src, math.ceil((hi - 0.5) * scale + support) + 2)


def _pillow_resize_window(pixels: Any, height: int, width: int, window: Window) -> Any:
    """``window`` of ``pixels`` (uint8 ``(H, W)`` or ``(H, W, 3)``) resized to ``width x height``:
    Pillow's bilinear filter in two separable passes, each rounded to 8 bits, the pass with the
    smaller intermediate image first (horizontal first on a tie).

    A pass's coefficients depend only on the input and output lengths of its axis, and each
    output line reads a few input lines, so the window comes out bit for bit without the rest:
    the first pass runs on the source lines the second pass will read (all of them only when
    the window spans the canvas), the window's lines across it are cropped and put back at their
    place in an otherwise blank intermediate of full length, the second pass runs on them alone
    and the window is cropped. Each pass is a Pillow resize that keeps the other axis. A
    ``box=`` resize is no substitute: Pillow passes the box as single-precision floats, which
    moves the sample positions; and one ``Image.resize`` call is not either, since the order
    of its passes (and so the rounding in between) is Pillow's choice and has changed between
    versions."""
    from PIL import Image

    bilinear = Image.Resampling.BILINEAR
    x1, y1, x2, y2 = window
    src_h, src_w = pixels.shape[:2]
    if width * src_h <= src_w * height:  # horizontal pass first
        r0, r1 = (y1, y2) if height == src_h else _source_lines(y1, y2, src_h, height)
        image = Image.fromarray(pixels[r0:r1])
        if width != src_w:
            image = image.resize((width, r1 - r0), bilinear)
        image = image.crop((x1, 0, x2, r1 - r0))
        if height != src_h:
            tall = Image.new(image.mode, (x2 - x1, src_h))
            tall.paste(image, (0, r0))
            image = tall.resize((x2 - x1, height), bilinear).crop((0, y1, x2 - x1, y2))
    else:  # vertical pass first
        c0, c1 = (x1, x2) if width == src_w else _source_lines(x1, x2, src_w, width)
        image = Image.fromarray(np.ascontiguousarray(pixels[:, c0:c1]))
        if height != src_h:
            image = image.resize((c1 - c0, height), bilinear)
        image = image.crop((0, y1, c1 - c0, y2))
        if width != src_w:
            wide = Image.new(image.mode, (src_w, y2 - y1))
            wide.paste(image, (c0, 0))
            image = wide.resize((width, y2 - y1), bilinear).crop((x1, 0, x2, y2 - y1))
    return np.asarray(image)


def _two_pass_path(p: Parsed) -> bool:
    """uint8 images of 1 or 3 channels on the numpy path (``L`` and ``RGB`` for Pillow)."""
    return p.kind == "numpy" and p.image.dtype == np.uint8 and (p.layout == "HW" or p.image.shape[2] in (1, 3))


def _resize_image(p: Parsed, height: int, width: int, window: Window | None = None, fill: float = 0) -> Any:
    """``p``'s image resized to ``height x width`` (bilinear, antialiased when shrinking); with
    ``window``, only its pixels inside it, the rest ``fill``."""
    if not _two_pass_path(p):  # torch, float and RGBA images: resized whole
        full = _resize_whole_image(p, height, width)
        return full if window is None else _only_window(p, full, window, fill)
    x1, y1, x2, y2 = (0, 0, width, height) if window is None else window
    plane = p.image if p.layout == "HW" or p.image.shape[2] == 3 else p.image[..., 0]
    shape = (height, width, *p.image.shape[2:])
    out = np.empty(shape, dtype=np.uint8) if window is None else np.full(shape, fill, dtype=np.uint8)
    if x2 > x1 and y2 > y1:
        part = _pillow_resize_window(plane, height, width, (x1, y1, x2, y2))
        out[y1:y2, x1:x2, ...] = part.reshape(out[y1:y2, x1:x2, ...].shape)
    return out


def _resize_whole_image(p: Parsed, height: int, width: int) -> Any:
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
    if image.dtype == np.uint8 and p.layout == "HWC" and image.shape[2] == 4:
        return np.asarray(Image.fromarray(image, "RGBA").resize((width, height), Image.Resampling.BILINEAR))
    channels = image[..., None] if p.layout == "HW" else image
    planes = [
        np.asarray(Image.fromarray(channels[..., c].astype(np.float32), "F").resize((width, height), Image.Resampling.BILINEAR))
        for c in range(channels.shape[2])
    ]
    out = np.stack(planes, axis=-1)
    if image.dtype == np.uint8:
        out = np.clip(np.rint(out), 0, 255)
    out = out.astype(image.dtype)
    return out[..., 0] if p.layout == "HW" else out


def _pad_masks(masks: Any, height: int, width: int) -> Any:
    """``(..., h, w)`` masks top-left on a ``height x width`` canvas of zeros."""
    xp = array_namespace(masks)
    out = xp.zeros((*masks.shape[:-2], height, width), dtype=masks.dtype, device=getattr(masks, "device", None))
    out[..., : masks.shape[-2], : masks.shape[-1]] = masks
    return out


def _resize_masks(masks: Any, height: int, width: int) -> Any:
    """``(..., h, w)`` masks resized to ``height x width``: nearest neighbour by index
    arithmetic (pixel centres), the same on numpy and torch."""
    xp = array_namespace(masks)
    dev = getattr(masks, "device", None)
    src_h, src_w = masks.shape[-2:]
    rows = xp.astype(xp.floor((xp.arange(height, dtype=xp.float64, device=dev) + 0.5) * (src_h / height)), xp.int64)
    cols = xp.astype(xp.floor((xp.arange(width, dtype=xp.float64, device=dev) + 0.5) * (src_w / width)), xp.int64)
    rows = xp.clip(rows, max=src_h - 1)
    cols = xp.clip(cols, max=src_w - 1)
    return xp.take(xp.take(masks, rows, axis=masks.ndim - 2), cols, axis=masks.ndim - 1)


def _resize_boxes(boxes: Any, src: tuple[int, int], height: int, width: int) -> Any:
    """xyxy ``boxes`` of a ``src`` (height, width) canvas scaled to ``height x width``."""
    xp = array_namespace(boxes)
    sx, sy = width / src[1], height / src[0]
    scale = xp.asarray([sx, sy, sx, sy], dtype=boxes.dtype, device=getattr(boxes, "device", None))
    limit = xp.asarray([width, height, width, height], dtype=boxes.dtype, device=getattr(boxes, "device", None))
    return xp.clip(boxes * scale, min=xp.zeros_like(limit), max=limit)


def _aligned_crowd(p: Parsed, height: int, width: int, resize: bool) -> dict[str, Any]:
    """``p``'s crowd regions on the ``height x width`` canvas: padded, or resized with the image
    (boxes scaled, masks by nearest neighbour). Empty when ``p`` has none."""
    if p.crowd is None:
        return {}
    masks = _resize_masks if resize else _pad_masks
    out = {"crowd_boxes": _resize_boxes(p.crowd.boxes, (p.height, p.width), height, width) if resize else p.crowd.boxes}
    if p.crowd.mask is not None:
        out["crowd_mask"] = masks(p.crowd.mask, height, width)
    if p.crowd.masks is not None:
        out["crowd_masks"] = masks(p.crowd.masks, height, width)
    return out


def align_pair(
    a: dict[str, Any],
    b: dict[str, Any],
    mode: AlignMode = "pad",
    *,
    fill: float = 0,
    window: Sequence[int] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(a, b)`` on one canvas (:func:`align_canvas`). Samples that already share a
    canvas are returned as they are; otherwise new dicts (inputs are never modified). See the
    module docstring.

    ``window``: ``(x1, y1, x2, y2)`` whole pixels on the canvas, half-open. When given and
    ``b`` has to be aligned, ``b``'s image is computed only inside it and is ``fill`` elsewhere
    (its boxes and masks are aligned whole). A CutMix with that cut box reads nothing else of
    ``b``'s image, so its result is the same as after a full alignment, for less work."""
    if mode not in ("pad", "resize"):
        raise ValueError(f"mode must be 'pad' or 'resize', got {mode!r}")
    pa, pb = parse_sample(a, "a"), parse_sample(b, "b")
    if pa.kind != pb.kind:
        raise TypeError(f"a and b must be the same array kind, got a: {pa.kind}, b: {pb.kind}")
    if (pa.height, pa.width) == (pb.height, pb.width):
        return a, b
    height, width = align_canvas((pa.height, pa.width), (pb.height, pb.width), mode)
    if window is not None:
        window = check_cut_box(window, height, width, name="window")
    if mode == "resize":
        masks = None if pb.masks is None else _resize_masks(pb.masks, pa.height, pa.width)
        return a, _with(
            b,
            image=_resize_image(pb, pa.height, pa.width, window, fill),
            boxes=_resize_boxes(pb.boxes, (pb.height, pb.width), pa.height, pa.width),
            masks=masks,
            **_aligned_crowd(pb, pa.height, pa.width, resize=True),
        )
    out = []
    for p, s, only in ((pa, a, None), (pb, b, window)):
        if (p.height, p.width) == (height, width) and only is None:
            out.append(s)
            continue
        masks = None if p.masks is None else _pad_masks(p.masks, height, width)
        out.append(_with(s, image=_pad_image(p, height, width, fill, only), boxes=p.boxes, masks=masks,
                         **_aligned_crowd(p, height, width, resize=False)))
    return out[0], out[1]


def resize_sample(sample: dict[str, Any], height: int, width: int, name: str = "sample") -> dict[str, Any]:
    """``sample`` resized to ``height x width`` as ``align_pair(..., "resize")`` resizes a partner:
    the image bilinear (antialiased when shrinking), boxes scaled, masks and crowd regions by
    nearest neighbour. A new dict; the input is not modified."""
    p = parse_sample(sample, name)
    if (p.height, p.width) == (height, width):
        return sample
    masks = None if p.masks is None else _resize_masks(p.masks, height, width)
    return _with(sample, image=_resize_image(p, height, width), boxes=_resize_boxes(p.boxes, (p.height, p.width), height, width),
                 masks=masks, **_aligned_crowd(p, height, width, resize=True))


def place_sample(sample: dict[str, Any], box: Sequence[int], height: int, width: int, *, fill: float = 0,
                 name: str = "sample") -> dict[str, Any]:
    """``sample`` (of the size of ``box``) placed at ``box = (x1, y1, x2, y2)`` on a
    ``height x width`` canvas of ``fill``: pixels, boxes, masks and crowd regions shifted by
    ``(x1, y1)``. A new dict; the input is not modified."""
    p = parse_sample(sample, name)
    x1, y1, x2, y2 = (int(v) for v in box)
    if (y2 - y1, x2 - x1) != (p.height, p.width):
        raise ValueError(f"{name} must be the size of box {list(box)} ({y2 - y1}x{x2 - x1}), got {p.height}x{p.width}")
    xp = p.xp
    dev = getattr(p.boxes, "device", None)
    image = xp.full(_canvas_shape(p, height, width), fill, dtype=p.image.dtype, device=getattr(p.image, "device", None))
    if p.layout == "CHW":
        image[:, y1:y2, x1:x2] = p.image
    else:
        image[y1:y2, x1:x2, ...] = p.image

    def shifted(boxes: Any) -> Any:
        return boxes + xp.asarray([x1, y1, x1, y1], dtype=boxes.dtype, device=dev)

    def moved(masks: Any) -> Any:
        out = xp.zeros((*masks.shape[:-2], height, width), dtype=masks.dtype, device=getattr(masks, "device", None))
        out[..., y1:y2, x1:x2] = masks
        return out

    changes: dict[str, Any] = {"image": image, "boxes": shifted(p.boxes)}
    if p.masks is not None:
        changes["masks"] = moved(p.masks)
    if p.crowd is not None:
        changes["crowd_boxes"] = shifted(p.crowd.boxes)
        if p.crowd.mask is not None:
            changes["crowd_mask"] = moved(p.crowd.mask)
        if p.crowd.masks is not None:
            changes["crowd_masks"] = moved(p.crowd.masks)
    return _with(sample, **changes)
