"""Reading a COCO "instances" folder as detmix samples.

:class:`CocoDetectionSource` is a map-style dataset (``len(source)``, ``source[i]``) over a COCO
annotation file and its image folder: COCO 2017 itself, or the synthetic dataset of
:mod:`detmix.synthetic`. Each item is a detmix sample::

    {"image": (H, W, 3) uint8 RGB, "boxes": (N, 4) float32 xyxy, "labels": (N,) int64,
     "masks": (N, H, W) uint8,            # when masks=True
     "ids": (N,) int64, "area": (N,) float32, "iscrowd": (N,) int64,
     "crowd_boxes": (M, 4) float32 xyxy, "crowd_mask": (H, W) uint8,   # crowd_mask when masks=True
     "image_id": int, "file_name": str}

Crowd annotations are regions to ignore, not objects: they stay out of ``boxes`` and come as
``crowd_boxes`` and the union ``crowd_mask``. A box that pokes out of its image by at most
:data:`BOX_OVERSHOOT` (1 px, the rounding of COCO exports) is clipped onto it and counted in
:attr:`CocoDetectionSource.clipped`; one farther out is left out, counted in
:attr:`CocoDetectionSource.refused` and logged (the service refuses it with a 422: one rule). Boxes
narrower or shorter than ``min_box_size`` are left out and counted in
:attr:`CocoDetectionSource.skipped`.

pycocotools is needed (``pip install "detmix[coco]"``); it is imported when a source is built.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import operator
import os
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from detmix.rle import decode_rle

__all__ = ["BOX_OVERSHOOT", "CocoDetectionSource", "annotations_to_target", "box_overshoot", "decode_masks"]

logger = logging.getLogger(__name__)

#: How far (pixels) a COCO ``[x, y, w, h]`` box may poke out of its image and still be clipped
#: onto it (``x + w = 640.01`` on a 640 px image is common rounding in COCO exports); farther
#: out it is an error of the annotation. The one threshold of every face.
BOX_OVERSHOOT = 1.0


def box_overshoot(bbox: Sequence[float], width: float, height: float) -> float:
    """How far (pixels, >= 0) the COCO box ``[x, y, w, h]`` reaches outside a ``width x height``
    image: 0 for a box inside it."""
    x, y, w, h = (float(v) for v in bbox)
    return max(0.0, -x, -y, x + w - width, y + h - height)


class CocoDetectionSource:
    """A COCO annotation file and image folder as a sequence of detmix samples.

    Args:
        annotation_file (str or PathLike): COCO instances JSON.
        image_dir (str or PathLike): folder that the images' ``file_name`` are relative to. A
            ``file_name`` that leads outside it (``..``, an absolute path, a symlink out) is
            refused with ``ValueError`` and never opened.
        masks (bool): decode instance masks (``masks`` and ``crowd_mask``). Default True.
        image_ids (sequence of int, optional): the images to serve, in this order. Default: all
            images of the file, sorted by id.
        min_box_size (float): boxes whose clipped width or height is below this many pixels are
            left out, with their masks; :attr:`skipped` counts them per image id. Default 1.0.

    Attributes:
        coco (pycocotools.coco.COCO): the loaded annotations.
        image_ids (tuple of int): the image id of each index.
        skipped (dict of int to int): image id -> number of annotations left out by
            ``min_box_size``, for the images that lost any.
        clipped (dict of int to int): image id -> number of boxes clipped onto the image (they
            poked out by at most :data:`BOX_OVERSHOOT`), for the images that had any.
        refused (dict of int to list of int): image id -> ids of the annotations left out because
            their box pokes farther out (logged as a warning).
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike[str],
        image_dir: str | os.PathLike[str],
        *,
        masks: bool = True,
        image_ids: Any = None,
        min_box_size: float = 1.0,
    ) -> None:
        try:
            from pycocotools.coco import COCO
        except ImportError as error:
            raise ImportError(
                'CocoDetectionSource needs pycocotools; install it with pip install "detmix[coco]"'
            ) from error
        for name, value in (("annotation_file", annotation_file), ("image_dir", image_dir)):
            if not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"{name} must be a str or os.PathLike, got {type(value).__name__}")
        if not isinstance(masks, bool):
            raise TypeError(f"masks must be a bool, got {type(masks).__name__}")
        if (
            isinstance(min_box_size, bool)
            or not isinstance(min_box_size, (int, float))
            or not math.isfinite(min_box_size)
            or min_box_size < 0
        ):
            raise ValueError(f"min_box_size must be a finite number >= 0, got {min_box_size!r}")

        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.masks = masks
        self.min_box_size = float(min_box_size)

        with open(self.annotation_file, encoding="utf-8") as file:
            dataset = json.load(file)
        if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
            raise ValueError(
                f"annotation_file {str(self.annotation_file)!r} must hold a COCO dict with an 'images' list"
            )
        self.coco = COCO()
        self.coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
            self.coco.createIndex()

        if image_ids is None:
            self.image_ids = tuple(sorted(self.coco.imgs))
        else:
            self.image_ids = _as_id_tuple(image_ids)
            unknown = [i for i in self.image_ids if i not in self.coco.imgs]
            if unknown:
                raise ValueError(
                    f"image_ids must be ids of images in {self.annotation_file.name}, got unknown ids {unknown[:10]}"
                    + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
                )

        self.skipped: dict[int, int] = {}
        self.clipped: dict[int, int] = {}
        self.refused: dict[int, list[int]] = {}
        self._targets = {image_id: self._boxes_of(image_id) for image_id in dict.fromkeys(self.image_ids)}
        if self.clipped:
            logger.info(
                "%s: clipped %d boxes that poked out of their image by at most %g px, in %d images",
                self.annotation_file.name, sum(self.clipped.values()), BOX_OVERSHOOT, len(self.clipped),
            )
        if self.refused:
            ids = [i for anns in self.refused.values() for i in anns]
            logger.warning(
                "%s: left out %d annotations whose box pokes more than %g px out of its image (ids %s%s)",
                self.annotation_file.name, len(ids), BOX_OVERSHOOT, ids[:5], " ..." if len(ids) > 5 else "",
            )
        if self.skipped:
            logger.info(
                "%s: left out %d annotations under min_box_size=%g in %d images",
                self.annotation_file.name,
                sum(self.skipped.values()),
                self.min_box_size,
                len(self.skipped),
            )

    @property
    def category_names(self) -> dict[int, str]:
        """Category id -> name, by id."""
        return {i: self.coco.cats[i]["name"] for i in self.category_ids}

    @property
    def category_ids(self) -> tuple[int, ...]:
        """The category ids, sorted."""
        return tuple(sorted(self.coco.cats))

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(f"index must be an int, got {type(index).__name__}") from None
        if not -len(self) <= index < len(self):
            raise IndexError(f"index must be in [{-len(self)}, {len(self)}), got {index}")
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        height, width = int(info["height"]), int(info["width"])
        path = self.image_path(info.get("file_name"))
        with Image.open(path) as file:
            image = np.array(file.convert("RGB"), dtype=np.uint8)
        if image.shape[:2] != (height, width):
            raise ValueError(
                f"image {info['file_name']!r} is {image.shape[1]}x{image.shape[0]} (width x height) but "
                f"{self.annotation_file.name} says {width}x{height}"
            )

        target = self._targets[image_id]
        sample: dict[str, Any] = {"image": image}
        sample["boxes"] = target["boxes"].copy()
        sample["labels"] = target["labels"].copy()
        if self.masks:
            sample["masks"] = self._masks(target["anns"], height, width)
        sample["ids"] = target["ids"].copy()
        sample["area"] = target["area"].copy()
        sample["iscrowd"] = np.zeros(len(target["ids"]), dtype=np.int64)
        sample["crowd_boxes"] = target["crowd_boxes"].copy()
        if self.masks:
            crowd = self._masks(target["crowd_anns"], height, width)
            sample["crowd_mask"] = crowd.max(axis=0) if len(crowd) else np.zeros((height, width), np.uint8)
        sample["image_id"] = int(image_id)
        sample["file_name"] = str(info["file_name"])
        return sample

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(annotation_file={str(self.annotation_file)!r}, "
            f"image_dir={str(self.image_dir)!r}, images={len(self)}, masks={self.masks})"
        )

    def image_path(self, file_name: Any) -> Path:
        """``image_dir / file_name``, refused with ``ValueError`` when it leads outside ``image_dir``
        (``..``, an absolute path, a symlink out): the one path guard, also used by the service."""
        if not isinstance(file_name, str) or not file_name:
            raise ValueError(f"image file_name must be a non-empty str, got {file_name!r}")
        if Path(file_name).is_absolute():
            raise ValueError(f"image file_name {file_name!r} must be relative to image_dir, got an absolute path")
        root = self.image_dir.resolve()
        path = (root / file_name).resolve()
        if not path.is_relative_to(root):
            raise ValueError(
                f"image file_name {file_name!r} resolves to {str(path)!r}, outside image_dir {str(root)!r}; "
                "refusing to read it"
            )
        return path

    def _boxes_of(self, image_id: int) -> dict[str, Any]:
        """The boxes and per-box values of one image (from the JSON only)."""
        info = self.coco.imgs[image_id]
        target = annotations_to_target(
            self.coco.imgToAnns.get(image_id, []), int(info["height"]), int(info["width"]),
            min_box_size=self.min_box_size,
        )
        if target["skipped"]:
            self.skipped[image_id] = target["skipped"]
        if target["clipped"]:
            self.clipped[image_id] = target["clipped"]
        if target["refused"]:
            self.refused[image_id] = target["refused"]
        return target

    def _masks(self, anns: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
        return decode_masks(anns, height, width)


def annotations_to_target(
    annotations: Sequence[Any], height: int, width: int, *, min_box_size: float = 1.0
) -> dict[str, Any]:
    """The COCO annotation dicts of one image as detmix arrays: boxes clipped to the image and
    turned to xyxy, crowd annotations apart, boxes narrower or shorter than ``min_box_size`` left
    out and counted. The one place these rules live (CocoDetectionSource and the datasets of
    :mod:`detmix.datasets` both use it).

    Returns a dict with ``boxes`` (N, 4) float32, ``labels``, ``ids`` (N,) int64, ``area`` (N,)
    float32, ``anns`` (the kept annotation dicts), ``crowd_boxes`` (M, 4) float32, ``crowd_anns``,
    ``skipped`` (how many were left out by ``min_box_size``), ``clipped`` (how many boxes were
    clipped onto the image, by at most :data:`BOX_OVERSHOOT`) and ``refused`` (the ids of the
    annotations left out for reaching farther out).
    """
    keep, crowd, skipped, clipped, refused = [], [], 0, 0, []
    for k, ann in enumerate(annotations):
        bbox = ann.get("bbox") if isinstance(ann, Mapping) else None
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            name = ann.get("id", k) if isinstance(ann, Mapping) else k
            raise ValueError(f"annotation {name!r} must be a COCO dict with bbox [x, y, w, h], got {ann!r:.80}")
        x, y, w, h = (float(v) for v in bbox)
        overshoot = box_overshoot(bbox, width, height)
        if overshoot > BOX_OVERSHOOT:
            refused.append(ann.get("id", k))
            continue
        clipped += overshoot > 0
        x1, x2 = np.clip([x, x + w], 0.0, float(width)).tolist()
        y1, y2 = np.clip([y, y + h], 0.0, float(height)).tolist()
        box = [x1, y1, x2, y2]
        if ann.get("iscrowd", 0):
            crowd.append((ann, box))
        elif x2 - x1 < min_box_size or y2 - y1 < min_box_size:
            skipped += 1
        else:
            keep.append((ann, box))
    return {
        "anns": [ann for ann, _ in keep],
        "boxes": np.array([box for _, box in keep], dtype=np.float32).reshape(-1, 4),
        "labels": np.array([ann["category_id"] for ann, _ in keep], dtype=np.int64),
        "ids": np.array([ann.get("id", -1) for ann, _ in keep], dtype=np.int64),
        "area": np.array([ann.get("area", 0.0) for ann, _ in keep], dtype=np.float32),
        "crowd_anns": [ann for ann, _ in crowd],
        "crowd_boxes": np.array([box for _, box in crowd], dtype=np.float32).reshape(-1, 4),
        "skipped": skipped,
        "clipped": int(clipped),
        "refused": refused,
    }


def decode_masks(annotations: Sequence[Mapping[str, Any]], height: int, width: int) -> np.ndarray:
    """Polygons / RLE of COCO annotations -> (N, H, W) uint8, read as pycocotools' ``annToRLE``
    reads them (polygons merged, uncompressed RLE compressed) and decoded by
    :func:`detmix.rle.decode_rle` (pycocotools' own decode warns under numpy 2)."""
    masks = np.zeros((len(annotations), height, width), dtype=np.uint8)
    if not annotations:
        return masks
    from pycocotools import mask as mask_utils

    for k, ann in enumerate(annotations):
        segmentation = ann.get("segmentation")
        if segmentation is None:
            raise ValueError(f"annotation {ann.get('id')!r} has no segmentation; pass masks=False to read boxes only")
        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        decode_rle(rle, out=masks[k])
    return masks


def _as_id_tuple(image_ids: Any) -> tuple[int, ...]:
    if isinstance(image_ids, (str, bytes)):
        raise TypeError(f"image_ids must be a sequence of ints, got {type(image_ids).__name__}")
    try:
        ids = list(image_ids)
    except TypeError:
        raise TypeError(f"image_ids must be a sequence of ints, got {type(image_ids).__name__}") from None
    result = []
    for value in ids:
        if isinstance(value, bool):
            raise TypeError(f"image_ids must hold ints, got {value!r}")
        try:
            result.append(operator.index(value))
        except TypeError:
            raise TypeError(f"image_ids must hold ints, got {value!r}") from None
    return tuple(result)
