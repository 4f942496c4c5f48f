"""The batch engine: pair the images of a batch, mix every pair with detmix, answer in COCO.

How pairs are formed (the same rule as :class:`detmix.torch.BatchMix`): with
``rng = numpy.random.default_rng(seed)``, ``order = rng.permutation(B)`` and image ``order[k]``
takes image ``order[k + 1 mod B]`` as its partner, so for ``B >= 2`` no image is paired with
itself and every image is the partner of exactly one other. Output ``i`` keeps image ``i``'s
canvas (``recipe.align``: ``pad`` puts both on the larger canvas, ``resize`` brings the partner to
image ``i``'s size) and its parameters are then drawn from the same generator, image by image in
batch order, by :func:`detmix.sampling.sample_params`. A batch of one image is not mixed (mode
``none``). Everything after the draw is :func:`detmix.mix_pair` (which aligns only the cut box
of the partner for a CutMix): the answer for a pair equals the core's for the same parameters,
which the answer carries so that the call can be replayed.

This module is plain synchronous code; the app runs it in a worker thread and passes a
``checkpoint`` that raises when the request's deadline passed or its client left.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from detmix import mix_pair
from detmix.mix import draw_params
from detmix.modes import get_mode
from detmix.align import align_canvas
from detmix.coco import BOX_OVERSHOOT, box_overshoot
from detmix.rle import encode_rles
from detmix.functional import DropReason
from detmix.recipes import Recipe
from detmix.sampling import MixParams
from detmix_service.cocoio import (
    CocoAnnotation,
    CocoCategory,
    CocoImage,
    clip_box,
    encode_image,
    instance_masks,
)
from detmix_service.errors import InvalidInput
from detmix_service.schemas import ImageParams, OutputOptions

__all__ = ["Plan", "SourceImage", "clipped_boxes", "draw_plan", "mix_batch", "replay_plan"]

logger = logging.getLogger(__name__)

#: Per-box keys that ride along with the boxes through the kernels.
BOX_KEYS = ("ann_id",)
_EXTENSIONS = {"jpeg": "jpg", "png": "png"}


@dataclass(frozen=True)
class SourceImage:
    """A decoded input image with its validated annotations."""

    record: CocoImage
    pixels: np.ndarray  # (H, W, 3) uint8
    annotations: tuple[CocoAnnotation, ...]
    masks: bool  # mix instance masks (every annotation of the batch has a segmentation)

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def canvas(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def bare(self) -> dict[str, Any]:
        """The pixels alone as a sample (no annotation decoded): what a draw needs of the canvas."""
        return {"image": self.pixels, "boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}

    @cached_property
    def objects(self) -> tuple[CocoAnnotation, ...]:
        """The annotations that are objects (``iscrowd=0``), in the request's order."""
        return tuple(a for a in self.annotations if not a.iscrowd)

    @cached_property
    def crowd(self) -> tuple[CocoAnnotation, ...]:
        """The crowd regions (``iscrowd=1``): never objects, mixed as regions to ignore."""
        return tuple(a for a in self.annotations if a.iscrowd)

    @cached_property
    def sample(self) -> dict[str, Any]:
        """The detmix sample: the objects' xyxy boxes (clipped to the image), category ids as
        labels and masks; the crowd regions' boxes and masks apart (``crowd_boxes``,
        ``crowd_masks``), as :func:`detmix.functional.mix_crowd` reads them."""
        height, width = self.canvas
        anns, crowd = self.objects, self.crowd
        sample: dict[str, Any] = {
            "image": self.pixels,
            "boxes": _boxes(anns, width, height),
            "labels": np.array([a.category_id for a in anns], dtype=np.int64),
            "ann_id": np.array([a.id for a in anns], dtype=np.int64),
            "crowd_boxes": _boxes(crowd, width, height),
        }
        if self.masks:
            sample["masks"] = instance_masks(anns, height, width)
            sample["crowd_masks"] = instance_masks(crowd, height, width)
        return sample


def _boxes(anns: Sequence[CocoAnnotation], width: int, height: int) -> np.ndarray:
    return np.array([clip_box(a.bbox, width, height) for a in anns], dtype=np.float64).reshape(-1, 4)


@dataclass(frozen=True)
class Plan:
    """Who is mixed with whom and how: ``partner[i]`` is an index into the batch."""

    partner: tuple[int, ...]
    params: tuple[MixParams, ...]
    seed: int | None


def draw_plan(images: Sequence[SourceImage], recipe: Recipe, rng: np.random.Generator, seed: int | None) -> Plan:
    """Pairs and parameters drawn from ``rng`` (see the module docstring for the order)."""
    size = len(images)
    if size == 1:
        return Plan((0,), (get_mode("none").sample(rng, None, *images[0].canvas),), seed)
    order = rng.permutation(size)
    partner = np.empty(size, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    # The canvas is all a draw needs, unless a mode looks at the partner (then its whole sample).
    reads = any(get_mode(name).reads_partner for name in recipe.sections())
    params = tuple(
        draw_params(rng, recipe, images[i].bare, images[int(partner[i])].sample if reads else images[int(partner[i])].bare)
        for i in range(size)
    )
    return Plan(tuple(int(p) for p in partner), params, seed)


def replay_plan(
    images: Sequence[SourceImage], recipe: Recipe, given: Sequence[ImageParams], prefix: Sequence[str | int]
) -> Plan:
    """The plan of an earlier answer, checked against this batch and recipe."""
    index = {image.id: i for i, image in enumerate(images)}
    loc = [*prefix, "params"]
    if len(given) != len(images):
        raise InvalidInput(f"params must hold one entry per image ({len(images)}), got {len(given)}", loc)
    partner = [0] * len(images)
    params: list[MixParams | None] = [None] * len(images)
    for k, item in enumerate(given):
        here = [*loc, k]
        i = index.get(item.image_id)
        if i is None or params[i] is not None:
            why = "is not the id of an image of the batch" if i is None else "appears twice"
            raise InvalidInput(f"params[{k}]: image_id {item.image_id} {why}", [*here, "image_id"])
        j = index.get(item.partner_id)
        if j is None:
            raise InvalidInput(
                f"params[{k}]: partner_id {item.partner_id} is not the id of an image of the batch", [*here, "partner_id"]
            )
        params[i] = _replayed_params(item, images[i], images[j], recipe, here)
        partner[i] = j
    return Plan(tuple(partner), tuple(params), None)


def _replayed_params(item: ImageParams, a: SourceImage, b: SourceImage, recipe: Recipe, loc: list) -> MixParams:
    p = item.params
    canvas = align_canvas(a.canvas, b.canvas, recipe.align)
    if p.canvas is not None and tuple(p.canvas) != canvas:
        raise InvalidInput(
            f"image {a.id}: params.canvas {p.canvas} must be [height, width] = {list(canvas)}, the canvas of image "
            f"{a.id} with partner {b.id} under align={recipe.align!r}",
            [*loc, "params", "canvas"],
        )
    try:
        mode = get_mode(p.mode)
    except ValueError as error:
        raise InvalidInput(f"image {a.id}: params.{error}", [*loc, "params", "mode"]) from None
    if mode.config is not None and recipe.section(p.mode) is None:
        raise InvalidInput(
            f"image {a.id}: params.mode {p.mode!r} needs a {p.mode!r} section in recipe {recipe.name!r}",
            [*loc, "params", "mode"],
        )
    record = p.model_dump() | {"canvas": list(canvas)}
    try:
        return MixParams.from_dict(record)  # the mode checks its own parameters
    except ValueError as error:
        named = str(error).split(" ", 1)[0]
        field = named if named in record or named in mode.extra_keys else None
        raise InvalidInput(f"image {a.id}: params.{error}", [*loc, "params", *([field] if field else [])]) from None


def clipped_boxes(images: Sequence[SourceImage]) -> list[dict[str, Any]]:
    """The input annotations whose box poked out of its image (by at most
    :data:`detmix.coco.BOX_OVERSHOOT`, or validation would have refused it) and was clipped."""
    out = []
    for image in images:
        height, width = image.canvas
        for ann in image.annotations:
            overshoot = box_overshoot(ann.bbox, width, height)
            if overshoot > 0:
                out.append({"image_id": image.id, "annotation_id": ann.id, "overshoot": overshoot})
    return out


def _crowd_annotations(
    out: dict[str, Any], image: SourceImage, sources: tuple[SourceImage, SourceImage], first_id: int
) -> list[dict[str, Any]]:
    """The crowd regions of a mixed image as COCO annotations: ``iscrowd`` 1, the mixed RLE and
    the box of the visible part, no ``mix_weight`` (they are never targets), never dropped."""
    boxes = out.get("crowd_boxes")
    if boxes is None or not len(boxes):
        return []
    segmentations = encode_rles(out["crowd_masks"]) if image.masks else None
    annotations = []
    for k in range(len(boxes)):
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        origin = sources[int(out["crowd_source"][k])]
        ann = origin.crowd[int(out["crowd_index"][k])]
        annotation = {
            "id": first_id + k + 1,
            "image_id": image.id,
            "category_id": ann.category_id,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": float(out["crowd_masks"][k].sum()) if image.masks else (x2 - x1) * (y2 - y1),
            "iscrowd": 1,
            "source_image_id": origin.id,
            "source_annotation_id": ann.id,
        }
        if segmentations is not None:
            annotation["segmentation"] = segmentations[k]
        annotations.append(annotation)
    return annotations


def mix_batch(
    images: Sequence[SourceImage],
    categories: Sequence[CocoCategory],
    recipe: Recipe,
    plan: Plan,
    output: OutputOptions,
    checkpoint: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Mix every image with its partner and return the answer (a :class:`MixResponse` as plain
    JSON-ready data)."""
    out_images: list[dict[str, Any]] = []
    out_annotations: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        checkpoint()
        partner = images[plan.partner[i]]
        params = plan.params[i]
        try:
            out = mix_pair(image.sample, partner.sample, params, recipe, box_keys=BOX_KEYS)
        except ValueError as error:  # what the mode cannot do with this batch (copy_paste without masks)
            raise InvalidInput(f"image {image.id} with partner {partner.id}: {error}", ["body"], type="mix") from None
        pixels = out["image"]
        height, width = pixels.shape[:2]
        sources = (image, partner)
        segmentations = encode_rles(out["masks"]) if image.masks else None
        for k in range(len(out["boxes"])):
            x1, y1, x2, y2 = (float(v) for v in out["boxes"][k])
            source = int(out["source"][k])
            annotation = {
                "id": len(out_annotations) + 1,
                "image_id": image.id,
                "category_id": int(out["labels"][k]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(out["masks"][k].sum()) if image.masks else (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
                "mix_weight": float(out["weights"][k]),
                "source_image_id": sources[source].id,
                "source_annotation_id": int(out["ann_id"][k]),
            }
            if segmentations is not None:
                annotation["segmentation"] = segmentations[k]
            out_annotations.append(annotation)
        out_annotations.extend(_crowd_annotations(out, image, sources, len(out_annotations)))
        lost = out["dropped"]
        rows = zip(lost["source"], lost["index"], lost["visibility"], lost["reason"], strict=True)
        for source, row, visibility, reason in rows:
            if source == 1 and not get_mode(params.mode).partner_in_play(params):
                continue  # nothing of the partner was in play
            origin = sources[int(source)]
            dropped.append({
                "image_id": image.id,
                "source_image_id": origin.id,
                "source_annotation_id": int(origin.sample["ann_id"][row]),
                "category_id": int(origin.sample["labels"][row]),
                "visibility": float(visibility),
                "reason": DropReason(int(reason)).name.lower(),
            })
        data = encode_image(pixels, output.format, output.quality)
        out_images.append({
            "id": image.id,
            "width": int(width),
            "height": int(height),
            "file_name": f"mixed-{image.id}.{_EXTENSIONS[output.format]}",
            "format": output.format,
            "data": base64.b64encode(data).decode("ascii"),
            "mix": {"image_id": image.id, "partner_id": partner.id, "params": params.to_dict()},
        })
    clipped = clipped_boxes(images)
    if clipped:
        logger.info("clipped %d boxes that poked out of their image by at most %g px (annotation ids %s%s)",
                    len(clipped), BOX_OVERSHOOT, [c["annotation_id"] for c in clipped[:5]],
                    " ..." if len(clipped) > 5 else "")
    return {
        "images": out_images,
        "annotations": out_annotations,
        "categories": [c.model_dump() for c in categories],
        "dropped": dropped,
        "clipped": clipped,
        "recipe": recipe.model_dump(mode="json"),
        "seed": plan.seed,
    }
