"""The COCO datasets a server mixes batches from, loaded once at startup.

Each dataset is read by :class:`detmix.coco.CocoDetectionSource` (its image decoding, size check
and path guard), and its records go through the same validation as a client's batch. What does
not pass is left out and counted, never served and never silently: the log names it and
``GET /v1/datasets`` reports the counts. Left out are images whose ``file_name`` leads outside
the image folder (``..``, an absolute path, a symlink out), is missing or is larger than the
pixel limit, and annotations that are invalid.

Only image ids from a dataset's index are ever read. This module is the store: it loads and reads;
a batch drawn from a dataset goes through the one request pipeline of :mod:`detmix_service.jobs`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import ValidationError

from detmix.coco import CocoDetectionSource
from detmix.synthetic import default_dataset
from detmix_service.cocoio import CocoAnnotation, CocoCategory, CocoImage, Limits, check_annotation
from detmix_service.errors import DatasetUnreadable
from detmix_service.schemas import DatasetInfo
from detmix_service.settings import SYNTHETIC, Settings

__all__ = [
    "Dataset", "DatasetError", "load_dataset", "load_datasets", "served_datasets",
]

logger = logging.getLogger(__name__)

#: What reading a dataset image may raise when its file changed under the server: Pillow raises
#: OSError (UnidentifiedImageError), SyntaxError from some parsers, the decompression bomb error
#: and warning (the server turns the warning into an error).
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)


class DatasetError(RuntimeError):
    """A configured dataset cannot be loaded at all (the server does not start)."""


@dataclass
class Dataset:
    name: str
    source: CocoDetectionSource
    masks: bool
    images: dict[int, CocoImage] = field(default_factory=dict)  # served images, by id
    annotations: dict[int, tuple[CocoAnnotation, ...]] = field(default_factory=dict)
    categories: tuple[CocoCategory, ...] = ()
    excluded_images: int = 0
    excluded_annotations: int = 0
    index: dict[int, int] = field(default_factory=dict)  # image id -> index in the source

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name,
            images=len(self.images),
            annotations=sum(len(a) for a in self.annotations.values()),
            categories=list(self.categories),
            masks=self.masks,
            excluded_images=self.excluded_images,
            excluded_annotations=self.excluded_annotations,
        )

    def read(self, image_id: int) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 pixels of a served image. Its header is checked against its
        record before any pixel is decoded: a file changed since the start (another size, a
        decompression bomb, something that is no image) is :class:`DatasetUnreadable`."""
        record = self.images[image_id]
        try:
            with Image.open(self.source.image_path(record.file_name)) as file:
                if file.size != (record.width, record.height):
                    raise ValueError(f"the file is {file.size[0]}x{file.size[1]}, the record {record.width}x"
                                     f"{record.height}")
            return self.source[self.index[image_id]]["image"]
        except UNREADABLE as error:
            logger.error("dataset %s: image %d (%s) cannot be read: %s: %s", self.name, image_id, record.file_name,
                         type(error).__name__, error)
            raise DatasetUnreadable(f"dataset {self.name!r}: image {image_id} cannot be read on the server") from None


def _warn(dataset: str, what: str, items: list[str]) -> None:
    if items:
        shown = "; ".join(items[:5]) + (f"; and {len(items) - 5} more" if len(items) > 5 else "")
        logger.warning("dataset %s: left out %d %s: %s", dataset, len(items), what, shown)


def load_dataset(name: str, annotations: Path, images: Path, *, masks: bool, limits: Limits) -> Dataset:
    """Read and check one COCO dataset (see the module docstring)."""
    try:
        source = CocoDetectionSource(annotations, images, masks=False, min_box_size=0.0)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise DatasetError(f"dataset {name!r} ({annotations}) cannot be loaded: {error}") from error
    dataset = Dataset(name, source, masks, index={i: k for k, i in enumerate(source.image_ids)})
    raw: dict[str, Any] = source.coco.dataset
    try:
        dataset.categories = tuple(CocoCategory.model_validate(c) for c in raw.get("categories", []))
    except ValidationError as error:
        raise DatasetError(f"dataset {name!r}: invalid categories: {error}") from error
    category_ids = {c.id for c in dataset.categories}

    bad_images: list[str] = []
    for image_id in source.image_ids:
        info = source.coco.imgs[image_id]
        try:
            record = CocoImage.model_validate(info)
            path = source.image_path(record.file_name)  # the core's guard: refuses ../, absolute, symlink out
        except (ValidationError, ValueError) as error:
            bad_images.append(f"image {image_id}: {str(error).splitlines()[0]}")
            continue
        if not path.is_file():
            bad_images.append(f"image {image_id}: {record.file_name!r} is not a file")
        elif record.width * record.height > limits.max_image_pixels:
            bad_images.append(f"image {image_id}: {record.width}x{record.height} is over max_image_pixels")
        else:
            dataset.images[image_id] = record

    bad_annotations: list[str] = []
    for image_id, record in dataset.images.items():
        kept = []
        for ann in source.coco.imgToAnns.get(image_id, []):
            try:
                annotation = CocoAnnotation.model_validate(ann)
            except ValidationError as error:
                first = error.errors(include_url=False)[0]
                where = ".".join(str(part) for part in first["loc"])
                bad_annotations.append(f"annotation {ann.get('id')!r}: {where}: {first['msg']}")
                continue
            problems = check_annotation(annotation, record, [])
            if annotation.category_id not in category_ids:
                problems.append({"msg": f"annotation {annotation.id}: unknown category_id {annotation.category_id}"})
            if problems:
                bad_annotations.append(problems[0]["msg"])
            else:
                kept.append(annotation)
        dataset.annotations[image_id] = tuple(kept)
    dataset.excluded_images, dataset.excluded_annotations = len(bad_images), len(bad_annotations)
    _warn(name, "images", bad_images)
    _warn(name, "annotations", bad_annotations)
    logger.info("dataset %s: %d images, %d annotations from %s", name, len(dataset.images),
                sum(len(a) for a in dataset.annotations.values()), annotations)
    return dataset


def served_datasets(datasets: dict[str, Dataset], settings: Settings) -> tuple[dict[str, Dataset], list[str]]:
    """The datasets that serve at least one image, and the names of those that serve none. A
    configured dataset serving no image stops the start (:class:`DatasetError`, naming why)
    unless ``settings.allow_empty_datasets``; an empty one is never offered (the embedded one
    neither, when limits leave all its images out)."""
    empty = [name for name, dataset in datasets.items() if not dataset.images]
    configured = [name for name in empty if name in settings.datasets]
    if configured and not settings.allow_empty_datasets:
        reasons = []
        for name in configured:
            config = settings.datasets.get(name)
            dataset = datasets[name]
            if config is not None and not config.images.is_dir():
                why = f"its images folder {str(config.images)!r} is not a folder"
            else:
                why = f"all {dataset.excluded_images} of its images were left out (see the warnings above)"
            reasons.append(f"dataset {name!r} serves no image: {why}")
        raise DatasetError("; ".join(reasons) + "; fix its configuration or set allow_empty_datasets to start anyway")
    for name in empty:
        logger.warning("dataset %s serves no image: not offered", name)
    return {name: dataset for name, dataset in datasets.items() if dataset.images}, empty


def load_datasets(settings: Settings, limits: Limits) -> dict[str, Dataset]:
    """The embedded synthetic dataset (as ``synthetic``) and every dataset of the settings."""
    synthetic = default_dataset(settings.data_dir)
    datasets = {SYNTHETIC: load_dataset(SYNTHETIC, synthetic.train_annotations, synthetic.train_images,
                                        masks=True, limits=limits)}
    for name, config in settings.datasets.items():
        if name == SYNTHETIC:
            raise DatasetError(f"dataset name {SYNTHETIC!r} is taken by the embedded dataset; choose another")
        datasets[name] = load_dataset(name, config.annotations, config.images, masks=config.masks, limits=limits)
    return datasets
