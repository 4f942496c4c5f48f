"""Aligning only a window of the partner (``align_pair(..., window=)``, ``mix_pair``): the window
must come out bit for bit as the same window of the whole alignment, and a mix through
``mix_pair`` must equal ``apply_params`` after a whole alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import make_sample, to_numpy, to_torch
from detmix import MixParams, align_canvas, align_pair, apply_params, load_recipe, mix_pair
from detmix.sampling import sample_params

EMPTY_BOXES = np.zeros((0, 4))


def _sample(image: np.ndarray) -> dict:
    return {"image": image, "boxes": EMPTY_BOXES, "labels": np.zeros(0, np.int64)}


def _expected_window(full: np.ndarray, window: tuple[int, int, int, int], fill: int, chw: bool = False) -> np.ndarray:
    x1, y1, x2, y2 = window
    out = np.full_like(full, fill)
    if chw:
        out[:, y1:y2, x1:x2] = full[:, y1:y2, x1:x2]
    else:
        out[y1:y2, x1:x2] = full[y1:y2, x1:x2]
    return out


@st.composite
def resize_cases(draw):
    src = (draw(st.integers(1, 90)), draw(st.integers(1, 90)))
    # Often keep one side: the paths that skip a pass.
    dst = (draw(st.sampled_from([src[0], *range(1, 120)])), draw(st.sampled_from([src[1], *range(1, 120)])))
    if dst == src:
        dst = (dst[0] + 1, dst[1])
    xs = sorted(draw(st.lists(st.integers(0, dst[1]), min_size=2, max_size=2)))
    ys = sorted(draw(st.lists(st.integers(0, dst[0]), min_size=2, max_size=2)))
    channels = draw(st.sampled_from([None, 1, 3]))
    seed = draw(st.integers(0, 2**32 - 1))
    return src, dst, (xs[0], ys[0], xs[1], ys[1]), channels, seed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resize_cases())
def test_resized_window_is_the_window_of_the_whole_resize(case):
    (sh, sw), (dh, dw), window, channels, seed = case
    rng = np.random.default_rng(seed)
    shape = (sh, sw) if channels is None else (sh, sw, channels)
    b = _sample(rng.integers(0, 256, shape, dtype=np.uint8))
    a = _sample(np.zeros((dh, dw) if channels is None else (dh, dw, channels), np.uint8))
    full = align_pair(a, b, "resize")[1]["image"]
    part = align_pair(a, b, "resize", window=window, fill=7)[1]["image"]
    assert part.shape == full.shape and part.dtype == np.uint8
    np.testing.assert_array_equal(part, _expected_window(full, window, 7))


def test_two_pass_resize_is_pillows_bilinear_filter():
    """The passes are Pillow's own: against one ``Image.resize`` call only the rounding between
    passes may differ, by one level at most."""
    rng = np.random.default_rng(0)
    for src, dst in [((480, 640), (427, 640)), ((640, 480), (480, 640)), ((333, 326), (92, 392)), ((30, 20), (90, 70))]:
        image = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
        ours = align_pair(_sample(np.zeros((*dst, 3), np.uint8)), _sample(image), "resize")[1]["image"]
        pillow = np.asarray(Image.fromarray(image).resize(dst[::-1], Image.Resampling.BILINEAR))
        assert np.abs(ours.astype(int) - pillow).max() <= 1


@pytest.mark.parametrize("kind", ["rgba", "float32", "torch"])
def test_window_of_images_resized_whole(kind):
    """RGBA, float and torch images are resized whole: the window is cut from that."""
    rng = np.random.default_rng(1)
    window = (3, 5, 40, 22)
    if kind == "rgba":
        b, a = _sample(rng.integers(0, 256, (31, 47, 4), dtype=np.uint8)), _sample(np.zeros((30, 50, 4), np.uint8))
    elif kind == "float32":
        b, a = _sample(rng.random((31, 47, 3), dtype=np.float32)), _sample(np.zeros((30, 50, 3), np.float32))
    else:
        b = to_torch(_sample(rng.integers(0, 256, (31, 47, 3), dtype=np.uint8)))
        a = to_torch(_sample(np.zeros((30, 50, 3), np.uint8)))
    full = to_numpy(align_pair(a, b, "resize")[1]["image"])
    part = to_numpy(align_pair(a, b, "resize", window=window, fill=3)[1]["image"])
    np.testing.assert_array_equal(part, _expected_window(full, window, 3, chw=kind == "torch"))


def test_pad_window_and_equal_canvases():
    b = make_sample(25, 10, fill=9)
    a = make_sample(20, 30, fill=7)
    full = align_pair(a, b, "pad")[1]["image"]
    part = align_pair(a, b, "pad", window=(5, 3, 30, 25), fill=0)[1]["image"]
    np.testing.assert_array_equal(part, _expected_window(full, (5, 3, 30, 25), 0))
    # Nothing to align: the samples come back as they are, window or not.
    assert align_pair(a, a, "resize", window=(0, 0, 1, 1)) == (a, a)


def test_window_errors_name_the_argument():
    a, b = make_sample(20, 30), make_sample(25, 10)
    with pytest.raises(ValueError, match=r"window must satisfy 0 <= x1 <= x2 <= 30 .* got \(0, 0, 31, 5\)"):
        align_pair(a, b, "resize", window=(0, 0, 31, 5))
    with pytest.raises(ValueError, match="window must hold whole pixel coordinates"):
        align_pair(a, b, "pad", window=(0, 0, 1.5, 5))
    with pytest.raises(ValueError, match="mode must be 'pad' or 'resize', got 'crop'"):
        align_canvas((1, 2), (3, 4), "crop")


def test_align_canvas_matches_align_pair():
    a, b = make_sample(20, 30), make_sample(25, 10)
    for mode in ("pad", "resize"):
        a2, _ = align_pair(a, b, mode)
        assert align_canvas((20, 30), (25, 10), mode) == a2["image"].shape[:2]


@pytest.mark.parametrize("recipe", ["cutmix", "deit", "mixup"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_mix_pair_equals_apply_params_after_a_whole_alignment(recipe, kind):
    rng = np.random.default_rng(2)
    recipe = load_recipe(recipe)
    a = make_sample(50, 70, [[5, 5, 40, 40], [30, 10, 69, 49]], masks=True)
    b = make_sample(61, 43, [[0, 0, 39, 59], [10, 10, 20, 30]], masks=True)
    a["image"] = rng.integers(0, 256, a["image"].shape, dtype=np.uint8)
    b["image"] = rng.integers(0, 256, b["image"].shape, dtype=np.uint8)
    if kind == "torch":
        a, b = to_torch(a), to_torch(b)
    modes = set()
    for _ in range(12):
        canvas = align_canvas((50, 70), (61, 43), recipe.align)
        params = sample_params(rng, recipe, *canvas)
        modes.add(params.mode)
        got = mix_pair(a, b, params, recipe)
        want = apply_params(*align_pair(a, b, recipe.align), params, recipe)
        for key in ("image", "boxes", "labels", "masks", "weights", "source", "index"):
            np.testing.assert_array_equal(to_numpy(got[key]), to_numpy(want[key]), err_msg=key)
    none = MixParams("none", 1.0, None, align_canvas((50, 70), (61, 43), recipe.align))
    got, want = mix_pair(a, b, none, recipe), apply_params(*align_pair(a, b, recipe.align), none, recipe)
    np.testing.assert_array_equal(to_numpy(got["image"]), to_numpy(want["image"]))
    assert modes - {"none"}, "the draws should have mixed at least once"


def test_mix_pair_checks_params():
    with pytest.raises(TypeError, match="params must be a MixParams, got dict"):
        mix_pair(make_sample(), make_sample(), {"mode": "none"}, load_recipe("cutmix"))


def test_torch_and_numpy_agree_on_what_the_window_leaves_out():
    """Both kinds put ``fill`` outside the window, so a CutMix result does not depend on it."""
    b = make_sample(31, 47, fill=200)
    a = make_sample(30, 50)
    np_b = align_pair(a, b, "resize", window=(0, 0, 10, 10), fill=5)[1]["image"]
    t_b = align_pair(to_torch(a), to_torch(b), "resize", window=(0, 0, 10, 10), fill=5)[1]["image"]
    assert (np_b[10:] == 5).all() and (torch.as_tensor(t_b)[:, 10:] == 5).all()
    assert (np_b[:10, :10] == 200).all() and (t_b[:, :10, :10] == 200).all()
