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
The masks are written by :mod:`detmix.rle` (numpy's compressed RLE, as pycocotools writes it).

All randomness comes from ``np.random.default_rng(seed)``: the same arguments give byte-identical
files. This module needs numpy and Pillow only.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detmix.rle import _describe, _is_int, encode_rle

__all__ = [
    "CATEGORIES",
    "SyntheticCoco",
    "default_dataset",
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


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
