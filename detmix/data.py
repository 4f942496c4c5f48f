"""The embedded default dataset: synthetic shapes written as a real COCO "instances" dataset.

A fresh machine has no COCO download, yet the demo, the REST service and the training script need
images with boxes and instance masks. :func:`make_synthetic_coco` draws them: squares, discs,
triangles and stars in flat colours on smooth, slightly noisy backgrounds, and writes::

    root/annotations/instances_train.json    root/train/000001.png ...
    root/annotations/instances_val.json      root/val/000001.png ...

The files are what pycocotools (``COCO``, ``COCOeval`` with ``bbox`` and ``segm``) and
torchvision's ``CocoDetection`` expect. Shapes may overlap; an occluded shape is annotated with its
visible part only, and a shape that would hide more than 80% of an earlier one (or leave it under
16 pixels) is not drawn, so every painted pixel belongs to exactly one annotation. Each
segmentation is a compressed COCO RLE, ``area`` is its pixel count and ``bbox`` its tight box, and
the image pixels of a shape are exactly its mask's pixels. Sizes span COCO's small, medium and
large buckets.

:func:`default_dataset` generates the default dataset once into a cache directory and reuses it.
:func:`encode_rle` (:func:`encode_rles` for a stack of masks) and :func:`decode_rle` are numpy
versions of pycocotools' compressed RLE, vectorised, for code that must run without pycocotools.

All randomness comes from ``np.random.default_rng(seed)``: the same arguments give byte-identical
files. This module needs numpy and Pillow only.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import operator
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "CATEGORIES",
    "SyntheticCoco",
    "decode_rle",
    "default_dataset",
    "encode_rle",
    "encode_rles",
    "make_synthetic_coco",
]

#: The four COCO categories of the synthetic dataset.
CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 2, "name": "disc", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
)

#: Bump when the generator's output changes; the default cache directory carries it.
VERSION = 1
_MANIFEST = "MANIFEST.json"
_DEFAULTS: dict[str, Any] = {
    "num_train": 48,
    "num_val": 16,
    "image_size": [240, 320],
    "seed": 0,
    "max_objects": 6,
}

_MIN_VISIBLE_PIXELS = 16
_MIN_VISIBLE_FRACTION = 0.2
# Target shape areas in pixels, drawn per COCO size bucket (small < 32**2 <= medium < 96**2 <= large).
_AREA_BUCKETS = ((60.0, 900.0), (1300.0, 8000.0), (11000.0, 22000.0))
_BUCKET_PROBABILITIES = (0.4, 0.4, 0.2)


@dataclass(frozen=True)
class SyntheticCoco:
    """Where a synthetic COCO dataset lies: its root, and per split the annotation file and image folder."""

    root: Path
    train_annotations: Path
    train_images: Path
    val_annotations: Path
    val_images: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> SyntheticCoco:
        """The layout of the dataset written by :func:`make_synthetic_coco` into ``root``."""
        root = Path(root)
        return cls(
            root=root,
            train_annotations=root / "annotations" / "instances_train.json",
            train_images=root / "train",
            val_annotations=root / "annotations" / "instances_val.json",
            val_images=root / "val",
        )


# --------------------------------------------------------------------------------------------
# Compressed RLE (pycocotools' common/maskApi.c: rleEncode, rleToString, rleFrString, rleDecode)
# --------------------------------------------------------------------------------------------


def encode_rle(mask: Any) -> dict[str, Any]:
    """Encode a binary mask as a COCO compressed RLE, as ``pycocotools.mask.encode`` does.

    Args:
        mask (array-like): (H, W) bool or integer mask; non-zero pixels are foreground.

    Returns:
        dict: ``{"size": [H, W], "counts": str}``, the same counts string as pycocotools (which
        returns it as bytes), ready for JSON.
    """
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got shape {array.shape}")
    _check_mask_dtype(array, "mask")
    return _encode(array[None])[0]


def encode_rles(masks: Any) -> list[dict[str, Any]]:
    """:func:`encode_rle` of each of a stack of masks, computed for all of them at once.

    Args:
        masks (array-like): (N, H, W) bool or integer masks; non-zero pixels are foreground.

    Returns:
        list of dict: N times ``{"size": [H, W], "counts": str}``, as :func:`encode_rle` gives.
    """
    array = np.asarray(masks)
    if array.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got shape {array.shape}")
    _check_mask_dtype(array, "masks")
    return _encode(array)


def decode_rle(rle: dict[str, Any], out: np.ndarray | None = None) -> np.ndarray:
    """Decode a COCO RLE to a mask, as ``pycocotools.mask.decode`` does.

    Args:
        rle (dict): ``{"size": [H, W], "counts": ...}`` with compressed counts (str or bytes, as
            written by :func:`encode_rle` and pycocotools) or uncompressed counts (a list of run
            lengths, as in COCO's crowd annotations).
        out (np.ndarray, optional): (H, W) uint8 array to write the mask into, e.g. one row of a
            stack of masks (saves a copy).

    Returns:
        np.ndarray: (H, W) uint8 mask of 0 and 1 (``out`` when given).
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise TypeError(f"rle must be a dict with 'size' and 'counts', got {_describe(rle)}")
    size = rle["size"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(_is_int(v) and v >= 0 for v in size)
    ):
        raise ValueError(f"rle['size'] must be [height, width] of non-negative ints, got {size!r}")
    height, width = int(size[0]), int(size[1])
    if out is not None and (not isinstance(out, np.ndarray) or out.shape != (height, width) or out.dtype != np.uint8):
        raise ValueError(f"out must be a {height}x{width} uint8 numpy array, got {_describe(out)}")
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        runs = _string_to_counts(counts, limit=height * width)
        total = int(runs.sum())
    elif isinstance(counts, (list, tuple)) and all(_is_int(v) and v >= 0 for v in counts):
        runs = [int(v) for v in counts]
        total = sum(runs)
    else:
        raise TypeError(
            f"rle['counts'] must be a compressed string or a list of non-negative ints, got {_describe(counts)}"
        )
    if total != height * width:
        raise ValueError(
            f"rle['counts'] must cover the {height}x{width} mask ({height * width} pixels), "
            f"got runs summing to {total}"
        )
    values = np.arange(len(runs), dtype=np.uint8) % 2  # runs alternate 0, 1, 0, ...
    columns = np.repeat(values, np.asarray(runs, dtype=np.int64)).reshape(width, height)  # column-major
    if out is None:
        return np.ascontiguousarray(columns.T)
    out[...] = columns.T
    return out


def _check_mask_dtype(array: np.ndarray, name: str) -> None:
    if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"{name} must be bool or integer, got dtype {array.dtype}")


def _encode(masks: np.ndarray) -> list[dict[str, Any]]:
    """:func:`encode_rles` of checked (N, H, W) masks: the runs of every mask from where its
    pixels change, found with whole-stack comparisons in the masks' own (row-major) layout."""
    count, height, width = masks.shape
    area = height * width
    binary = (
        masks.dtype == np.bool_
        or masks.size == 0
        or (masks.max() <= 1 and (masks.dtype.kind == "u" or masks.min() >= 0))
    )
    on = masks if binary else masks != 0  # 0/1 masks are compared as they are
    # COCO numbers pixel (y, x) x * H + y (column-major). A run starts at every pixel that
    # differs from the one before it in that order: the pixel above, for y = 0 the bottom pixel
    # of the previous column, for the first pixel the background (a first run of length 0).
    # Mask k's pixels are numbers k * H * W + ..., so the runs of all masks come out of one sort.
    starts = [np.arange(count + 1, dtype=np.int64) * area]  # where each mask starts, and the end
    if area:
        inner = np.flatnonzero(on[:, 1:, :] != on[:, :-1, :])  # (N, H - 1, W), row-major
        k, rest = np.divmod(inner, max((height - 1) * width, 1))
        y, x = np.divmod(rest, width)
        starts.append(k * area + x * height + y + 1)
        top = np.flatnonzero(on[:, 0, 1:] != on[:, -1, :-1])  # (N, W - 1)
        k, x = np.divmod(top, max(width - 1, 1))
        starts.append(k * area + (x + 1) * height)
        starts.append(np.flatnonzero(on[:, 0, 0]) * area)
    edges = np.sort(np.concatenate(starts))
    counts = np.diff(edges)  # the runs of mask 0, then of mask 1, ...
    owner = edges[:-1] // area if area else np.arange(count)
    first = np.concatenate(([0], np.cumsum(np.bincount(owner, minlength=count))))
    strings = _counts_to_strings(counts, first)
    return [{"size": [int(height), int(width)], "counts": text} for text in strings]


def _counts_to_strings(counts: np.ndarray, first: np.ndarray) -> list[str]:
    """rleToString of several masks at once: mask k's runs are ``counts[first[k]:first[k + 1]]``."""
    # From a mask's fourth run on, the run minus the run two before it is written.
    index = np.arange(len(counts)) - np.repeat(first[:-1], np.diff(first))
    values = counts.copy()
    values[2:] -= np.where(index[2:] > 2, counts[:-2], 0)
    # Each value is written 5 bits a character, least significant first, in as few characters as
    # hold it as a signed number (bit length // 5 + 1), in ASCII 48..111; bit 0x20 says another
    # character follows.
    magnitude = np.where(values < 0, ~values, values)
    length = np.frexp(magnitude.astype(np.float64))[1].astype(np.int64) // 5 + 1
    value = np.repeat(np.arange(len(values)), length)
    end = np.cumsum(length)
    place = np.arange(len(value)) - np.repeat(end - length, length)
    chars = (values[value] >> 5 * place) & 0x1F | np.where(place < length[value] - 1, 0x20, 0)
    text = (chars + 48).astype(np.uint8).tobytes().decode("ascii")
    bounds = np.concatenate(([0], end))[first].tolist()
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _string_to_counts(string: str, limit: int | None = None) -> np.ndarray:
    """rleFrString, all characters at once, refusing what the C code would misread: the runs
    (int64, or Python ints where they would not fit) with the error the first bad value,
    character or the end of the string calls for, in reading order.

    With ``limit`` (the mask's pixel count) the reading stops at the first value that cannot be
    part of such a mask (over 12 characters, or a change of more than ``limit``) and at the first
    run that takes the runs' sum past ``limit``, each with its error: time and memory stay linear
    in the string's length (Python ints are never needed)."""
    if string.isascii():
        chars = np.frombuffer(string.encode("ascii"), dtype=np.uint8).astype(np.int16) - 48  # '0'..'o' -> 0..63
    else:
        chars = (np.frombuffer(string.encode("utf-32-le"), dtype=np.uint32) - np.uint32(48)).view(np.int32)
    bad = len(chars) if not len(chars) or (chars.min() >= 0 and chars.max() < 64) else int(
        np.argmax((chars < 0) | (chars >= 64)))
    ends = np.flatnonzero(chars[:bad] < 32)  # the last character of each value read: bit 0x20 clear
    if limit is not None and (runs := _bounded_runs(string, chars, bad, ends, limit)) is not None:
        return runs
    chars = chars.astype(np.uint32)
    runs = _runs(chars, ends, np.int64)
    if runs is None:
        runs = _runs(chars, ends, object)
    if len(runs) and runs.min() < 0:
        i = int(np.argmax(runs < 0))
        raise ValueError(f"rle['counts'] decodes to a negative run ({runs[i]}) at run {i}")
    if bad < len(chars):
        raise ValueError(f"rle['counts'] must use characters '0'..'o', got {string[bad]!r} at {bad}")
    if len(chars) and chars[-1] >= 32:
        raise ValueError("rle['counts'] is cut short: its last character announces one more")
    return runs


def _bounded_runs(string: str, chars: np.ndarray, bad: int, ends: np.ndarray, limit: int) -> np.ndarray | None:
    """:func:`_string_to_counts` for a mask of ``limit`` pixels (``chars``: the characters minus
    48, ``bad``: the first one outside '0'..'o', ``ends``: where each value ends); None when
    ``limit`` is too large for int64 sums."""
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else ends
    long = np.flatnonzero(ends + 1 - starts > 12)
    read = int(long[0]) if len(long) else len(ends)  # values from the first one over 12 characters are not read
    values = _runs(chars, ends[:read], np.int64, accumulate=False)  # |value| < 2**60
    # Runs of such a mask are 0..limit, so a value (a run, or a run minus the run two before it)
    # beyond +-limit gives a run out of 0..limit by its index at the latest: read up to it.
    far = np.flatnonzero(np.abs(values) > limit)
    if len(far):
        values = values[: int(far[0]) + 1]
    if len(values) * float(limit) >= 2.0**61:
        return None
    values[1::2] = np.cumsum(values[1::2])
    values[2::2] = np.cumsum(values[2::2])
    runs = values
    negative = np.flatnonzero(runs < 0)
    past = np.flatnonzero(np.cumsum(np.maximum(runs, 0)) > limit)
    first_negative = int(negative[0]) if len(negative) else len(runs)
    first_past = int(past[0]) if len(past) else len(runs)
    if first_negative < first_past:
        raise ValueError(f"rle['counts'] decodes to a negative run ({runs[first_negative]}) at run {first_negative}")
    if first_past < len(runs):
        raise ValueError(
            f"rle['counts'] runs pass the mask's {limit} pixels at run {first_past} (ending at character "
            f"{int(ends[first_past])})"
        )
    if read < len(ends):
        raise ValueError(
            f"rle['counts'] value {read} (characters {int(starts[read])}..{int(ends[read])}) is longer than the 12 "
            "characters a 64-bit run can take"
        )
    if bad < len(chars):
        raise ValueError(f"rle['counts'] must use characters '0'..'o', got {string[bad]!r} at {bad}")
    if len(chars) and chars[-1] >= 32:
        raise ValueError("rle['counts'] is cut short: its last character announces one more")
    return runs


def _runs(chars: np.ndarray, ends: np.ndarray, dtype: Any, accumulate: bool = True) -> np.ndarray | None:
    """The runs of the values ending at ``ends``, computed in ``dtype``; None when int64 could
    overflow (values of over 12 characters, or sums that could pass 2**62)."""
    if len(ends) == 0:
        return np.zeros(0, dtype=dtype)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends + 1 - starts
    if dtype is not object and lengths.max() > 12:
        return None
    used = chars[: ends[-1] + 1]
    place = np.arange(len(used)) - np.repeat(starts, lengths)
    # 5 bits a character, least significant first. Bit 0x10 of the last one is the sign: C ORs
    # -1 << 5k into a value below 2**5k, which is subtracting 2**5k.
    values = np.add.reduceat((used & 0x1F).astype(dtype) << (5 * place).astype(dtype), starts)
    values -= (used[ends] >= 16).astype(dtype) << (5 * lengths).astype(dtype)
    if not accumulate:
        return values
    if dtype is not object and len(values) * float(np.abs(values).sum(dtype=np.float64)) >= 2.0**62:
        return None
    # From the fourth run on, a value is the run minus the run two before it.
    values[1::2] = np.cumsum(values[1::2])
    values[2::2] = np.cumsum(values[2::2])
    return values


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def make_synthetic_coco(
    root: str | os.PathLike[str],
    *,
    num_train: int = 48,
    num_val: int = 16,
    image_size: tuple[int, int] = (240, 320),
    seed: int = 0,
    max_objects: int = 6,
) -> SyntheticCoco:
    """Write a synthetic COCO instances dataset of shapes into ``root``.

    Files of the same names already in ``root`` are overwritten. The train and val splits draw
    from independent generators spawned from ``seed``, so changing ``num_train`` leaves the val
    split as it was.

    Args:
        root (str or PathLike): folder to write into; created if missing.
        num_train (int): number of training images, at least 1.
        num_val (int): number of validation images, at least 1.
        image_size (tuple of int): (height, width) of every image, each at least 32.
        seed (int): non-negative seed; the same arguments give byte-identical files.
        max_objects (int): most shapes drawn on one image (each image gets 1 to ``max_objects``).

    Returns:
        SyntheticCoco: the paths of the annotation files and image folders.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str or os.PathLike, got {_describe(root)}")
    _check_int("num_train", num_train, 1)
    _check_int("num_val", num_val, 1)
    _check_int("seed", seed, 0)
    _check_int("max_objects", max_objects, 1)
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(_is_int(v) and v >= 32 for v in image_size)
    ):
        raise ValueError(f"image_size must be (height, width) with ints >= 32, got {image_size!r}")
    height, width = int(image_size[0]), int(image_size[1])

    layout = SyntheticCoco.at(root)
    layout.train_annotations.parent.mkdir(parents=True, exist_ok=True)
    train_seed, val_seed = np.random.SeedSequence(seed).spawn(2)
    splits = (
        (num_train, train_seed, layout.train_annotations, layout.train_images, "train"),
        (num_val, val_seed, layout.val_annotations, layout.val_images, "val"),
    )
    for count, split_seed, annotation_file, image_dir, split in splits:
        rng = np.random.default_rng(split_seed)
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            pixels, objects = _draw_image(rng, height, width, max_objects)
            file_name = f"{image_id:06d}.png"
            Image.fromarray(pixels).save(image_dir / file_name, format="PNG", compress_level=3)
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for category_id, mask in objects:
                annotations.append(_annotation(len(annotations) + 1, image_id, category_id, mask))
        dataset = {
            "info": {
                "description": f"detmix synthetic shapes ({split})",
                "version": str(VERSION),
                "contributor": "detmix",
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [dict(c) for c in CATEGORIES],
        }
        text = json.dumps(dataset, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        annotation_file.write_text(text + "\n", encoding="utf-8")
    return layout


def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict[str, Any]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    x, y = int(cols[0]), int(rows[0])
    w, h = int(cols[-1]) + 1 - x, int(rows[-1]) + 1 - y
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": encode_rle(mask),
        "area": int(mask.sum()),
        "bbox": [float(x), float(y), float(w), float(h)],
        "iscrowd": 0,
    }


def _draw_image(
    rng: np.random.Generator, height: int, width: int, max_objects: int
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image and its (category id, visible mask) pairs, back to front."""
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int64)  # index of the shape seen at each pixel
    shapes: list[tuple[int, tuple[int, int, int], int]] = []  # category, colour, full area
    wanted = int(rng.integers(1, max_objects + 1))
    for _ in range(20 * wanted):
        if len(shapes) == wanted:
            break
        category_id = int(rng.integers(1, len(CATEGORIES) + 1))
        full = _shape_mask(rng, category_id, height, width)
        full_area = int(full.sum())
        if full_area < _MIN_VISIBLE_PIXELS:
            continue
        candidate = np.where(full, len(shapes), owner)
        visible = np.bincount(candidate[candidate >= 0], minlength=len(shapes) + 1)
        if any(
            visible[i] < max(_MIN_VISIBLE_PIXELS, _MIN_VISIBLE_FRACTION * area)
            for i, (_, _, area) in enumerate(shapes)
        ):
            continue  # it would hide too much of an earlier shape
        colour = _colour(rng, {c for _, c, _ in shapes})
        owner = candidate
        shapes.append((category_id, colour, full_area))

    objects = []
    for i, (category_id, colour, _) in enumerate(shapes):
        mask = (owner == i).astype(np.uint8)
        image[mask == 1] = colour  # the shape's pixels are exactly its mask
        objects.append((category_id, mask))
    return image, objects


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    start, end = rng.uniform(40, 215, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    x = np.arange(width, dtype=np.float32)[None, :]
    y = np.arange(height, dtype=np.float32)[:, None]
    t = x * math.cos(angle) + y * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    period_x, period_y, phase = rng.uniform((12, 12, 0), (30, 30, 2 * math.pi))
    wave = 6.0 * np.sin(x / period_x + phase) * np.cos(y / period_y)
    image = start + (end - start) * t[..., None] + wave[..., None]
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * 3.0
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator, taken: set[tuple[int, int, int]]) -> tuple[int, int, int]:
    while True:
        hue, saturation, value = rng.uniform((0.0, 0.55, 0.45), (1.0, 1.0, 1.0))
        red, green, blue = (int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        if (red, green, blue) not in taken:
            return red, green, blue


def _shape_mask(rng: np.random.Generator, category_id: int, height: int, width: int) -> np.ndarray:
    """The full (unoccluded) mask of a random shape, clipped to the canvas."""
    bucket = int(rng.choice(len(_AREA_BUCKETS), p=_BUCKET_PROBABILITIES))
    area = min(float(rng.uniform(*_AREA_BUCKETS[bucket])), 0.3 * height * width)
    angle = float(rng.uniform(0, 2 * math.pi))
    aspect = float(rng.uniform(0.5, 1.0))
    if category_id == 1:  # rectangle, axis-aligned half of the time
        half_w = math.sqrt(area / (4 * aspect))
        half_h = half_w * aspect
        if rng.random() < 0.5:
            angle = 0.0
        local = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    elif category_id == 2:  # ellipse
        a = math.sqrt(area / (math.pi * aspect))
        turns = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        local = [(a * math.cos(t), a * aspect * math.sin(t)) for t in turns]
    elif category_id == 3:  # triangle, about equilateral
        radius = math.sqrt(area / (0.75 * math.sqrt(3)))
        turns = np.arange(3) * 2 * math.pi / 3 + rng.uniform(-0.25, 0.25, size=3)
        local = [(radius * math.cos(t), radius * math.sin(t)) for t in turns]
    else:  # five-pointed star
        inner = 0.45
        radius = math.sqrt(area / (5 * inner * math.sin(math.pi / 5)))
        radii = [radius if k % 2 == 0 else radius * inner for k in range(10)]
        local = [(r * math.cos(k * math.pi / 5), r * math.sin(k * math.pi / 5)) for k, r in enumerate(radii)]
    extent = max(math.hypot(px, py) for px, py in local)
    margin = 0.5 * min(extent, height / 2, width / 2)  # shapes may run off the edge a little
    cx = float(rng.uniform(margin, width - margin))
    cy = float(rng.uniform(margin, height - margin))
    cos, sin = math.cos(angle), math.sin(angle)
    polygon = [(cx + px * cos - py * sin, cy + px * sin + py * cos) for px, py in local]
    return _fill_polygon(polygon, height, width)


def _fill_polygon(polygon: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    """Pixels whose centres lie inside ``polygon`` (even-odd rule), as an (H, W) bool mask."""
    mask = np.zeros((height, width), dtype=bool)
    xs = [p[0] for p in polygon]
    ys = [p[1] for p in polygon]
    x0, x1 = max(int(math.floor(min(xs))), 0), min(int(math.ceil(max(xs))), width)
    y0, y1 = max(int(math.floor(min(ys))), 0), min(int(math.ceil(max(ys))), height)
    if x0 >= x1 or y0 >= y1:
        return mask
    py, px = np.mgrid[y0:y1, x0:x1] + 0.5
    inside = np.zeros(px.shape, dtype=bool)
    for (ax, ay), (bx, by) in zip(polygon, polygon[1:] + polygon[:1]):
        if ay == by:
            continue  # a horizontal edge is never crossed
        crosses = (ay > py) != (by > py)
        x_at = ax + (py - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (px < x_at)
    mask[y0:y1, x0:x1] = inside
    return mask


# --------------------------------------------------------------------------------------------
# The cached default dataset
# --------------------------------------------------------------------------------------------


def default_dataset(cache_dir: str | os.PathLike[str] | None = None) -> SyntheticCoco:
    """The default synthetic dataset, generated on first use and reused afterwards.

    The dataset (:func:`make_synthetic_coco` with its default arguments) lives in ``cache_dir``,
    else in ``$DETMIX_DATA_DIR``, else in ``~/.cache/detmix/synthetic-v1``. It counts as present
    when the folder's ``MANIFEST.json`` names this generator version and arguments and every file
    it lists has the recorded SHA-256. Otherwise the dataset is written into a temporary folder
    beside it and renamed into place, so concurrent callers never see half a dataset.

    Args:
        cache_dir (str or PathLike, optional): the dataset's folder.

    Returns:
        SyntheticCoco: the paths of the annotation files and image folders.

    Raises:
        FileExistsError: ``cache_dir`` exists, is not empty and does not hold the dataset.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("DETMIX_DATA_DIR") or Path.home() / ".cache" / "detmix" / f"synthetic-v{VERSION}"
    elif not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a str, os.PathLike or None, got {_describe(cache_dir)}")
    root = Path(cache_dir).expanduser().absolute()
    if not _is_complete(root):
        _generate_into(root)
    return SyntheticCoco.at(root)


def _generate_into(root: Path) -> None:
    _refuse_foreign(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        make_synthetic_coco(staging, **_DEFAULTS)
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        manifest = {
            "version": VERSION,
            "arguments": _DEFAULTS,
            "files": {p.relative_to(staging).as_posix(): _sha256(p) for p in files},
        }
        (staging / _MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        try:
            os.rename(staging, root)  # atomic; refused when root exists and is not empty
        except OSError as error:
            _refuse_foreign(root, error)  # else another process finished first
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refuse_foreign(root: Path, cause: OSError | None = None) -> None:
    """Raise unless ``root`` is missing, an empty folder, or a complete dataset."""
    empty = root.is_dir() and not any(root.iterdir())
    if (root.exists() or cause is not None) and not empty and not _is_complete(root):
        raise FileExistsError(
            f"cache_dir {str(root)!r} exists but does not hold a complete detmix synthetic "
            "dataset; remove it or choose another folder"
        ) from cause


def _is_complete(root: Path) -> bool:
    try:
        manifest = json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
        if manifest["version"] != VERSION or manifest["arguments"] != _DEFAULTS:
            return False
        return all(_sha256(root / name) == digest for name, digest in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"
