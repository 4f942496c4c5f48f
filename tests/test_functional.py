"""The box, mask, weight and pixel rules of detmix.functional, one test per rule."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from conftest import make_sample, to_numpy, to_torch
from detmix import functional as F
from detmix.functional import DropReason


def _by_key(out):
    """{(source, index): (box, weight, label)} of the kept boxes."""
    return {
        (int(s), int(i)): (list(map(float, b)), float(w), int(lab))
        for s, i, b, w, lab in zip(out["source"], out["index"], out["boxes"], out["weights"], out["labels"])
    }


def _dropped(out):
    d = out["dropped"]
    return {(int(s), int(i)): (float(v), DropReason(int(r))) for s, i, v, r in
            zip(d["source"], d["index"], d["visibility"], d["reason"])}


# ---------------------------------------------------------------- pixels and lam


def test_cutmix_pixels_b_inside_a_outside_and_lam():
    a = make_sample(40, 60, fill=10)
    b = make_sample(40, 60, fill=200)
    b["image"][..., 1] = 77  # channels must move together
    out = F.cutmix(a, b, (5, 10, 25, 30))
    region = np.zeros((40, 60), bool)
    region[10:30, 5:25] = True
    np.testing.assert_array_equal(out["image"][region], b["image"][region])
    np.testing.assert_array_equal(out["image"][~region], a["image"][~region])
    assert out["lam"] == pytest.approx(1 - 20 * 20 / (40 * 60))


def test_cutmix_torch_layout_is_chw():
    a, b = make_sample(30, 50, fill=1), make_sample(30, 50, fill=9)
    out = F.cutmix(to_torch(a), to_torch(b), (10, 0, 20, 5))
    assert out["image"].shape == (3, 30, 50)
    img = to_numpy(out["image"])
    assert (img[:, 0:5, 10:20] == 9).all() and img.sum() == 9 * 3 * 50 + 1 * 3 * (30 * 50 - 50)


def test_mixup_pixels_rounded_without_overflow():
    a, b = make_sample(4, 4, fill=255), make_sample(4, 4, fill=254)
    out = F.mixup(a, b, lam=0.5)
    assert out["image"].dtype == np.uint8
    assert (out["image"] == 254).all()  # 254.5 rounds half to even, never wraps to 0
    a["image"][:] = 255
    b["image"][:] = 255
    assert (F.mixup(a, b, lam=0.3)["image"] == 255).all()


def _blend_reference(a, b, lam):
    """The uint8 MixUp as numpy computes it written out: float32, half to even, clipped."""
    mixed = lam * a.astype(np.float32) + (1 - lam) * b.astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("lam", [0.37, 0.5, 1 / 3, np.float64(0.61), np.float32(0.2), 0, 1, 1e-7])
def test_mixup_uint8_table_equals_the_direct_blend_for_every_pair_of_levels(lam, monkeypatch):
    levels = np.arange(256, dtype=np.uint8)
    a, b = np.repeat(levels, 256).reshape(256, 256), np.tile(levels, 256).reshape(256, 256)
    taken = []
    by_table = F._mixup_uint8_by_table
    monkeypatch.setattr(F, "_mixup_uint8_by_table", lambda *args: taken.append(1) or by_table(*args))
    monkeypatch.setattr(F, "_TABLE_MIN_SIZE", 0)
    out = F.mixup_image(a, b, lam)
    assert taken, "the table path was not taken"
    assert out.dtype == np.uint8 and out.shape == a.shape
    np.testing.assert_array_equal(out, _blend_reference(a, b, lam))


def test_mixup_uint8_photograph_goes_through_the_table_and_matches(monkeypatch):
    rng = np.random.default_rng(5)
    a, b = (rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(2))
    taken = []
    by_table = F._mixup_uint8_by_table
    monkeypatch.setattr(F, "_mixup_uint8_by_table", lambda *args: taken.append(1) or by_table(*args))
    np.testing.assert_array_equal(F.mixup_image(a, b, 0.4183), _blend_reference(a, b, 0.4183))
    assert taken
    taken.clear()  # per-image lam, broadcast partner, small image: the direct blend
    lam = np.array([0.3], dtype=np.float32)[:, None, None]
    np.testing.assert_array_equal(F.mixup_image(a, b, lam), _blend_reference(a, b, lam))
    np.testing.assert_array_equal(F.mixup_image(a, b[:1], 0.3), _blend_reference(a, b[:1], 0.3))
    np.testing.assert_array_equal(F.mixup_image(a[:8], b[:8], 0.3), _blend_reference(a[:8], b[:8], 0.3))
    assert not taken


def test_mixup_float_images_blend_exactly():
    a = make_sample(3, 3, fill=0, dtype=np.float32)
    b = make_sample(3, 3, fill=0, dtype=np.float32)
    a["image"][:] = 1.0
    out = F.mixup(a, b, lam=0.6)
    np.testing.assert_allclose(out["image"], 0.6, rtol=1e-6)
    assert out["image"].dtype == np.float32


# ---------------------------------------------------------------- box rules


def test_box_of_b_becomes_its_intersection_with_the_cut():
    a = make_sample(100, 100)
    b = make_sample(100, 100, [[30, 30, 50, 70]])
    out = F.cutmix(a, b, (40, 40, 60, 60))
    box, weight, _ = _by_key(out)[(1, 0)]
    assert box == [40, 40, 50, 60]
    assert weight == pytest.approx(10 * 20 / (20 * 40))


def test_box_of_a_shrinks_only_where_the_cut_spans_it():
    a = make_sample(100, 100, [[20, 20, 60, 40], [20, 20, 80, 80], [20, 20, 60, 60]])
    out = F.cutmix(a, make_sample(100, 100), (10, 0, 30, 100))  # full-height strip over the left part
    kept = _by_key(out)
    assert kept[(0, 0)][0] == [30, 20, 60, 40] and kept[(0, 0)][1] == pytest.approx(0.75)
    out = F.cutmix(a, make_sample(100, 100), (40, 40, 60, 60))  # hole in the middle: box unchanged
    assert _by_key(out)[(0, 1)][0] == [20, 20, 80, 80]
    assert _by_key(out)[(0, 1)][1] == pytest.approx(1 - 400 / 3600)
    out = F.cutmix(a, make_sample(100, 100), (0, 50, 100, 100))  # bottom strip: bottom edge moves up
    assert _by_key(out)[(0, 2)][0] == [20, 20, 60, 50]


def test_split_box_keeps_its_tight_box():
    a = make_sample(100, 100, [[20, 20, 80, 40]])
    out = F.cutmix(a, make_sample(100, 100), (40, 0, 60, 100))
    assert _by_key(out)[(0, 0)][0] == [20, 20, 80, 40]


def test_covered_and_outside_boxes_are_dropped_as_invisible():
    a = make_sample(100, 100, [[45, 45, 55, 55]])
    b = make_sample(100, 100, [[70, 70, 90, 90], [60, 40, 70, 50]])  # second touches the cut's edge only
    out = F.cutmix(a, b, (40, 40, 60, 60))
    assert len(out["boxes"]) == 0
    assert _dropped(out) == {
        (0, 0): (0.0, DropReason.INVISIBLE),
        (1, 0): (0.0, DropReason.INVISIBLE),
        (1, 1): (0.0, DropReason.INVISIBLE),
    }


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"min_visibility": 0.5}, DropReason.MIN_VISIBILITY),
        ({"min_area": 101.0}, DropReason.MIN_AREA),
        ({"min_size": 11.0}, DropReason.MIN_SIZE),
    ],
)
def test_thresholds_drop_with_their_reason(kwargs, reason):
    b = make_sample(100, 100, [[30, 30, 50, 50]])  # 10x10 of it inside the cut: visibility 0.25
    out = F.cutmix(make_sample(100, 100), b, (40, 40, 60, 60), **kwargs)
    assert _dropped(out) == {(1, 0): (0.25, reason)}
    kept = F.cutmix(make_sample(100, 100), b, (40, 40, 60, 60), min_visibility=0.25, min_area=100, min_size=10)
    assert (1, 0) in _by_key(kept)  # thresholds are inclusive: equal is kept


def test_weight_modes():
    a = make_sample(10, 10, [[0, 0, 10, 10]])
    b = make_sample(10, 10, [[0, 0, 10, 10]])
    cut = (0, 0, 4, 10)  # lam = 0.6: a's box keeps 60%, b's box 40%
    vis = _by_key(F.cutmix(a, b, cut))
    assert vis[(0, 0)][1] == pytest.approx(0.6) and vis[(1, 0)][1] == pytest.approx(0.4)
    share = _by_key(F.cutmix(a, b, cut, weight="lam"))
    assert share[(0, 0)][1] == pytest.approx(0.6) and share[(1, 0)][1] == pytest.approx(0.4)
    a2 = make_sample(10, 10, [[0, 0, 2, 10]])  # fully outside the image share
    b2 = make_sample(10, 10, [[0, 0, 4, 10]])
    lam = _by_key(F.cutmix(a2, b2, (0, 0, 1, 10), weight="lam"))
    assert lam[(0, 0)][1] == pytest.approx(0.9) and lam[(1, 0)][1] == pytest.approx(0.1)
    vis = _by_key(F.cutmix(a2, b2, (0, 0, 1, 10)))
    assert vis[(0, 0)][1] == pytest.approx(0.5) and vis[(1, 0)][1] == pytest.approx(0.25)
    hard = _by_key(F.cutmix(a2, b2, (0, 0, 1, 10), weight="hard"))
    assert {w for _, w, _ in hard.values()} == {1.0}


def test_mixup_boxes_are_the_union_weighted_by_share():
    a = make_sample(20, 20, [[1, 1, 5, 5]], labels=[3])
    b = make_sample(20, 20, [[2, 2, 9, 9], [0, 0, 20, 20]], labels=[4, 5])
    out = F.mixup(a, b, lam=0.7)
    assert _by_key(out) == {
        (0, 0): ([1, 1, 5, 5], pytest.approx(0.7), 3),
        (1, 0): ([2, 2, 9, 9], pytest.approx(0.3), 4),
        (1, 1): ([0, 0, 20, 20], pytest.approx(0.3), 5),
    }
    assert out["lam"] == 0.7
    gone = F.mixup(a, b, lam=0.9, min_weight=0.2)
    assert _dropped(gone) == {(1, 0): (pytest.approx(0.1), DropReason.MIN_WEIGHT),
                              (1, 1): (pytest.approx(0.1), DropReason.MIN_WEIGHT)}
    assert {w for _, w, _ in _by_key(F.mixup(a, b, lam=0.7, weight="hard")).values()} == {1.0}


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_mixup_at_the_ends_keeps_only_the_visible_image(lam):
    a = make_sample(8, 8, [[1, 1, 4, 4]], fill=3)
    b = make_sample(8, 8, [[2, 2, 6, 6]], fill=100)
    out = F.mixup(a, b, lam=lam)
    visible = 0 if lam == 1.0 else 1
    np.testing.assert_array_equal(out["image"], (a, b)[visible]["image"])
    assert set(_by_key(out)) == {(visible, 0)}
    assert _dropped(out) == {(1 - visible, 0): (0.0, DropReason.INVISIBLE)}


# ---------------------------------------------------------------- masks


def test_masks_follow_the_pixels_and_give_exact_coco_boxes():
    a = make_sample(30, 30, [[2, 2, 20, 20]], masks=True)
    a["masks"][0, 2:6, 2:20] = 0  # an object that does not fill its box
    a["boxes"][0] = [2, 6, 20, 20]
    b = make_sample(30, 30, [[10, 10, 28, 28]], masks=True)
    cut = (15, 0, 30, 30)
    out = F.cutmix(a, b, cut)
    region = np.zeros((30, 30), bool)
    region[:, 15:30] = True
    expected_a = a["masks"][0].astype(bool) & ~region
    expected_b = b["masks"][0].astype(bool) & region
    np.testing.assert_array_equal(out["masks"][0], expected_a)
    np.testing.assert_array_equal(out["masks"][1], expected_b)
    assert out["masks"].dtype == np.uint8
    for m, box in zip(out["masks"], out["boxes"]):
        x, y, w, h = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m)))
        np.testing.assert_allclose(box, [x, y, x + w, y + h])
    weights = _by_key(out)
    assert weights[(0, 0)][1] == pytest.approx(expected_a.sum() / a["masks"][0].sum())
    assert weights[(1, 0)][1] == pytest.approx(expected_b.sum() / b["masks"][0].sum())


def test_empty_mask_is_dropped_not_lost():
    a = make_sample(10, 10, [[1, 1, 5, 5]], masks=True)
    a["masks"][:] = 0
    out = F.cutmix(a, make_sample(10, 10, masks=True), (0, 0, 0, 0))
    assert _dropped(out) == {(0, 0): (0.0, DropReason.INVISIBLE)}


def test_masks_to_boxes_matches_pycocotools(rng):
    masks = (rng.random((20, 17, 23)) > 0.97).astype(np.uint8)
    masks[0] = 0
    boxes = F.masks_to_boxes(masks, np.float64)
    for m, box in zip(masks, boxes):
        x, y, w, h = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m)))
        np.testing.assert_array_equal(box, [x, y, x + w, y + h])


# ---------------------------------------------------------------- bookkeeping


def test_extras_ride_along_and_sample_keys_pass_through():
    a = make_sample(50, 50, [[0, 0, 10, 10], [30, 30, 40, 40]], ids=[101, 102], iscrowd=[0, 0])
    b = make_sample(50, 50, [[0, 0, 50, 50]], ids=[201], iscrowd=[0])
    a["image_id"] = 7
    out = F.cutmix(a, b, (25, 25, 50, 50))  # covers a's second box entirely
    assert out["ids"].tolist() == [101, 201]
    assert out["iscrowd"].tolist() == [0, 0]
    assert out["image_id"] == 7
    assert "ids" not in out["dropped"]  # dropped rows are named by (source, index)


def test_arrays_of_other_lengths_are_sample_level_from_a():
    a = make_sample(50, 50, [[0, 0, 10, 10], [30, 30, 40, 40]], size=np.array([50, 50]), orig_size=[50, 50])
    b = make_sample(50, 50, [[0, 0, 50, 50]], size=np.array([60]), orig_size=[50, 50])
    out = F.cutmix(a, b, (25, 25, 50, 50))
    assert out["size"] is a["size"] and out["orig_size"] is a["orig_size"]
    # a's and b's size have one row per box by coincidence, but it is a known sample-level key
    assert "crowd_boxes" not in out
    a["tags"], b["tags"] = np.array([1, 2]), np.array([3])  # an unknown key: name the per-box keys to be exact
    assert F.cutmix(a, b, (0, 0, 1, 1))["tags"].tolist() == [1, 2, 3]
    assert F.cutmix(a, b, (0, 0, 1, 1), box_keys=[])["tags"] is a["tags"]
    assert _dropped(out) == {(0, 1): (0.0, DropReason.INVISIBLE)}


def test_inputs_are_not_modified():
    a = make_sample(20, 20, [[0, 0, 10, 10]], masks=True, fill=5, ids=[1])
    b = make_sample(20, 20, [[5, 5, 15, 15]], masks=True, fill=9, ids=[2])
    before = copy.deepcopy((a, b))
    for out in (F.cutmix(a, b, (0, 0, 8, 8)), F.mixup(a, b, 0.3)):
        for s, s0 in zip((a, b), before):
            for k in s0:
                np.testing.assert_array_equal(s[k], s0[k])
        assert out["image"] is not a["image"]


def test_every_input_box_is_kept_or_dropped_exactly_once(rng):
    boxes = np.sort(rng.uniform(0, 64, (40, 2, 2)), axis=1).transpose(0, 2, 1).reshape(40, 4)[:, [0, 2, 1, 3]]
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    a = make_sample(64, 64, boxes[:20])
    b = make_sample(64, 64, boxes[20:])
    out = F.cutmix(a, b, (10, 5, 50, 40), min_visibility=0.3, min_size=2)
    seen = list(_by_key(out)) + list(_dropped(out))
    assert sorted(seen) == sorted([(0, i) for i in range(len(a["boxes"]))] + [(1, i) for i in range(len(b["boxes"]))])


def test_degenerate_but_legal_inputs():
    empty = make_sample(16, 16)
    out = F.cutmix(empty, empty, (4, 4, 12, 12))
    assert out["boxes"].shape == (0, 4) and out["weights"].shape == (0,)
    a = make_sample(16, 16, [[1, 1, 3, 3]])
    b = make_sample(16, 16, [[2, 2, 9, 9]])
    zero = F.cutmix(a, b, (5, 5, 5, 9))  # zero-area cut: a unchanged, b's boxes dropped
    assert zero["lam"] == 1.0 and set(_by_key(zero)) == {(0, 0)} and set(_dropped(zero)) == {(1, 0)}
    whole = F.cutmix(a, b, (0, 0, 16, 16))
    assert whole["lam"] == 0.0 and set(_by_key(whole)) == {(1, 0)}
    np.testing.assert_array_equal(whole["image"], b["image"])
    lists = F.cutmix({"image": a["image"], "boxes": [[1, 1, 3, 3]], "labels": [1]},
                     {"image": b["image"], "boxes": [], "labels": []}, (0, 0, 2, 2))
    assert lists["boxes"].dtype == np.float32 and lists["labels"].tolist() == [1]


# ---------------------------------------------------------------- bad input


GOOD_A = make_sample(20, 30, [[1, 1, 5, 5]])


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"boxes": np.zeros((1, 3))}, ValueError, r"a\['boxes'\] must have shape \(N, 4\).*got shape \(1, 3\)"),
        ({"labels": np.array([1, 2])}, ValueError, r"a\['labels'\] must have shape \(1,\).*got \(2,\)"),
        ({"boxes": np.array([[1, 1, np.nan, 5]])}, ValueError, r"a\['boxes'\]\[0\] must be finite, got \[1.0, 1.0, nan"),
        ({"boxes": np.array([[5, 1, 1, 5]])}, ValueError, r"x1 < x2 and y1 < y2.*got \[5.0, 1.0, 1.0, 5.0\]"),
        ({"boxes": np.array([[1, 1, 31, 5]])}, ValueError, r"inside the 30x20 canvas.*got \[1.0, 1.0, 31.0, 5.0\]"),
        ({"image": np.zeros((20, 30, 3), np.int32)}, TypeError, r"a\['image'\] must have dtype in .*got int32"),
        ({"image": [[0]]}, TypeError, r"a\['image'\] must be a numpy array .* got list"),
        ({"image": np.zeros((2, 20, 30, 3), np.uint8)}, ValueError, r"\(H, W, C\) or \(H, W\).*got shape \(2, 20, 30, 3\)"),
        ({"labels": np.array([1.5])}, TypeError, r"a\['labels'\] must be integers, got dtype float64"),
        ({"masks": np.zeros((1, 10, 30), np.uint8)}, ValueError, r"a\['masks'\] must have shape \(1, 20, 30\).*got \(1, 10, 30\)"),
        ({"masks": np.zeros((1, 20, 30), np.float32)}, TypeError, r"a\['masks'\] must be bool or uint8, got dtype float32"),
    ],
)
def test_bad_samples_are_named(change, error, match):
    a = {**GOOD_A, **change}
    with pytest.raises(error, match=match):
        F.cutmix(a, make_sample(20, 30), (0, 0, 1, 1))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cut_box": (0, 0, 31, 5)}, ValueError, r"cut_box must satisfy 0 <= x1 <= x2 <= 30 .* got \(0, 0, 31, 5\)"),
        ({"cut_box": (5, 0, 2, 5)}, ValueError, r"cut_box must satisfy"),
        ({"cut_box": (0, 0, 2.5, 5)}, ValueError, r"cut_box must hold whole pixel coordinates"),
        ({"cut_box": (0, 0, 2)}, ValueError, r"cut_box must have 4 numbers"),
        ({"cut_box": 3}, TypeError, r"cut_box must be a sequence of 4 numbers"),
        ({"min_visibility": 1.5}, ValueError, r"min_visibility must be in \[0, 1\], got 1.5"),
        ({"min_visibility": float("nan")}, ValueError, r"min_visibility must be in \[0, 1\], got nan"),
        ({"min_area": -1}, ValueError, r"min_area must be a finite number >= 0, got -1.0"),
        ({"min_size": "2"}, TypeError, r"min_size must be a non-negative number, got str"),
        ({"weight": "soft"}, ValueError, r"weight must be one of \('visibility', 'lam', 'hard'\), got 'soft'"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    kwargs = {"cut_box": (0, 0, 1, 1), **kwargs}
    with pytest.raises(error, match=match):
        F.cutmix(GOOD_A, make_sample(20, 30), **kwargs)


def test_bad_pairs_are_named():
    with pytest.raises(ValueError, match=r"same shape \(same canvas\).*detmix.align_pair"):
        F.mixup(GOOD_A, make_sample(21, 30), 0.5)
    with pytest.raises(TypeError, match=r"share a dtype, got uint8 and float32"):
        F.mixup(GOOD_A, make_sample(20, 30, dtype=np.float32), 0.5)
    with pytest.raises(TypeError, match=r"same array kind, got a: numpy, b: torch"):
        F.mixup(GOOD_A, to_torch(make_sample(20, 30)), 0.5)
    with pytest.raises(ValueError, match=r"masks were given for a but not for b"):
        F.mixup(make_sample(20, 30, masks=True), make_sample(20, 30), 0.5)
    with pytest.raises(ValueError, match=r"a\['ids'\] must have one row per box \(1\), got 3 rows"):
        F.mixup({**GOOD_A, "ids": np.arange(3)}, make_sample(20, 30, ids=[]), 0.5, box_keys=["ids"])
    with pytest.raises(ValueError, match=r"box_keys names 'ids' but b\['ids'\] is missing or not an array"):
        F.mixup({**GOOD_A, "ids": np.arange(1)}, make_sample(20, 30), 0.5, box_keys=["ids"])
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\], got -0.1"):
        F.mixup(GOOD_A, make_sample(20, 30), -0.1)
    with pytest.raises(ValueError, match=r"missing \['labels'\]"):
        F.mixup({"image": GOOD_A["image"], "boxes": GOOD_A["boxes"]}, GOOD_A, 0.5)


@pytest.mark.parametrize("layout", ["HWC", "HW", "CHW"])
def test_cutmix_image_slice_and_where_paths_agree(rng, layout):
    shape = {"HWC": (12, 15, 3), "HW": (12, 15), "CHW": (3, 12, 15)}[layout]
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = rng.integers(0, 256, shape, dtype=np.uint8)
    for cut in [(0, 0, 15, 12), (3, 2, 9, 11), (5, 5, 5, 9), (14, 11, 15, 12)]:
        sliced = F.cutmix_image(a, b, cut, layout)
        where = F.cutmix_image(a, b, np.asarray(cut), layout)
        np.testing.assert_array_equal(sliced, where)
        assert sliced is not a
    with pytest.raises(ValueError, match="layout must be 'HWC', 'HW' or 'CHW', got 'NCHW'"):
        F.cutmix_image(a, b, (0, 0, 1, 1), "NCHW")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "uint8"])
def test_torch_image_dtypes_are_kept(dtype):
    import torch

    a, b = to_torch(make_sample(6, 5, [[0, 0, 2, 2]], fill=200)), to_torch(make_sample(6, 5, fill=100))
    a["image"], b["image"] = a["image"].to(getattr(torch, dtype)), b["image"].to(getattr(torch, dtype))
    for out in (F.mixup(a, b, np.float32(0.25)), F.cutmix(a, b, (0, 0, 3, 3))):
        assert out["image"].dtype == getattr(torch, dtype)
    assert F.mixup(a, b, 0.25)["image"].float().mean().item() == pytest.approx(125.0, rel=1e-2)


# ---------------------------------------------------------------- dropped["reason"], as README says


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_dropped_reason_is_int64_codes_of_drop_reason_as_the_readme_says(kind):
    import re
    from pathlib import Path

    import torch

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    claim = " ".join(readme[readme.index('`dropped["reason"]` is'):].split("\n\n")[0].split())
    assert claim.startswith('`dropped["reason"]` is an int64 array (or tensor) of `detmix.DropReason` codes')
    assert dict(re.findall(r"`([A-Z_]+)` (\d)", claim)) == {m.name: str(m.value) for m in DropReason}

    conv = (lambda s: s) if kind == "numpy" else to_torch
    b = make_sample(100, 100, [[30, 30, 50, 50], [90, 90, 95, 95]])  # 1/4 inside the cut; wholly outside it
    cases = [
        (F.cutmix(conv(make_sample(100, 100)), conv(b), (40, 40, 60, 60)), [DropReason.INVISIBLE]),
        (F.cutmix(conv(make_sample(100, 100)), conv(b), (40, 40, 60, 60), min_visibility=0.5),
         [DropReason.MIN_VISIBILITY, DropReason.INVISIBLE]),
        (F.cutmix(conv(make_sample(100, 100)), conv(b), (40, 40, 60, 60), min_area=101.0),
         [DropReason.MIN_AREA, DropReason.INVISIBLE]),
        (F.cutmix(conv(make_sample(100, 100)), conv(b), (40, 40, 60, 60), min_size=11.0),
         [DropReason.MIN_SIZE, DropReason.INVISIBLE]),
        (F.mixup(conv(make_sample(100, 100)), conv(b), 0.95, min_weight=0.1),
         [DropReason.MIN_WEIGHT, DropReason.MIN_WEIGHT]),
        (F.copy_paste(conv(make_sample(100, 100, masks=True)), conv(make_sample(100, 100, [[30, 30, 50, 50],
                      [90, 90, 95, 95]], masks=True)), [0]), [DropReason.NOT_SELECTED]),
    ]
    seen = set()
    for out, expected in cases:
        reason = out["dropped"]["reason"]
        assert isinstance(reason, np.ndarray if kind == "numpy" else torch.Tensor)
        assert str(reason.dtype).endswith("int64")
        names = [DropReason(int(code)) for code in reason]
        assert sorted(names) == sorted(expected)
        assert bool((reason == expected[0]).any())  # compares with the enum directly
        seen.update(names)
    assert seen == set(DropReason)
