"""Datasets for Albumentations pipelines that mix: partners drawn per item, and COCO as dicts.

* :class:`MixDataset` wraps any map-style dataset (``len(ds)``, ``ds[i]``) of dicts or
  ``(image, target)`` pairs, including ``torchvision.datasets.CocoDetection`` and
  :class:`detmix.coco.CocoDetectionSource`, and hands each item together with randomly drawn
  partner items under the metadata key that :mod:`detmix.albumentations` reads. Each process (each
  DataLoader worker) draws from its own generator, seeded from ``seed`` and the worker's seed.
* :class:`CocoAlbumentationsDataset` reads a COCO "instances" folder (pycocotools) as
  Albumentations-ready dicts: boxes in the chosen format, category ids, instance masks decoded from
  polygons or RLE, crowd regions kept out of the boxes but available.

>>> train = MixDataset(CocoAlbumentationsDataset("instances_train2017.json", "train2017"),
...                    transform=tf, seed=0)                                   # doctest: +SKIP
>>> loader = torch.utils.data.DataLoader(train, batch_size=8, num_workers=2,
...                                      collate_fn=list)                      # doctest: +SKIP

An item is a dict::

    {"image": (H, W, 3) uint8, "bboxes": (N, 4) float32 in bbox_format, <label_field>: (N,) int64,
     "masks": (N, H, W) uint8,                      # when masks=True
     "crowd_mask": (H, W) uint8,                    # when the source knows its crowd regions
     "image_id": int, "file_name": str}             # when known

Crowd regions (COCO ``iscrowd=1``) are never boxes: they are the mask ``crowd_mask`` (decoded from
their RLE, or their boxes' pixels when ``masks=False``). Register it as a mask target,
``A.Compose(..., additional_targets={"crowd_mask": "mask"})``, so that every transform moves it and
detmix's transforms mix it; its box is ``detmix.functional.masks_to_boxes(crowd_mask[None])``.
Sample-level values (``image_id``...) are plain keys that Albumentations passes through.
"""

from __future__ import annotations

import logging
import math
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

import numpy as np

from detmix.coco import BOX_OVERSHOOT, annotations_to_target, decode_masks
from detmix.functional import box_region_masks

logger = logging.getLogger(__name__)

#: The key under which an item carries its partner items for detmix's Albumentations transforms
#: (Albumentations' own Mosaic uses "mosaic_metadata").
METADATA_KEY = "mix_metadata"

__all__ = [
    "BboxFormat",
    "CocoAlbumentationsDataset",
    "MixDataset",
    "from_bbox_format",
    "to_albumentations_item",
    "to_bbox_format",
]

BboxFormat = Literal["coco", "pascal_voc", "albumentations", "yolo"]
_FORMATS = ("coco", "pascal_voc", "albumentations", "yolo")


def _check_format(bbox_format: Any) -> str:
    if bbox_format not in _FORMATS:
        raise ValueError(f"bbox_format must be one of {_FORMATS}, got {bbox_format!r}")
    return bbox_format


def to_bbox_format(boxes: Any, bbox_format: BboxFormat, height: int, width: int) -> np.ndarray:
    """``(N, 4)`` absolute xyxy boxes in ``bbox_format`` (Albumentations' own converters), float32."""
    from albumentations.core.bbox_utils import convert_bboxes_from_albumentations, normalize_bboxes

    _check_format(bbox_format)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return np.zeros((0, 4), np.float32)
    normalized = normalize_bboxes(boxes, (height, width))
    if bbox_format != "albumentations":
        normalized = convert_bboxes_from_albumentations(normalized, bbox_format, {"height": height, "width": width})
    return np.asarray(normalized, dtype=np.float32)


def from_bbox_format(bboxes: Any, bbox_format: BboxFormat, height: int, width: int) -> np.ndarray:
    """``(N, 4)`` absolute xyxy float64 boxes from boxes in ``bbox_format`` (extra columns dropped)."""
    from albumentations.core.bbox_utils import convert_bboxes_to_albumentations, denormalize_bboxes

    _check_format(bbox_format)
    bboxes = np.asarray(bboxes, dtype=np.float64)
    if bboxes.size == 0:
        return np.zeros((0, 4))
    bboxes = bboxes.reshape(len(bboxes), -1)[:, :4]
    if bbox_format != "albumentations":
        bboxes = convert_bboxes_to_albumentations(bboxes, bbox_format, {"height": height, "width": width})
    return denormalize_bboxes(bboxes, (height, width))


# --------------------------------------------------------------------------------------------
# Items of any dataset -> Albumentations dicts
# --------------------------------------------------------------------------------------------


def _numpy_image(image: Any) -> np.ndarray:
    """(H, W, C) numpy from a PIL image, a torch (C, H, W) tensor or a numpy array."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):
        array = image.detach().cpu().numpy()
        return np.ascontiguousarray(np.moveaxis(array, 0, -1)) if array.ndim == 3 else array
    if isinstance(image, np.ndarray):
        return image
    raise TypeError(f"image must be a PIL image, a torch tensor (C, H, W) or a numpy array, got {type(image).__name__}")


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _coco_sample(image: np.ndarray, annotations: Sequence[Any], masks: bool, min_box_size: float) -> dict[str, Any]:
    """A detmix sample from COCO annotation dicts (the target of torchvision's CocoDetection),
    by the rules of :func:`detmix.coco.annotations_to_target`."""
    height, width = image.shape[:2]
    target = annotations_to_target(annotations, height, width, min_box_size=min_box_size)
    where = "annotations"
    if annotations and isinstance(annotations[0], Mapping) and "image_id" in annotations[0]:
        where = f"image {annotations[0]['image_id']}"
    if target["clipped"]:  # the one rule of detmix.coco, said as CocoDetectionSource says it
        logger.info("%s: clipped %d box(es) that poked out of the image by at most %g px", where,
                    target["clipped"], BOX_OVERSHOOT)
    if target["refused"]:
        logger.warning("%s: left out %d annotation(s) whose box pokes more than %g px out of the image (ids %s)",
                       where, len(target["refused"]), BOX_OVERSHOOT, target["refused"])
    sample: dict[str, Any] = {
        "image": image,
        "boxes": target["boxes"],
        "labels": target["labels"],
        "crowd_boxes": target["crowd_boxes"],
    }
    if masks:
        sample["masks"] = decode_masks(target["anns"], height, width)
        crowd_masks = decode_masks(target["crowd_anns"], height, width)
        sample["crowd_mask"] = crowd_masks.max(axis=0) if len(crowd_masks) else np.zeros((height, width), np.uint8)
    if annotations and isinstance(annotations[0], Mapping) and "image_id" in annotations[0]:
        sample["image_id"] = int(annotations[0]["image_id"])
    return sample


def to_albumentations_item(
    item: Any,
    *,
    bbox_format: BboxFormat = "coco",
    label_field: str = "labels",
    masks: bool = True,
    min_box_size: float = 1.0,
) -> dict[str, Any]:
    """One dataset item as an Albumentations-ready dict (see the module docstring).

    Args:
        item: one of
            * a dict with ``bboxes``: already Albumentations-ready, returned as a shallow copy;
            * a dict with ``boxes``: a detmix sample (absolute xyxy), e.g. an item of
              :class:`detmix.coco.CocoDetectionSource`;
            * ``(image, target)`` with ``target`` a dict with ``boxes`` (xyxy), ``labels`` and
              optionally ``masks``, as torchvision's v2 detection datasets give;
            * ``(image, annotations)`` with a list of COCO annotation dicts, as
              ``torchvision.datasets.CocoDetection`` gives.
        bbox_format (str): the format of the output ``bboxes``: "coco", "pascal_voc",
            "albumentations" or "yolo"; use the ``BboxParams`` format. Default: "coco".
        label_field (str): the key of the labels (a ``BboxParams`` label field). Default: "labels".
        masks (bool): keep (or decode) instance masks. Default: True.
        min_box_size (float): COCO annotations whose clipped box is narrower or shorter than this
            many pixels are left out (as :class:`detmix.coco.CocoDetectionSource` does). Default: 1.0.

    Returns:
        dict: ``image``, ``bboxes``, ``label_field``, and when known ``masks``, ``crowd_mask``
        (see the module docstring), ``image_id``, ``file_name``.
    """
    _check_format(bbox_format)
    if isinstance(item, Mapping) and "bboxes" in item:
        return dict(item)
    if isinstance(item, Mapping) and "boxes" in item:
        sample = dict(item)
        sample["image"] = _numpy_image(sample.get("image"))
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        image, target = _numpy_image(item[0]), item[1]
        if isinstance(target, Mapping) and "boxes" in target:
            sample = {key: _numpy(value) if key in ("boxes", "labels", "masks") else value
                      for key, value in target.items()}
            sample["image"] = image
            _crowd_rows_out(sample)
        elif isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
            sample = _coco_sample(image, target, masks, min_box_size)
        else:
            raise TypeError(
                "item[1] must be a target dict with 'boxes' or a list of COCO annotation dicts, got "
                f"{type(target).__name__}"
            )
    else:
        raise TypeError(
            "item must be a dict with 'bboxes' (Albumentations) or 'boxes' (detmix sample), or a pair "
            f"(image, target), got {type(item).__name__}"
        )

    image = sample["image"]
    height, width = image.shape[:2]
    out: dict[str, Any] = {"image": image}
    out["bboxes"] = to_bbox_format(sample["boxes"], bbox_format, height, width)
    labels = sample.get("labels")
    out[label_field] = (np.zeros(len(out["bboxes"]), np.int64) if labels is None
                        else np.asarray(_numpy(labels)).astype(np.int64, copy=False))
    if masks and sample.get("masks") is not None:
        out["masks"] = np.ascontiguousarray(_numpy(sample["masks"]).astype(np.uint8, copy=False))
    crowd = _crowd_mask(sample, masks, height, width)
    if crowd is not None:
        out["crowd_mask"] = crowd
    for key in ("image_id", "file_name"):
        if key in sample:
            out[key] = sample[key]
    return out


def _crowd_rows_out(sample: dict[str, Any]) -> None:
    """Move the rows flagged by ``iscrowd`` (torchvision's v2 COCO targets keep crowd regions
    among the boxes) out of ``boxes``, ``labels`` and ``masks`` into the crowd keys, merged with
    those already there: their boxes join ``crowd_boxes``, their masks ``crowd_mask``."""
    flags = sample.get("iscrowd")
    if flags is None:
        return
    boxes = np.asarray(sample["boxes"]).reshape(-1, 4)
    crowd = np.asarray(_numpy(flags)).reshape(-1) != 0
    if len(crowd) != len(boxes):
        raise ValueError(f"target['iscrowd'] must have one value per box ({len(boxes)}), got {len(crowd)}")
    if not crowd.any():
        return
    given = sample.get("crowd_boxes")
    given = np.zeros((0, 4)) if given is None else np.asarray(_numpy(given), np.float64).reshape(-1, 4)
    sample["crowd_boxes"] = np.concatenate([given, boxes[crowd].astype(np.float64)])
    sample["boxes"] = boxes[~crowd]
    if sample.get("labels") is not None:
        sample["labels"] = np.asarray(sample["labels"])[~crowd]
    masks = sample.get("masks")
    if masks is not None:
        height, width = masks.shape[1:]
        union = (masks[crowd] != 0).any(axis=0)
        if sample.get("crowd_mask") is not None:
            union |= np.asarray(_numpy(sample["crowd_mask"])) != 0
        elif sample.get("crowd_masks") is not None:
            union |= (np.asarray(_numpy(sample["crowd_masks"])) != 0).any(axis=0)
        elif len(given):  # regions given by their boxes alone: their pixels
            union |= box_region_masks(given, height, width).any(axis=0)
        sample["crowd_mask"] = union.astype(np.uint8)
        sample["masks"] = masks[~crowd]


def _crowd_mask(sample: Mapping[str, Any], masks: bool, height: int, width: int) -> np.ndarray | None:
    """The crowd regions of a sample as one (H, W) uint8 mask: its ``crowd_mask`` when masks are
    kept, else the pixels of its ``crowd_boxes``; None when it knows of no crowd regions."""
    if masks and sample.get("crowd_mask") is not None:
        return np.ascontiguousarray(_numpy(sample["crowd_mask"]).astype(np.uint8, copy=False))
    if sample.get("crowd_boxes") is None:
        return None
    boxes = np.asarray(_numpy(sample["crowd_boxes"]), np.float64).reshape(-1, 4)
    return box_region_masks(boxes, height, width).any(axis=0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Partner sampling
# --------------------------------------------------------------------------------------------


def _worker_info() -> Any:
    try:
        from torch.utils.data import get_worker_info
    except ImportError:  # pragma: no cover - torch is optional
        return None
    return get_worker_info()


class MixDataset:
    """A map-style dataset whose items carry randomly drawn partners for detmix's transforms.

    Args:
        dataset: any map-style dataset (``len(dataset)`` and ``dataset[i]``) of the items that
            :func:`to_albumentations_item` reads (dicts, ``(image, target)`` pairs, COCO).
        transform (callable, optional): applied as ``transform(**item)``, typically an
            ``A.Compose`` holding :class:`~detmix.albumentations.BoxCutMix` and friends. In a
            DataLoader worker it is reseeded once per worker and epoch (``set_random_seed``) from
            the worker's seed: albumentations 2.0.8 would otherwise give every worker, every epoch,
            the same stream of augmentations.
        num_partners (int): partners drawn per item (uniformly among the other items, with
            replacement); the transform picks one of them. Default: 1.
        metadata_key (str): the key of the partners in the item. Default: "mix_metadata".
        bbox_format (str): format of the boxes built from ``boxes`` or COCO annotations; the
            Compose's ``BboxParams`` format. Default: "coco".
        label_field (str): key of the labels; a ``BboxParams`` label field. Default: "labels".
        masks (bool): keep or decode instance masks. Default: True.
        to_item (callable, optional): ``dataset[i] -> dict``; default :func:`to_albumentations_item`
            with the arguments above.
        seed (int, optional): seed of the partner draws. In the main process the generator is
            ``np.random.default_rng(seed)``; in a DataLoader worker it is seeded from ``seed`` and
            the worker's seed (``torch.utils.data.get_worker_info().seed``), so workers and epochs
            draw differently and a run is repeated by seeding the DataLoader
            (``generator=torch.Generator().manual_seed(...)``). None: fresh entropy in the main process.
        keep_metadata (bool): keep the partner items under ``metadata_key`` in what ``transform``
            returns. Default False: once mixed they are dropped, since each holds a whole image and
            its masks and would otherwise travel through the DataLoader with every item (on real
            COCO photographs with masks, 7.3 MB per item on average instead of 4.1 MB).

    Returns of ``ds[i]``: the item with ``ds.metadata_key`` holding the list of partner items, or
    ``transform(**item)`` when a transform is given, without ``metadata_key`` unless
    ``keep_metadata``.
    """

    def __init__(
        self,
        dataset: Any,
        transform: Callable[..., dict[str, Any]] | None = None,
        *,
        num_partners: int = 1,
        metadata_key: str = METADATA_KEY,
        bbox_format: BboxFormat = "coco",
        label_field: str = "labels",
        masks: bool = True,
        to_item: Callable[[Any], dict[str, Any]] | None = None,
        seed: int | None = None,
        keep_metadata: bool = False,
    ) -> None:
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"dataset must be map-style (len(dataset) and dataset[i]), got {type(dataset).__name__}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        if isinstance(num_partners, bool) or not isinstance(num_partners, int) or num_partners < 1:
            raise ValueError(f"num_partners must be an int >= 1, got {num_partners!r}")
        if not isinstance(metadata_key, str) or not metadata_key:
            raise ValueError(f"metadata_key must be a non-empty str, got {metadata_key!r}")
        if not isinstance(label_field, str) or not label_field:
            raise ValueError(f"label_field must be a non-empty str, got {label_field!r}")
        _check_format(bbox_format)
        if to_item is not None and not callable(to_item):
            raise TypeError(f"to_item must be callable or None, got {type(to_item).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        if not isinstance(keep_metadata, bool):
            raise TypeError(f"keep_metadata must be a bool, got {type(keep_metadata).__name__}")
        self.keep_metadata = keep_metadata
        self.dataset = dataset
        self.transform = transform
        self.num_partners = num_partners
        self.metadata_key = metadata_key
        self.seed = seed
        self.to_item = to_item or partial(to_albumentations_item, bbox_format=bbox_format, label_field=label_field,
                                          masks=masks)
        self._rng: np.random.Generator | None = None
        self._rng_key: Any = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(dataset={type(self.dataset).__name__}, items={len(self)}, "
                f"num_partners={self.num_partners}, metadata_key={self.metadata_key!r}, seed={self.seed})")

    def generator(self) -> np.random.Generator:
        """This process's generator of partner draws (created on first use in each worker, and
        again when the worker's seed changes, i.e. each epoch with non-persistent workers)."""
        info = _worker_info()
        key = (os.getpid(), None if info is None else (info.id, info.seed))
        if self._rng is None or self._rng_key != key:
            entropy = ([] if self.seed is None else [self.seed]) + ([] if info is None else [info.seed])
            sequence = np.random.SeedSequence(entropy or None)
            partners, transform = sequence.spawn(2)
            self._rng = np.random.default_rng(partners)
            self._rng_key = key
            if info is not None and hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(int(transform.generate_state(1)[0]))
        return self._rng

    def partner_indices(self, index: int, generator: np.random.Generator) -> list[int]:
        """``num_partners`` indices drawn uniformly among the items other than ``index`` (none when
        the dataset has a single item)."""
        n = len(self)
        if n < 2:
            return []
        draws = generator.integers(n - 1, size=self.num_partners)
        return [int(j + (j >= index)) for j in draws]

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            index = operator.index(index)
        except TypeError:
            raise TypeError(f"index must be an int, got {type(index).__name__}") from None
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index must be in [{-n}, {n}), got {index}")
        index %= n
        rng = self.generator()
        item = self._item(index)
        item[self.metadata_key] = [self._item(j) for j in self.partner_indices(index, rng)]
        if self.transform is None:
            return item
        out = self.transform(**item)
        if not self.keep_metadata and isinstance(out, dict):
            out.pop(self.metadata_key, None)
        return out

    def _item(self, index: int) -> dict[str, Any]:
        item = self.to_item(self.dataset[index])
        if not isinstance(item, dict) or "image" not in item:
            raise TypeError(f"to_item must return a dict with 'image', got {type(item).__name__} for item {index}")
        return item


class CocoAlbumentationsDataset:
    """A COCO "instances" file and image folder as Albumentations-ready dicts.

    Reading is :class:`detmix.coco.CocoDetectionSource`'s (pycocotools; polygons and RLE decoded
    to masks; boxes clipped to the image; crowd annotations kept out of the boxes); this class
    converts its samples with :func:`to_albumentations_item`.

    Args:
        annotation_file (str or PathLike): COCO instances JSON.
        image_dir (str or PathLike): folder of the images' ``file_name``.
        bbox_format (str): "coco", "pascal_voc", "albumentations" or "yolo". Default: "coco".
        label_field (str): key of the category ids. Default: "labels".
        masks (bool): decode instance masks (``masks``, ``crowd_mask``). Default: True.
        image_ids (sequence of int, optional): the images to serve, in this order.
        min_box_size (float): boxes narrower or shorter than this many pixels are left out. Default: 1.0.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike[str],
        image_dir: str | os.PathLike[str],
        *,
        bbox_format: BboxFormat = "coco",
        label_field: str = "labels",
        masks: bool = True,
        image_ids: Any = None,
        min_box_size: float = 1.0,
    ) -> None:
        from detmix.coco import CocoDetectionSource

        _check_format(bbox_format)
        if not isinstance(label_field, str) or not label_field:
            raise ValueError(f"label_field must be a non-empty str, got {label_field!r}")
        if (isinstance(min_box_size, bool) or not isinstance(min_box_size, (int, float))
                or not math.isfinite(min_box_size)):
            raise ValueError(f"min_box_size must be a finite number >= 0, got {min_box_size!r}")
        self.source = CocoDetectionSource(annotation_file, image_dir, masks=masks, image_ids=image_ids,
                                          min_box_size=min_box_size)
        self.bbox_format = bbox_format
        self.label_field = label_field
        self.masks = masks

    @property
    def category_names(self) -> dict[int, str]:
        """Category id -> name."""
        return self.source.category_names

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return to_albumentations_item(self.source[index], bbox_format=self.bbox_format, label_field=self.label_field,
                                      masks=self.masks)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(annotation_file={str(self.source.annotation_file)!r}, images={len(self)}, "
                f"bbox_format={self.bbox_format!r}, masks={self.masks})")
