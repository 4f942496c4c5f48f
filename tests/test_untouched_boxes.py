"""With instance masks, an object the pasted region does not touch keeps its input box exactly,
in every mode and face; a touched one gets the tight box of its visible mask clipped to its input
box. Checked on real COCO annotations, whose float boxes differ from their masks' tight boxes by
up to several pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import to_numpy, to_torch
from detmix import MixParams, align_pair, apply_params, functional as F, load_recipe


@pytest.fixture(scope="module")
def far_from_tight(coco_mini):
    """An image whose COCO boxes are farthest from their masks' tight boxes, and a partner."""
    from detmix.coco import CocoDetectionSource

    annotations = coco_mini / "annotations" / "instances_val2017.json"
    raw = json.loads(annotations.read_text())
    ids = sorted({a["image_id"] for a in raw["annotations"] if not a["iscrowd"]})[:30]
    source = CocoDetectionSource(annotations, coco_mini / "val2017", image_ids=ids)
    best, gap = None, 0.0
    for k in range(len(source)):
        s = source[k]
        if not len(s["boxes"]):
            continue
        d = float(np.abs(F.masks_to_boxes(s["masks"], np.float64) - s["boxes"]).max())
        if d > gap:
            best, gap = k, d
    a = source[best]
    b = source[(best + 1) % len(source)]
    a, b = align_pair(a, b, "resize")
    return a, b, gap


def untouching_cut(masks: np.ndarray, size: int = 24) -> tuple[int, int, int, int]:
    """A cut square that no mask pixel falls in."""
    union = masks.any(axis=0)
    height, width = union.shape
    for y in range(0, height - size, 8):
        for x in range(0, width - size, 8):
            if not union[y:y + size, x:x + size].any():
                return (x, y, x + size, y + size)
    raise AssertionError("no free square")


def test_real_boxes_differ_from_their_masks(far_from_tight):
    """The premise: if COCO's boxes were their masks' tight boxes the tests below prove little."""
    assert far_from_tight[2] > 2.0


def test_an_untouched_object_keeps_its_coco_box_in_cutmix_and_mixup(far_from_tight):
    a, b, _ = far_from_tight
    cut = untouching_cut(a["masks"])
    cutmix = F.cutmix(a, b, cut, min_size=0.0)
    own = cutmix["source"] == 0
    assert own.sum() == len(a["boxes"])  # nothing of a was touched
    np.testing.assert_array_equal(cutmix["boxes"][own], a["boxes"])
    np.testing.assert_array_equal(cutmix["weights"][own], 1.0)
    mixup = F.mixup(a, b, 0.7)
    np.testing.assert_array_equal(mixup["boxes"][mixup["source"] == 0], a["boxes"])
    # deit switches between the two: an untouched object's box no longer jumps
    recipe = load_recipe("deit")
    for params in (MixParams("cutmix", 1 - 24 * 24 / (a["image"].shape[0] * a["image"].shape[1]), cut,
                             a["image"].shape[:2]), MixParams("mixup", 0.7, None, a["image"].shape[:2])):
        out = apply_params(a, b, params, recipe)
        np.testing.assert_array_equal(out["boxes"][out["source"] == 0][: len(a["boxes"])], a["boxes"])


def test_a_touched_object_is_its_visible_mask_clipped_to_its_box(far_from_tight):
    a, b, _ = far_from_tight
    height, width = a["image"].shape[:2]
    cut = (0, 0, width // 2, height)
    out = F.cutmix(a, b, cut, min_size=0.0, min_visibility=0.0)
    for k in range(len(out["boxes"])):
        source, index = int(out["source"][k]), int(out["index"][k])
        given = (a, b)[source]["boxes"][index]
        tight = F.masks_to_boxes(out["masks"][k][None], np.float64)[0]
        expected = np.concatenate([np.maximum(given[:2], tight[:2]), np.minimum(given[2:], tight[2:])])
        if out["weights"][k] == 1:
            expected = given
        np.testing.assert_allclose(out["boxes"][k], expected, rtol=0, atol=1e-4)
        assert (out["boxes"][k][:2] >= given[:2] - 1e-4).all() and (out["boxes"][k][2:] <= given[2:] + 1e-4).all()


def test_batchmix_keeps_untouched_boxes_as_the_core(far_from_tight):
    from detmix.torch import BatchMix, BatchParams

    a, b, _ = far_from_tight
    keys = ("image", "boxes", "labels", "masks")
    samples = [to_torch({k: s[k] for k in keys}) for s in (a, b)]
    images = [s["image"] for s in samples]
    targets = [{k: v for k, v in s.items() if k != "image"} for s in samples]
    cut = untouching_cut(a["masks"])
    height, width = a["image"].shape[:2]
    lam = 1 - 24 * 24 / (height * width)
    params = BatchParams(partner=[1, 0], mode=[2, 2], lam=[lam, lam], cut=[cut, cut], canvas=(height, width),
                         per="pair")
    _, out = BatchMix("cutmix", per="pair").apply(images, targets, params)
    got = to_numpy(out[0])
    ref = apply_params({k: a[k] for k in keys}, {k: b[k] for k in keys},
                       MixParams("cutmix", lam, cut, (height, width)), load_recipe("cutmix"))
    np.testing.assert_array_equal(got["boxes"], ref["boxes"])
    np.testing.assert_array_equal(got["boxes"][: len(a["boxes"])], a["boxes"])
