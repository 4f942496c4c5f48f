"""COCO in and out: strict validation of a COCO batch, image decoding and encoding, masks.

Nothing a client sends reaches Pillow's decoders, pycocotools or the detmix kernels before it
has passed these checks; every failure is an :class:`~detmix_service.errors.InvalidInput` (422)
or :class:`~detmix_service.errors.UnsupportedMediaType` (415) whose ``loc`` points at the field and
whose message names the image or annotation by its COCO id.

Validation has two steps:

* :class:`CocoImage`, :class:`CocoAnnotation`, :class:`CocoCategory`: each record alone (types,
  bounds, ``w``/``h`` > 0, polygon shape, RLE shape), pydantic in strict mode: JSON numbers stay
  numbers, strings are not numbers, NaN and infinity are refused;
* :func:`check_batch`: the records together (duplicate ids, unknown ``image_id`` or
  ``category_id``, boxes and polygons inside their image, RLE size and counts, limits).

Images: the format comes from the magic bytes (JPEG, PNG, WebP); the size from the header, checked
against the limits before any pixel is decoded; a truncated or corrupt file is an error, never a
half-decoded picture (Pillow's ``LOAD_TRUNCATED_IMAGES`` is left False); so is a decompression bomb.
Encoded outputs carry no EXIF or other metadata.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator

from detmix.coco import BOX_OVERSHOOT, decode_masks
from detmix.rle import decode_rle
from detmix_service.budget import batch_cost, over_budget_message
from detmix_service.errors import ErrorItem, InvalidInput, UnsupportedMediaType

__all__ = [
    "BOX_TOLERANCE",
    "CocoAnnotation",
    "CocoBatch",
    "CocoCategory",
    "CocoImage",
    "Limits",
    "Rle",
    "UNION_TAGS",
    "check_annotation",
    "check_batch",
    "clip_box",
    "decode_base64",
    "decode_pixels",
    "encode_image",
    "instance_masks",
    "open_image",
    "pydantic_errors",
    "segmentation_sizes",
    "sniff_format",
]

logger = logging.getLogger(__name__)

#: How far (pixels) a box or polygon may overshoot its image before it counts as outside: the
#: core's :data:`detmix.coco.BOX_OVERSHOOT` (1 px, the rounding of COCO exports), one rule for
#: every face. Boxes within it are clipped to the image and listed in the answer's ``clipped``.
BOX_TOLERANCE = BOX_OVERSHOOT
#: Largest side of an image, in pixels.
MAX_SIDE = 65_535
MAX_ID = 2**63 - 1

#: Tags of the service's discriminated unions (segmentation; recipe by name or inline): pydantic
#: puts them in error locations, the answer leaves them out.
UNION_TAGS = frozenset({"polygons", "rle", "named", "inline"})

Id = Annotated[int, Field(ge=0, le=MAX_ID)]
Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]
Coord = Annotated[float, Field(ge=0, le=MAX_SIDE)]
Extent = Annotated[float, Field(gt=0, le=MAX_SIDE)]


class _Record(BaseModel):
    """A COCO record: strict types, NaN/inf refused, keys we do not use ignored (COCO files carry
    ``license``, ``coco_url``... that a mix has no use for)."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False, frozen=True)


class CocoCategory(_Record):
    id: Id
    name: Annotated[str, Field(min_length=1, max_length=256)]
    supercategory: Annotated[str, Field(max_length=256)] = ""


class CocoImage(_Record):
    id: Id
    width: Side
    height: Side
    file_name: Annotated[str, Field(min_length=1, max_length=1024)] | None = Field(
        default=None, description="in a multipart request: the name of the file part holding the image"
    )
    data: Annotated[str, Field(max_length=2**31)] | None = Field(
        default=None, description="in a JSON request: the JPEG, PNG or WebP file, base64"
    )


class Rle(_Record):
    """A COCO run-length mask: compressed ``counts`` (a string, as pycocotools writes) or
    uncompressed (a list of run lengths, as COCO's crowd annotations)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    size: Annotated[list[Side], Field(min_length=2, max_length=2, description="[height, width]")]
    counts: Annotated[str, Field(min_length=1, max_length=2**26)] | Annotated[
        list[Annotated[int, Field(ge=0, le=MAX_SIDE * MAX_SIDE)]], Field(min_length=1, max_length=2**24)
    ]


Polygon = Annotated[list[Coord], Field(min_length=6, max_length=200_000, description="x1, y1, x2, y2, ...")]


def _segmentation_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return "polygons"
    if isinstance(value, dict) or isinstance(value, Rle):
        return "rle"
    return None


Segmentation = Annotated[
    Annotated[list[Polygon], Field(min_length=1, max_length=1000), Tag("polygons")] | Annotated[Rle, Tag("rle")],
    Discriminator(
        _segmentation_kind,
        custom_error_type="segmentation_type",
        custom_error_message="segmentation must be a list of polygons or an RLE object {size, counts}",
    ),
]


class CocoAnnotation(_Record):
    id: Id
    image_id: Id
    category_id: Id
    bbox: Annotated[
        list[Annotated[float, Field(ge=-MAX_SIDE, le=MAX_SIDE)]],
        Field(min_length=4, max_length=4, description="[x, y, w, h] in pixels, w > 0 and h > 0"),
    ]
    iscrowd: Literal[0, 1] = 0
    area: Annotated[float, Field(ge=0, le=float(MAX_SIDE) ** 2)] | None = Field(
        default=None, description="ignored: the answer computes the area of what is left"
    )
    segmentation: Segmentation | None = None

    @field_validator("bbox")
    @classmethod
    def _positive_extent(cls, bbox: list[float]) -> list[float]:
        if not (bbox[2] > 0 and bbox[3] > 0):
            raise ValueError(f"bbox [x, y, w, h] must have w > 0 and h > 0, got {bbox}")
        return bbox

    @field_validator("segmentation")
    @classmethod
    def _even_polygons(cls, value: Any) -> Any:
        if isinstance(value, list):
            for k, polygon in enumerate(value):
                if len(polygon) % 2:
                    raise ValueError(f"polygon {k} must hold x, y pairs, got an odd number ({len(polygon)}) of coordinates")
        return value


class CocoBatch(_Record):
    """The COCO part of a request: images, their annotations, the categories."""

    images: Annotated[list[CocoImage], Field(min_length=1, max_length=256)]
    annotations: Annotated[list[CocoAnnotation], Field(max_length=1_000_000)] = Field(default_factory=list)
    categories: Annotated[list[CocoCategory], Field(min_length=1, max_length=100_000)]


@dataclass(frozen=True)
class Limits:
    """The settings that bound one batch."""

    max_batch_images: int
    max_image_pixels: int
    max_batch_pixels: int
    max_annotations_per_image: int
    max_mask_pixels: int
    #: bytes of server memory one batch may take (see :mod:`detmix_service.budget`); None: unbounded
    memory_budget: int | None = None


# --------------------------------------------------------------------------------------------
# Validation errors, with the record named
# --------------------------------------------------------------------------------------------


def _record_name(raw: Any, loc: Sequence[str | int]) -> str | None:
    """``"annotation 17"`` for a loc inside ``annotations[k]`` whose id can be read, etc."""
    if len(loc) < 2 or not isinstance(loc[1], int) or not isinstance(raw, dict):
        return None
    kind = {"images": "image", "annotations": "annotation", "categories": "category"}.get(str(loc[0]))
    records = raw.get(str(loc[0]))
    if kind is None or not isinstance(records, list) or not 0 <= loc[1] < len(records):
        return None
    record = records[loc[1]]
    record_id = record.get("id") if isinstance(record, dict) else None
    if isinstance(record_id, int) and not isinstance(record_id, bool):
        return f"{kind} {record_id}"
    return f"{kind} at index {loc[1]}"


def pydantic_errors(error: ValidationError, raw: Any, prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """pydantic's errors as error items: ``loc`` under ``prefix``, messages naming the record."""
    items = []
    for e in error.errors(include_url=False, include_context=False, include_input=False):
        loc = [part for part in e["loc"] if part not in UNION_TAGS]
        name = _record_name(raw, loc)
        msg = e["msg"] if name is None else f"{name}: {e['msg']}"
        items.append(ErrorItem([*prefix, *loc], msg, e["type"]))
    return items


class _Errors:
    """Collects error items up to a cap, so a huge broken batch answers quickly."""

    cap = 50

    def __init__(self, prefix: Sequence[str | int]) -> None:
        self.prefix = list(prefix)
        self.items: list[dict[str, Any]] = []

    def add(self, loc: Sequence[str | int], msg: str, type: str = "coco") -> None:
        if len(self.items) < self.cap:
            self.items.append(ErrorItem([*self.prefix, *loc], msg, type))

    @property
    def full(self) -> bool:
        return len(self.items) >= self.cap

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidInput.many(self.items)


# --------------------------------------------------------------------------------------------
# Checks across records
# --------------------------------------------------------------------------------------------


def check_annotation(
    ann: CocoAnnotation, image: CocoImage, loc: Sequence[str | int], errors: _Errors | None = None
) -> list[dict[str, Any]]:
    """The checks of one annotation against its image: box and polygons inside it, RLE of its
    size with counts that cover it. Returns the error items (also added to ``errors``)."""
    errors = errors if errors is not None else _Errors(())
    before = len(errors.items)
    name = f"annotation {ann.id}"
    width, height = image.width, image.height
    x, y, w, h = ann.bbox
    x1, y1, x2, y2 = clip_box(ann.bbox, width, height)
    broken = [
        text for bad, text in (
            (x < -BOX_TOLERANCE, f"x = {x:g} < 0"),
            (y < -BOX_TOLERANCE, f"y = {y:g} < 0"),
            (x + w > width + BOX_TOLERANCE, f"x + w = {x + w:g} > {width}"),
            (y + h > height + BOX_TOLERANCE, f"y + h = {y + h:g} > {height}"),
        ) if bad
    ]
    if broken or x2 <= x1 or y2 <= y1:
        errors.add(
            [*loc, "bbox"],
            f"{name}: bbox {ann.bbox} must lie inside image {image.id} ({width}x{height}) up to the "
            f"{BOX_TOLERANCE:g} px that are clipped, but " + (", ".join(broken) if broken else "nothing of it is inside"),
        )
    segmentation = ann.segmentation
    if isinstance(segmentation, list):
        for k, polygon in enumerate(segmentation):
            xs, ys = polygon[0::2], polygon[1::2]
            outside = (px > width + BOX_TOLERANCE or py > height + BOX_TOLERANCE for px, py in zip(xs, ys, strict=True))
            bad = next((i for i, out in enumerate(outside) if out), None)
            if bad is not None:
                errors.add(
                    [*loc, "segmentation", k],
                    f"{name}: polygon {k} point {bad} ({xs[bad]:g}, {ys[bad]:g}) lies outside image {image.id} "
                    f"({width}x{height})",
                )
                break
    elif isinstance(segmentation, Rle):
        if list(segmentation.size) != [height, width]:
            errors.add(
                [*loc, "segmentation", "size"],
                f"{name}: RLE size {segmentation.size} must be [height, width] of image {image.id}, [{height}, {width}]",
            )
        elif isinstance(segmentation.counts, list) and sum(segmentation.counts) != height * width:
            errors.add(
                [*loc, "segmentation", "counts"],
                f"{name}: RLE counts must cover the {height}x{width} image ({height * width} pixels), "
                f"got runs summing to {sum(segmentation.counts)}",
            )
        elif isinstance(segmentation.counts, str):
            try:
                decode_rle({"size": segmentation.size, "counts": segmentation.counts})
            except (TypeError, ValueError) as error:
                errors.add([*loc, "segmentation", "counts"], f"{name}: {error}")
    return errors.items[before:]


def segmentation_sizes(annotations: Sequence[CocoAnnotation]) -> tuple[int, int]:
    """The polygon coordinates and the RLE ``counts`` items (characters of a string, runs of a
    list) of ``annotations``: what decoding their masks will read."""
    polygons = rle = 0
    for ann in annotations:
        segmentation = ann.segmentation
        if isinstance(segmentation, list):
            polygons += sum(len(polygon) for polygon in segmentation)
        elif isinstance(segmentation, Rle):
            rle += len(segmentation.counts)
    return polygons, rle


def _duplicates(records: Sequence[Any], kind: str, field: str, errors: _Errors) -> None:
    first: dict[int, int] = {}
    for k, record in enumerate(records):
        value = record.id
        if value in first:
            errors.add([field, k, "id"], f"{kind} id {value} appears twice: {field}[{first[value]}] and {field}[{k}]")
        else:
            first[value] = k


def check_batch(batch: CocoBatch, limits: Limits, prefix: Sequence[str | int] = ()) -> None:
    """Every check that looks at more than one record, and the limits that do not need pixels.
    Raises :class:`InvalidInput` listing the problems (up to 50)."""
    errors = _Errors(prefix)
    images, annotations = batch.images, batch.annotations
    if len(images) > limits.max_batch_images:
        errors.add(["images"], f"a batch holds at most {limits.max_batch_images} images, got {len(images)}", "limit")
    _duplicates(images, "image", "images", errors)
    _duplicates(batch.categories, "category", "categories", errors)
    _duplicates(annotations, "annotation", "annotations", errors)
    errors.raise_if_any()

    declared = sum(image.width * image.height for image in images)
    if declared > limits.max_batch_pixels:
        errors.add(
            ["images"],
            f"the batch's images have {declared} pixels in all (width x height), more than the limit of "
            f"{limits.max_batch_pixels}",
            "limit",
        )
    for k, image in enumerate(images):
        if image.width * image.height > limits.max_image_pixels:
            errors.add(
                ["images", k],
                f"image {image.id} is {image.width}x{image.height} = {image.width * image.height} pixels, more than "
                f"the limit of {limits.max_image_pixels}",
                "limit",
            )
    errors.raise_if_any()

    by_id = {image.id: image for image in images}
    category_ids = {category.id for category in batch.categories}
    # The limits first, each in one pass over the annotations, before any per-annotation work.
    counts: dict[int, int] = {}
    for ann in annotations:
        if ann.image_id in by_id:
            counts[ann.image_id] = counts.get(ann.image_id, 0) + 1
    for image_id, count in counts.items():
        if count > limits.max_annotations_per_image:
            errors.add(
                ["annotations"],
                f"image {image_id} has {count} annotations, more than the limit of {limits.max_annotations_per_image}",
                "limit",
            )
    example = next((ann.id for ann in annotations if ann.segmentation is not None), None)
    if example is not None:
        mask_pixels = sum(by_id[ann.image_id].width * by_id[ann.image_id].height
                          for ann in annotations if ann.image_id in by_id)
        if mask_pixels > limits.max_mask_pixels:
            errors.add(
                ["annotations"],
                f"the batch's masks would take {mask_pixels} pixels (one image-sized mask per annotation), more than "
                f"the limit of {limits.max_mask_pixels}",
                "limit",
            )
    else:
        mask_pixels = 0
    if limits.memory_budget is not None:
        polygons, rle = segmentation_sizes(annotations)
        cost = batch_cost([(image.height, image.width) for image in images], mask_pixels, polygons, rle,
                          len(annotations))
        if cost.total > limits.memory_budget:
            errors.add(["annotations"] if mask_pixels or polygons or rle else ["images"],
                       over_budget_message("the batch", cost, limits.memory_budget), "memory_budget")
    errors.raise_if_any()

    for k, ann in enumerate(annotations):
        if errors.full:
            break
        loc = ["annotations", k]
        image = by_id.get(ann.image_id)
        if image is None:
            errors.add([*loc, "image_id"],
                       f"annotation {ann.id}: image_id {ann.image_id} is not the id of an image of the batch")
            continue
        if ann.category_id not in category_ids:
            errors.add(
                [*loc, "category_id"], f"annotation {ann.id}: category_id {ann.category_id} is not the id of a category"
            )
        if example is not None and ann.segmentation is None:
            errors.add(
                [*loc, "segmentation"],
                f"annotation {ann.id}: has no segmentation but annotation {example} has one; give a segmentation "
                "for every annotation or for none",
            )
        check_annotation(ann, image, loc, errors)
    errors.raise_if_any()


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def sniff_format(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"`` or ``"webp"`` from the file's first bytes, else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_base64(text: str, loc: Sequence[str | int], name: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{name}: data must be base64 (RFC 4648, no line breaks)", loc, type="base64") from None


def open_image(data: bytes, loc: Sequence[str | int], name: str, max_pixels: int) -> Image.Image:
    """Open an image lazily: format from the magic bytes, size from the header, checked against
    ``max_pixels`` before anything is decoded."""
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType(
            f"{name}: the file is not JPEG, PNG or WebP (its first bytes are {data[:8].hex(' ') or 'empty'})", loc
        )
    try:
        image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidInput(f"{name}: refused as a decompression bomb ({error})", loc, type="image_too_large") from None
    except Exception as error:  # Pillow raises many types on malformed headers
        raise InvalidInput(f"{name}: corrupt {fmt.upper()} header ({error})", loc, type="corrupt_image") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise InvalidInput(
            f"{name}: the {fmt.upper()} is {width}x{height} = {width * height} pixels, more than the limit of "
            f"{max_pixels} (read from its header; nothing was decoded)",
            loc,
            type="image_too_large",
        )
    return image


def decode_pixels(image: Image.Image, loc: Sequence[str | int], name: str) -> np.ndarray:
    """Decode an opened image to ``(H, W, 3)`` uint8 RGB; truncated or corrupt data is an error.
    The pixels are COCO's: the stored orientation, EXIF orientation not applied."""
    try:
        with image:
            image.load()
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidInput(f"{name}: refused as a decompression bomb ({error})", loc, type="image_too_large") from None
    except Exception as error:  # OSError "image file is truncated", decoder errors...
        raise InvalidInput(
            f"{name}: the image data is truncated or corrupt ({error}); nothing of it was used", loc, type="corrupt_image"
        ) from None


def encode_image(pixels: np.ndarray, fmt: Literal["jpeg", "png"], quality: int) -> bytes:
    """JPEG (``quality``) or PNG bytes of ``(H, W, 3)`` uint8 pixels, with no metadata."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, "RGB")
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def instance_masks(annotations: Sequence[CocoAnnotation], height: int, width: int) -> np.ndarray:
    """``(N, H, W)`` uint8 masks of validated annotations, decoded by the core's
    :func:`detmix.coco.decode_masks` (polygons merged by pycocotools, RLE by
    :func:`detmix.rle.decode_rle`). Validation guarantees a segmentation on every annotation
    whenever masks are asked for."""
    records = []
    for ann in annotations:
        segmentation = ann.segmentation
        if isinstance(segmentation, Rle):
            segmentation = {"size": list(segmentation.size), "counts": segmentation.counts}
        elif segmentation is not None:
            segmentation = [list(map(float, polygon)) for polygon in segmentation]
        records.append({"id": ann.id, "segmentation": segmentation})
    return decode_masks(records, height, width)


def clip_box(bbox: Sequence[float], width: int, height: int) -> list[float]:
    """``[x, y, w, h]`` as xyxy clipped to the image (only tolerance-sized overshoots remain)."""
    x, y, w, h = bbox
    return [
        min(max(x, 0.0), width), min(max(y, 0.0), height),
        min(max(x + w, 0.0), width), min(max(y + h, 0.0), height),
    ]
