"""Fuzzing the COCO validator: whatever comes, it answers with a validation error or a batch that
the mask code (pycocotools) and the detmix kernels then take without failing."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detmix_service.cocoio import Limits, check_batch, clip_box, instance_masks
from detmix_service.errors import InvalidInput
from detmix_service.jobs import parse_model
from detmix_service.schemas import MixRequest

LIMITS = Limits(max_batch_images=8, max_image_pixels=10_000, max_batch_pixels=40_000, max_annotations_per_image=20,
                max_mask_pixels=200_000)

RLE_ALPHABET = "".join(chr(c) for c in range(48, 112))  # '0'..'o', the characters of compressed RLE counts
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def valid_batch(draw: st.DrawFn) -> dict[str, Any]:
    images, annotations = [], []
    for image_id in range(1, draw(st.integers(1, 3)) + 1):
        width, height = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        images.append({"id": image_id, "width": width, "height": height, "data": ""})
        for _ in range(draw(st.integers(0, 3))):
            x = draw(st.floats(0, width - 0.5))
            y = draw(st.floats(0, height - 0.5))
            w = draw(st.floats(0.1, width - x)) if width - x >= 0.1 else width - x
            h = draw(st.floats(0.1, height - y)) if height - y >= 0.1 else height - y
            ann: dict[str, Any] = {"id": len(annotations) + 1, "image_id": image_id,
                                   "category_id": draw(st.sampled_from([1, 2])), "bbox": [x, y, w, h],
                                   "iscrowd": draw(st.sampled_from([0, 1]))}
            kind = draw(st.sampled_from(["none", "polygon", "counts", "string"]))
            if kind == "polygon":
                ann["segmentation"] = [[x, y, x + w, y, x + w, y + h]]
            elif kind == "counts":
                ann["segmentation"] = {"size": [height, width], "counts": [3, width * height - 3]
                                       if width * height > 3 else [width * height]}
            elif kind == "string":
                counts = draw(st.text(RLE_ALPHABET, max_size=6))  # may or may not decode
                ann["segmentation"] = {"size": [height, width], "counts": counts}
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location inside a JSON value."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for k, child in enumerate(value):
            found += paths(child, (*prefix, k))
    return found


@st.composite
def near_valid_batches(draw: st.DrawFn) -> Any:
    batch = valid_batch(draw)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(paths(batch)))
        if not where:
            continue
        parent = batch
        for key in where[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            parent.pop(where[-1])
        else:
            parent[where[-1]] = draw(json_values | st.integers(-3, 15) | st.floats(-3, 15))
    return batch


def validate(raw: Any) -> MixRequest:
    request = parse_model(MixRequest, raw, ["body"])
    check_batch(request, LIMITS, ["body"])
    return request


def consume(request: MixRequest) -> None:
    """What the service does next with a valid batch: boxes into xyxy, masks rasterised."""
    masks = bool(request.annotations) and all(a.segmentation is not None for a in request.annotations)
    by_id = {image.id: image for image in request.images}
    for ann in request.annotations:
        image = by_id[ann.image_id]
        x1, y1, x2, y2 = clip_box(ann.bbox, image.width, image.height)
        assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
        if masks:
            (mask,) = instance_masks([ann], image.height, image.width)
            assert mask.shape == (image.height, image.width) and mask.dtype == np.uint8


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid_batches())
def test_near_valid_batches_validate_or_fail_cleanly(raw):
    original = copy.deepcopy(raw)
    try:
        request = validate(raw)
    except InvalidInput as error:
        assert error.errors and all(item["loc"][0] == "body" and item["msg"] for item in error.errors)
        return
    finally:
        assert raw == original or raw != raw  # never modified (NaN compares unequal to itself)
    consume(request)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_arbitrary_json_fails_cleanly(raw):
    try:
        consume(validate(raw))
    except InvalidInput as error:
        assert error.errors


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_valid_batches_pass(data):
    consume(validate(valid_batch_without_strings(data.draw)))


def valid_batch_without_strings(draw: st.DrawFn) -> dict[str, Any]:
    batch = valid_batch(draw)
    for ann in batch["annotations"]:
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, dict) and isinstance(segmentation["counts"], str):
            ann.pop("segmentation")
    kinds = {"segmentation" in ann for ann in batch["annotations"]}
    if kinds == {True, False}:
        for ann in batch["annotations"]:
            ann.pop("segmentation", None)
    return batch
