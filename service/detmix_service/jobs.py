"""What one batch request does, start to end, as plain synchronous code for a worker thread.

``parse`` (JSON, pydantic, cross-record checks) -> ``decode`` (headers checked against the
limits first, then pixels) -> ``plan`` (draw or replay) -> ``mix`` -> JSON bytes. Every step
that can fail on client input raises :class:`~detmix_service.errors.InvalidInput` or
:class:`~detmix_service.errors.UnsupportedMediaType` with the location of the problem.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from detmix.recipes import Recipe
from detmix_service.budget import json_cost, over_budget_message
from detmix_service.cocoio import (
    CocoAnnotation,
    CocoImage,
    Limits,
    check_batch,
    decode_pixels,
    open_image,
    pydantic_errors,
)
from detmix_service.errors import InvalidInput
from detmix_service.mixing import Plan, SourceImage, draw_plan, mix_batch, replay_plan
from detmix_service.schemas import MixRequest, OutputOptions

__all__ = [
    "JPEG_MAX_SIDE", "Answer", "Blob", "JobContext", "check_output_size", "encode_answer", "parse_json", "parse_model",
    "resolve_recipe", "run_mix", "run_plan",
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
    check_output_size(request.images, request.output, [*prefix, "output", "format"])
    recipe = resolve_recipe(request.recipe, ctx.recipes, [*prefix, "recipe"])
    pixels = decode_images(request.images, blobs, ctx.limits, ctx.checkpoint, images_loc)
    images = source_images(request.images, pixels, request.annotations, masks=True)
    plan = run_plan(images, recipe, request.seed, request.params, prefix)
    answer = mix_batch(images, request.categories, recipe, plan, request.output, ctx.checkpoint)
    return encode_answer(answer)
