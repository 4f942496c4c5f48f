"""The rules on real COCO photographs and annotations (../shared/data/coco-mini).

With instance masks the truth is known exactly: after a cut, an object's visible pixels are its
mask minus (for a) or within (for b) the cut. Every kept box must be the tight box of those
pixels as pycocotools computes it, its weight their share, and nothing visible may lack a box.
"""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from conftest import to_numpy, to_torch
from detmix import RandomMix, align_pair
from detmix import functional as F
from detmix.coco import CocoDetectionSource
from detmix.sampling import sample_cut_box, sample_lam


@pytest.fixture(scope="module")
def source(coco_mini):
    return CocoDetectionSource(coco_mini / "annotations" / "instances_val2017.json", coco_mini / "val2017",
                               masks=True)


def _pairs(source, count, seed):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        i, j = rng.choice(len(source), size=2, replace=False)
        a, b = align_pair(source[int(i)], source[int(j)], "pad")
        yield rng, a, b


def test_boxes_follow_the_visible_pixels_exactly(source):
    checked = 0
    for rng, a, b in _pairs(source, 12, seed=0):
        height, width = a["image"].shape[:2]
        cut, lam = sample_cut_box(rng, sample_lam(rng, 1.0), height, width)
        out = F.cutmix(a, b, cut, min_size=0.0)
        region = np.zeros((height, width), bool)
        region[cut[1]:cut[3], cut[0]:cut[2]] = True
        assert out["lam"] == pytest.approx(lam)
        np.testing.assert_array_equal(out["image"][region], b["image"][region])
        np.testing.assert_array_equal(out["image"][~region], a["image"][~region])

        kept = {(int(s), int(i)) for s, i in zip(out["source"], out["index"])}
        for src, sample, side in ((0, a, ~region), (1, b, region)):
            for i, mask in enumerate(sample["masks"].astype(bool)):
                visible = mask & side
                if visible.any():  # nothing visible may lack a box
                    assert (src, i) in kept, f"visible object {src}:{i} lost its box"
                else:
                    assert (src, i) not in kept
        for k, (src, i) in enumerate(zip(out["source"], out["index"])):
            sample, side = (a, ~region) if src == 0 else (b, region)
            visible = sample["masks"][i].astype(bool) & side
            x, y, w, h = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(visible.astype(np.uint8))))
            given = sample["boxes"][i]
            if (visible == sample["masks"][i].astype(bool)).all():  # untouched: its input box
                expected = given
            else:  # the tight box of the visible pixels, as pycocotools has it, clipped to the input box
                expected = np.clip([x, y, x + w, y + h], [given[0], given[1]] * 2, [given[2], given[3]] * 2)
            np.testing.assert_allclose(out["boxes"][k], expected)
            assert out["weights"][k] == pytest.approx(visible.sum() / sample["masks"][i].sum(), rel=1e-6)
            np.testing.assert_array_equal(out["masks"][k].astype(bool), visible)
            assert out["ids"][k] == sample["ids"][i] and out["labels"][k] == sample["labels"][i]
            checked += 1
    assert checked > 50


def test_boxes_only_never_keep_a_box_of_a_fully_covered_object(source):
    """Without masks the rules cannot see inside a box, but a box is never kept for an object
    whose whole box was covered, and a pasted box never reaches outside the cut."""
    for rng, a, b in _pairs(source, 12, seed=1):
        a = {k: v for k, v in a.items() if k != "masks"}
        b = {k: v for k, v in b.items() if k != "masks"}
        height, width = a["image"].shape[:2]
        cut, _ = sample_cut_box(rng, sample_lam(rng, 1.0), height, width)
        out = F.cutmix(a, b, cut, min_size=0.0)
        x1, y1, x2, y2 = cut
        for box, src, i in zip(out["boxes"], out["source"], out["index"]):
            if src == 1:
                assert x1 <= box[0] and y1 <= box[1] and box[2] <= x2 and box[3] <= y2
            else:
                ax1, ay1, ax2, ay2 = a["boxes"][i]
                assert not (x1 <= ax1 and y1 <= ay1 and ax2 <= x2 and ay2 <= y2)


def test_numpy_and_torch_agree_on_photographs(source):
    mixer = RandomMix("deit")
    for _, a, b in _pairs(source, 4, seed=2):
        seed = 7
        ref = mixer(a, b, np.random.default_rng(seed))
        got = to_numpy(mixer(to_torch(a), to_torch(b), np.random.default_rng(seed)))
        assert got["params"] == ref["params"]
        np.testing.assert_array_equal(np.moveaxis(got["image"], 0, -1), ref["image"])
        for key in ("boxes", "labels", "weights", "source", "index", "masks", "ids"):
            np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
