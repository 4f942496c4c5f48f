"""Properties that must hold for any input: hypothesis draws canvases, boxes, masks and cuts."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEVICES, to_numpy, to_torch
from detmix import RandomMix, functional as F
from detmix.sampling import sample_cut_box, sample_lam

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def boxes_on(draw, height, width, max_boxes=6):
    n = draw(st.integers(0, max_boxes))
    out = []
    for _ in range(n):
        x1 = draw(st.floats(0, width - 1, allow_nan=False, width=32))
        y1 = draw(st.floats(0, height - 1, allow_nan=False, width=32))
        x2 = draw(st.floats(min_value=x1, max_value=width, allow_nan=False, width=32).filter(lambda v, x1=x1: v > x1))
        y2 = draw(st.floats(min_value=y1, max_value=height, allow_nan=False, width=32).filter(lambda v, y1=y1: v > y1))
        out.append([x1, y1, x2, y2])
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


@st.composite
def pairs(draw, with_masks=None):
    height = draw(st.integers(1, 24))
    width = draw(st.integers(1, 24))
    masks = draw(st.booleans()) if with_masks is None else with_masks
    samples = []
    for fill, labels_from in ((30, 1), (220, 100)):
        boxes = draw(boxes_on(height, width))
        n = len(boxes)
        s = {
            "image": np.full((height, width, 3), fill, np.uint8),
            "boxes": boxes,
            "labels": np.arange(labels_from, labels_from + n, dtype=np.int64),
            "ids": np.arange(n, dtype=np.int64) + labels_from * 1000,
        }
        if masks:
            bits = draw(st.lists(st.booleans(), min_size=n * height * width, max_size=n * height * width))
            s["masks"] = np.asarray(bits, np.uint8).reshape(n, height, width)
        samples.append(s)
    x1 = draw(st.integers(0, width))
    x2 = draw(st.integers(x1, width))
    y1 = draw(st.integers(0, height))
    y2 = draw(st.integers(y1, height))
    return samples[0], samples[1], (x1, y1, x2, y2)


thresholds = st.fixed_dictionaries({
    "min_visibility": st.floats(0, 1),
    "min_area": st.floats(0, 50),
    "min_size": st.floats(0, 4),
})


@SETTINGS
@given(pairs(), thresholds)
def test_cutmix_invariants(pair, kw):
    a, b, cut = pair
    out = F.cutmix(a, b, cut, **kw)
    height, width = a["image"].shape[:2]
    n = len(out["boxes"])
    # boxes inside the canvas, well formed, and large enough
    assert ((out["boxes"] >= 0).all() and (out["boxes"][:, [0, 2]] <= width).all()
            and (out["boxes"][:, [1, 3]] <= height).all())
    assert (out["boxes"][:, 2] > out["boxes"][:, 0]).all() and (out["boxes"][:, 3] > out["boxes"][:, 1]).all()
    # everything that rides with the boxes stays aligned with them
    for key in ("labels", "ids", "weights", "source", "index"):
        assert out[key].shape == (n,)
    expected_ids = np.where(out["source"] == 0, a["ids"][out["index"] * (out["source"] == 0)] if len(a["ids"]) else 0,
                            b["ids"][out["index"] * (out["source"] == 1)] if len(b["ids"]) else 0)
    np.testing.assert_array_equal(out["ids"], expected_ids)
    # every input box kept or dropped, exactly once
    seen = sorted(zip(out["source"].tolist(), out["index"].tolist())) + sorted(
        zip(out["dropped"]["source"].tolist(), out["dropped"]["index"].tolist()))
    assert sorted(seen) == sorted([(0, i) for i in range(len(a["boxes"]))] + [(1, i) for i in range(len(b["boxes"]))])
    # lam and weights are shares
    assert 0.0 <= out["lam"] <= 1.0
    assert ((out["weights"] > 0) & (out["weights"] <= 1)).all()
    assert (out["weights"] >= kw["min_visibility"]).all()
    if "masks" in out:
        # an object whose mask the cut leaves whole keeps its input box; a touched one gets the
        # tight box of its visible mask clipped to its input box (never larger); masks lie on
        # their side of the cut
        given = np.array([(a if s == 0 else b)["boxes"][i] for s, i in zip(out["source"], out["index"])]).reshape(-1, 4)
        given_masks = [(a if s == 0 else b)["masks"][i] for s, i in zip(out["source"], out["index"])]
        untouched = np.array([(m == g).all() for m, g in zip(out["masks"], given_masks)], bool)
        tight = F.masks_to_boxes(out["masks"], np.float64)
        clipped = np.concatenate([np.maximum(given[:, :2], tight[:, :2]), np.minimum(given[:, 2:], tight[:, 2:])], axis=1)
        np.testing.assert_array_equal(out["boxes"], np.where(untouched[:, None], given, clipped).reshape(-1, 4))
        assert (untouched == (out["weights"] == 1)).all()
        region = np.zeros((height, width), bool)
        region[cut[1]:cut[3], cut[0]:cut[2]] = True
        for m, s in zip(out["masks"].astype(bool), out["source"]):
            assert not (m & (~region if s == 1 else region)).any()


@SETTINGS
@given(pairs())
def test_zero_area_cut_is_identity(pair):
    a, b, _ = pair
    out = F.cutmix(a, b, (0, 0, 0, 0), min_size=0.0)
    assert out["lam"] == 1.0
    np.testing.assert_array_equal(out["image"], a["image"])
    nonempty = np.ones(len(a["boxes"]), bool) if "masks" not in a else a["masks"].any(axis=(1, 2))
    assert out["index"].tolist() == np.flatnonzero(nonempty).tolist() and (out["source"] == 0).all()
    # nothing is touched: every box that is kept is its input box, with or without masks
    np.testing.assert_array_equal(out["boxes"], a["boxes"][out["index"]])
    assert (out["weights"] == 1).all()
    assert (out["dropped"]["source"] == 1).sum() == len(b["boxes"])


@SETTINGS
@given(pairs(), st.floats(0, 1))
def test_mixup_lam_one_is_identity_and_weights_are_shares(pair, lam):
    a, b, _ = pair
    one = F.mixup(a, b, 1.0)
    np.testing.assert_array_equal(one["image"], a["image"])
    np.testing.assert_array_equal(one["boxes"], a["boxes"])
    out = F.mixup(a, b, lam)
    np.testing.assert_allclose(out["weights"], np.where(out["source"] == 0, lam, 1 - lam))


@SETTINGS
@given(pairs(), thresholds, st.sampled_from(DEVICES))
def test_numpy_and_torch_agree(pair, kw, device):
    a, b, cut = pair
    a32 = {**a, "boxes": a["boxes"].astype(np.float32)}
    b32 = {**b, "boxes": b["boxes"].astype(np.float32)}
    ref = F.cutmix(a32, b32, cut, **kw)
    got = to_numpy(F.cutmix(to_torch(a32, device), to_torch(b32, device), cut, **kw))
    got["image"] = np.moveaxis(got["image"], 0, -1)
    for key in ("image", "boxes", "labels", "ids", "weights", "source", "index"):
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    if "masks" in ref:
        np.testing.assert_array_equal(got["masks"], ref["masks"])
    for key in ("source", "index", "visibility", "reason"):
        np.testing.assert_array_equal(got["dropped"][key], ref["dropped"][key], err_msg=key)
    assert got["lam"] == ref["lam"]
    lam = kw["min_visibility"]
    mix_ref = F.mixup(a32, b32, lam)
    mix_got = to_numpy(F.mixup(to_torch(a32, device), to_torch(b32, device), lam))
    np.testing.assert_array_equal(np.moveaxis(mix_got["image"], 0, -1), mix_ref["image"])
    np.testing.assert_array_equal(mix_got["weights"], mix_ref["weights"])


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 5), st.integers(1, 300), st.integers(1, 300))
def test_samplers_are_reproducible_and_consistent(seed, alpha, height, width):
    draw = lambda: sample_cut_box(np.random.default_rng(seed), sample_lam(np.random.default_rng(seed), alpha),
                                  height, width)
    (box, lam), (box2, lam2) = draw(), draw()
    assert (box, lam) == (box2, lam2)
    x1, y1, x2, y2 = box
    assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
    assert lam == 1 - (x2 - x1) * (y2 - y1) / (height * width)
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    assert sample_lam(g1, alpha) == sample_lam(g2, alpha)


@SETTINGS
@given(pairs(with_masks=False), st.integers(0, 2**32 - 1))
def test_same_seed_same_output(pair, seed):
    a, b, _ = pair
    mixer = RandomMix("deit")
    one = mixer(a, b, np.random.default_rng(seed))
    two = mixer(a, b, np.random.default_rng(seed))
    assert one["params"] == two["params"]
    np.testing.assert_array_equal(one["image"], two["image"])
    np.testing.assert_array_equal(one["boxes"], two["boxes"])
