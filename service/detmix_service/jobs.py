"""What one batch request does, start to end, as plain synchronous code for a worker thread.

Both batch endpoints run one pipeline (:func:`run_batch`): ``parse`` (JSON, pydantic,
cross-record checks) -> ``read`` (uploads: headers checked against the limits first, then
pixels; a dataset: its files) -> ``plan`` (draw or replay) -> ``mix`` -> JSON bytes. The
endpoints differ only in where the images come from (:class:`BatchSource`). Every step
that can fail on client input raises :class:`~detmix_service.errors.InvalidInput` or
:class:`~detmix_service.errors.UnsupportedMediaType` with the location of the problem.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from detmix.recipes import Recipe
from detmix_service.budget import batch_cost, json_cost, over_budget_message
from detmix_service.cocoio import (
    CocoAnnotation,
    CocoCategory,
    CocoImage,
    Limits,
    check_batch,
    decode_pixels,
    open_image,
    pydantic_errors,
    segmentation_sizes,
)
from detmix_service.errors import InvalidInput
from detmix_service.mixing import Plan, SourceImage, draw_plan, mix_batch, replay_plan
from detmix_service.schemas import DatasetBatchRequest, MixOptions, MixRequest, OutputOptions

if TYPE_CHECKING:  # pragma: no cover
    from detmix_service.datasets import Dataset

__all__ = [
    "DEFAULT_BATCH_SIZE", "JPEG_MAX_SIDE", "Answer", "BatchSource", "Blob", "JobContext", "check_output_size",
    "encode_answer", "parse_json", "parse_model", "resolve_recipe", "run_batch", "run_dataset_batch", "run_mix", "run_plan",
]

Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True)
class Blob:
    """The bytes of one input image and where they came from (for error messages)."""

    data: bytes
    loc: tuple[str | int, ...]


@dataclass(frozen=True)
class JobContext:
    limits: Limits
    recipes: Mapping[str, Recipe]
    checkpoint: Callable[[], None]


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number; NaN and infinities are refused")


def parse_json(body: bytes, loc: Sequence[str | int], budget: int | None = None) -> Any:
    """``json.loads`` that refuses NaN/Infinity and answers 422 on anything that is not JSON, nor
    a text whose parsed values would take more than ``budget`` bytes (counted before parsing)."""
    if budget is not None:
        cost = json_cost(body)
        if cost.total > budget:
            raise InvalidInput(over_budget_message("the JSON text", cost, budget), loc, type="memory_budget")
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, huge ints
        raise InvalidInput(f"the body is not valid JSON: {error}", loc, type="json_invalid") from None


def parse_model(model: type[Model], raw: Any, prefix: Sequence[str | int]) -> Model:
    if not isinstance(raw, dict):
        raise InvalidInput(f"must be a JSON object, got {type(raw).__name__}", prefix, type="model_type")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise InvalidInput.many(pydantic_errors(error, raw, prefix)) from None


def resolve_recipe(recipe: str | Recipe, recipes: Mapping[str, Recipe], loc: Sequence[str | int]) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in recipes:
        raise InvalidInput(f"recipe {recipe!r} is not one of {sorted(recipes)}", loc, type="unknown_recipe")
    return recipes[recipe]


def decode_images(
    records: Sequence[CocoImage],
    blobs: Sequence[Blob],
    limits: Limits,
    checkpoint: Callable[[], None],
    batch_loc: Sequence[str | int],
) -> list[np.ndarray]:
    """Pixels of every image: all headers are read and checked (size against the record and the
    limits, the batch's total) before the first image is decoded."""
    opened = []
    try:
        total = 0
        for record, blob in zip(records, blobs, strict=True):
            name = f"image {record.id}"
            image = open_image(blob.data, blob.loc, name, limits.max_image_pixels)
            opened.append(image)
            if image.size != (record.width, record.height):
                raise InvalidInput(
                    f"{name}: the file is {image.size[0]}x{image.size[1]} but the record says "
                    f"width={record.width}, height={record.height}",
                    blob.loc,
                    type="size_mismatch",
                )
            total += image.size[0] * image.size[1]
        if total > limits.max_batch_pixels:
            raise InvalidInput(
                f"the batch's images have {total} pixels in all, more than the limit of {limits.max_batch_pixels}",
                batch_loc,
                type="limit",
            )
        pixels = []
        for record, blob, image in zip(records, blobs, opened, strict=True):
            checkpoint()
            pixels.append(decode_pixels(image, blob.loc, f"image {record.id}"))
        return pixels
    finally:
        for image in opened:
            image.close()


def source_images(
    records: Sequence[CocoImage], pixels: Sequence[np.ndarray], annotations: Sequence[CocoAnnotation], masks: bool
) -> list[SourceImage]:
    """Each image with its annotations (in request order). ``masks``: mix masks, which needs a
    segmentation on every annotation (else boxes only)."""
    masks = masks and bool(annotations) and all(ann.segmentation is not None for ann in annotations)
    by_image: dict[int, list[CocoAnnotation]] = {record.id: [] for record in records}
    for ann in annotations:
        by_image[ann.image_id].append(ann)
    return [
        SourceImage(record, image, tuple(by_image[record.id]), masks) for record, image in zip(records, pixels, strict=True)
    ]


def run_plan(
    images: Sequence[SourceImage],
    recipe: Recipe,
    seed: int | None,
    given: Sequence[Any] | None,
    prefix: Sequence[str | int],
    rng: np.random.Generator | None = None,
) -> Plan:
    """Replay ``given`` params, or draw from ``rng`` (default: one seeded by ``seed``, drawn
    here when None)."""
    if given is not None:
        return replay_plan(images, recipe, given, prefix)
    if rng is None:
        seed = secrets.randbits(63) if seed is None else seed
        rng = np.random.default_rng(seed)
    return draw_plan(images, recipe, rng, seed)


@dataclass(frozen=True)
class Answer:
    """A finished batch: the JSON body and the mode of each output image (for the metrics)."""

    body: bytes
    modes: tuple[str, ...]


def encode_answer(answer: dict[str, Any]) -> Answer:
    body = json.dumps(answer, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return Answer(body, tuple(image["mix"]["params"]["mode"] for image in answer["images"]))


#: Largest side of a JPEG that libjpeg writes (it refuses more, whatever the format's 16 bits say).
JPEG_MAX_SIDE = 65_500


def check_output_size(records: Sequence[CocoImage], output: OutputOptions, loc: Sequence[str | int]) -> None:
    """Refuse JPEG output for a batch with an image wider or taller than libjpeg writes. Output
    ``i`` has image ``i``'s canvas or a larger one (``align: pad``), and an image's partner shares
    its canvas only when it is larger: an output is too large exactly when some input is."""
    if output.format != "jpeg":
        return
    for record in records:
        if max(record.width, record.height) > JPEG_MAX_SIDE:
            raise InvalidInput(
                f"image {record.id} is {record.width}x{record.height}: its mixed image cannot be a JPEG, which holds at "
                f"most {JPEG_MAX_SIDE} pixels a side (libjpeg); ask for output format 'png'",
                loc,
                type="output_too_large",
            )


@dataclass(frozen=True)
class BatchSource:
    """What an endpoint hands the one pipeline (:func:`run_batch`): the images' records and
    annotations, the categories, whether masks are mixed, and how the pixels are had (decoded
    from the uploads, or read from a dataset), given the job's checkpoint."""

    records: Sequence[CocoImage]
    annotations: Sequence[CocoAnnotation]
    categories: Sequence[CocoCategory]
    masks: bool
    pixels: Callable[[Callable[[], None]], list[np.ndarray]]


def run_batch(
    source: BatchSource,
    options: MixOptions,
    ctx: JobContext,
    prefix: Sequence[str | int],
    *,
    seed: int | None,
    rng: np.random.Generator | None = None,
) -> Answer:
    """The pipeline of both batch endpoints: read the pixels -> plan (draw, or replay
    ``options.params``) -> mix -> encode. ``seed`` (drawn when None) seeds the draw, or ``rng``
    continues one (a dataset batch draws its images first)."""
    recipe = resolve_recipe(options.recipe, ctx.recipes, [*prefix, "recipe"])
    check_output_size(source.records, options.output, [*prefix, "output", "format"])
    images = source_images(source.records, source.pixels(ctx.checkpoint), source.annotations, masks=source.masks)
    plan = run_plan(images, recipe, seed, options.params, prefix, rng=None if options.params else rng)
    return encode_answer(mix_batch(images, source.categories, recipe, plan, options.output, ctx.checkpoint))


def run_mix(
    request: MixRequest,
    blobs: Sequence[Blob],
    ctx: JobContext,
    prefix: Sequence[str | int],
    images_loc: Sequence[str | int],
) -> Answer:
    """``POST /v1/mix`` once the body is parsed: ``blobs[k]`` holds ``request.images[k]``;
    ``prefix`` locates the request model, ``images_loc`` the image files."""
    check_batch(request, ctx.limits, prefix)

    def pixels(checkpoint: Callable[[], None]) -> list[np.ndarray]:
        return decode_images(request.images, blobs, ctx.limits, checkpoint, images_loc)

    source = BatchSource(request.images, request.annotations, request.categories, True, pixels)
    return run_batch(source, request, ctx, prefix, seed=request.seed)


#: Images drawn by a dataset batch that names neither ``batch_size`` nor ``image_ids``.
DEFAULT_BATCH_SIZE = 8


def _choose(dataset: Dataset, request: DatasetBatchRequest, limits: Limits, rng: np.random.Generator) -> list[int]:
    if request.image_ids is not None:
        if request.batch_size is not None and request.batch_size != len(request.image_ids):
            raise InvalidInput(
                f"batch_size {request.batch_size} disagrees with the {len(request.image_ids)} image_ids; give one of them",
                ["body", "batch_size"],
            )
        seen: set[int] = set()
        for k, image_id in enumerate(request.image_ids):
            if image_id not in dataset.images:
                raise InvalidInput(f"image {image_id} is not served by dataset {dataset.name!r}", ["body", "image_ids", k])
            if image_id in seen:
                raise InvalidInput(f"image {image_id} is named twice", ["body", "image_ids", k])
            seen.add(image_id)
        ids, where = list(request.image_ids), "image_ids"
    else:
        size = DEFAULT_BATCH_SIZE if request.batch_size is None else request.batch_size
        if size > len(dataset.images):
            raise InvalidInput(
                f"batch_size {size} is more than the {len(dataset.images)} images of dataset {dataset.name!r}",
                ["body", "batch_size"],
            )
        served = sorted(dataset.images)
        ids, where = [served[int(k)] for k in rng.choice(len(served), size=size, replace=False)], "batch_size"
    if len(ids) > limits.max_batch_images:
        raise InvalidInput(f"a batch holds at most {limits.max_batch_images} images, got {len(ids)}", ["body", where],
                           type="limit")
    pixels = sum(dataset.images[i].width * dataset.images[i].height for i in ids)
    if pixels > limits.max_batch_pixels:
        raise InvalidInput(
            f"the chosen images have {pixels} pixels in all, more than the limit of {limits.max_batch_pixels}",
            ["body", where],
            type="limit",
        )
    return ids


def run_dataset_batch(dataset: Dataset, request: DatasetBatchRequest, ctx: JobContext) -> Answer:
    """``POST /v1/datasets/{name}/batch``: images drawn with ``default_rng(seed)`` (or named),
    checked against the limits and the memory budget, then the pipeline of :func:`run_batch`,
    paired and mixed with the same generator (see :mod:`detmix_service.mixing`)."""
    seed = secrets.randbits(63) if request.seed is None else request.seed
    rng = np.random.default_rng(seed)
    ids = _choose(dataset, request, ctx.limits, rng)
    records = [dataset.images[i] for i in ids]
    annotations = [ann for i in ids for ann in dataset.annotations[i]]
    mask_pixels = 0
    if dataset.masks:
        mask_pixels = sum(dataset.images[a.image_id].width * dataset.images[a.image_id].height for a in annotations)
        if mask_pixels > ctx.limits.max_mask_pixels:
            raise InvalidInput(f"the chosen images' masks would take {mask_pixels} pixels, more than the limit of "
                               f"{ctx.limits.max_mask_pixels}", ["body"], type="limit")
    if ctx.limits.memory_budget is not None:
        polygons, rle = segmentation_sizes(annotations) if dataset.masks else (0, 0)
        cost = batch_cost([(r.height, r.width) for r in records], mask_pixels, polygons, rle, len(annotations))
        if cost.total > ctx.limits.memory_budget:
            raise InvalidInput(over_budget_message("the chosen images", cost, ctx.limits.memory_budget), ["body"],
                               type="memory_budget")

    def pixels(checkpoint: Callable[[], None]) -> list[np.ndarray]:
        out = []
        for image_id in ids:
            checkpoint()
            out.append(dataset.read(image_id))
        return out

    source = BatchSource(records, annotations, dataset.categories, dataset.masks, pixels)
    return run_batch(source, request, ctx, ["body"], seed=seed, rng=rng)
