"""The vectorised mask paths, held bit for bit to their references.

* :func:`detmix.rle.decode_rle` / :func:`~detmix.rle.encode_rle` / :func:`~detmix.rle.encode_rles`
  against pycocotools, and the string reader against a transcription of maskApi.c's rleFrString
  loop (results and error messages alike);
* :func:`~detmix.rle.encode_rles` of instance masks, as the service answers them, against ``pycocotools.mask.encode``;
* :func:`detmix.functional.cutmix_masks` with a cut of four ints (copy and slice assignment)
  against the same call with the cut as an array (``where``), on numpy and torch;
* :func:`detmix.functional.masks_to_boxes` on uint8 masks of any values against the same masks
  made 0/1.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DEVICES, to_numpy
from detmix import functional as F
from detmix.rle import _string_to_counts, decode_rle, encode_rle, encode_rles

maskUtils = pytest.importorskip("pycocotools.mask", reason="pycocotools is the reference for COCO RLE")

SETTINGS = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def coco_decode(rle: dict) -> np.ndarray:
    """pycocotools' decoder, minus the numpy 2 DeprecationWarning that pycocotools 2.0.x raises in it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning)
        return maskUtils.decode(rle)


def coco_encode(masks: np.ndarray) -> list[str]:
    """pycocotools' strings for (N, H, W) masks (non-zero is foreground)."""
    stack = np.asfortranarray(np.moveaxis((masks != 0).astype(np.uint8), 0, -1))
    return [rle["counts"].decode("ascii") for rle in maskUtils.encode(stack)]


def reference_string_to_counts(string: str) -> list[int]:
    """rleFrString one character at a time (maskApi.c), in Python ints, refusing what C would
    misread with the messages of :func:`decode_rle`: the oracle of the vectorised reader."""
    counts: list[int] = []
    p = 0
    while p < len(string):
        x, k, more = 0, 0, True
        while more:
            if p == len(string):
                raise ValueError("rle['counts'] is cut short: its last character announces one more")
            c = ord(string[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"rle['counts'] must use characters '0'..'o', got {string[p]!r} at {p}")
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise ValueError(f"rle['counts'] decodes to a negative run ({x}) at run {len(counts)}")
        counts.append(x)
    return counts


def outcome(read, string: str) -> tuple[str, object]:
    try:
        return "runs", [int(v) for v in read(string)]
    except ValueError as error:
        return "error", str(error)


@st.composite
def mask_stacks(draw, min_side: int = 0, max_side: int = 12, max_masks: int = 4, dtypes=("bool", "uint8")):
    """(N, H, W) masks: random pixels, rectangles, all empty or all full; uint8 ones may hold
    any non-zero value."""
    n = draw(st.integers(0, max_masks))
    height = draw(st.integers(min_side, max_side))
    width = draw(st.integers(min_side, max_side))
    kind = draw(st.sampled_from(["pixels", "rectangles", "empty", "full"]))
    if kind == "pixels":
        bits = draw(st.lists(st.booleans(), min_size=n * height * width, max_size=n * height * width))
        masks = np.asarray(bits, dtype=bool).reshape(n, height, width)
    else:
        masks = np.full((n, height, width), kind == "full")
        if kind == "rectangles":
            for k in range(n):
                for _ in range(draw(st.integers(0, 3))):
                    y1, y2 = sorted(draw(st.lists(st.integers(0, height), min_size=2, max_size=2)))
                    x1, x2 = sorted(draw(st.lists(st.integers(0, width), min_size=2, max_size=2)))
                    masks[k, y1:y2, x1:x2] = True
    if draw(st.sampled_from(dtypes)) == "bool":
        return masks
    values = draw(st.sampled_from([1, 2, 255]))
    return masks.astype(np.uint8) * np.uint8(values)


# --------------------------------------------------------------------------------------------
# RLE
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(mask_stacks(dtypes=("bool", "uint8")))
def test_encode_rles_and_encode_rle_give_pycocotools_strings(masks: np.ndarray) -> None:
    rles = encode_rles(masks)
    height, width = masks.shape[1:]
    assert len(rles) == len(masks)
    assert all(rle["size"] == [height, width] for rle in rles)
    assert [encode_rle(mask) for mask in masks] == rles
    if height * width:  # pycocotools cannot encode an empty canvas
        assert [rle["counts"] for rle in rles] == coco_encode(masks)
    for mask, rle in zip(masks, rles):
        decoded = decode_rle(rle)
        np.testing.assert_array_equal(decoded, (mask != 0).astype(np.uint8))
        if height * width:
            np.testing.assert_array_equal(decoded, coco_decode({"size": rle["size"], "counts": rle["counts"].encode()}))


@pytest.mark.parametrize("shape", [(3, 1, 17), (3, 17, 1), (2, 1, 1), (0, 5, 7), (2, 0, 4), (2, 4, 0)])
def test_encode_rles_thin_and_empty_canvases(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    masks = rng.random(shape) < 0.5
    masks[:1] = True  # a full mask first (a run of 0 zeros, then everything)
    rles = encode_rles(masks)
    assert rles == [encode_rle(mask) for mask in masks]
    if shape[1] * shape[2]:
        assert [rle["counts"] for rle in rles] == coco_encode(masks)
    else:
        assert all(rle["counts"] == "0" for rle in rles)
    for mask, rle in zip(masks, rles):
        np.testing.assert_array_equal(decode_rle(rle), mask)


def test_encode_rles_of_integer_masks_is_non_zero_foreground() -> None:
    masks = np.array([[[0, -1, 3], [7, 0, 0]], [[0, 0, 0], [0, 1, 0]]], dtype=np.int32)
    assert encode_rles(masks) == encode_rles(masks != 0) == [encode_rle(m) for m in masks]
    with pytest.raises(ValueError, match=r"masks must have shape \(N, H, W\), got shape \(2, 3\)"):
        encode_rles(masks[0])
    with pytest.raises(TypeError, match=r"masks must be bool or integer, got dtype float64"):
        encode_rles(masks.astype(np.float64))


def test_long_runs_and_large_deltas_match_pycocotools() -> None:
    masks = np.zeros((3, 700, 900), dtype=bool)
    masks[0, 5:650, 3:870] = True  # runs far above 2**15, deltas of both signs
    masks[1, :, 450:] = True
    masks[2, 699, 899] = True
    rles = encode_rles(masks)
    assert [rle["counts"] for rle in rles] == coco_encode(masks)
    for mask, rle in zip(masks, rles):
        np.testing.assert_array_equal(decode_rle(rle), mask)


# Characters '0'..'o' and a few outside them, so that strings end cut short, hold bad
# characters, or decode to negative runs as often as to runs.
rle_strings = st.text(alphabet=st.sampled_from([chr(c) for c in range(44, 116)] + ["\u00e9", "\ufffd"]), max_size=16)


@settings(max_examples=2000, deadline=None, database=None)
@given(rle_strings)
def test_string_reader_matches_rlefrstring_with_the_same_errors(string: str) -> None:
    assert outcome(_string_to_counts, string) == outcome(reference_string_to_counts, string)


@pytest.mark.parametrize(
    "string",
    [
        "",
        "P" * 20 + "0",  # a zero in 21 characters
        "P" * 14 + "@",  # a negative run far below int64
        "o" * 13 + "0",  # a run far above int64
        "1" + "P" * 15 + "1" + "01",
        "ooooooooooo0" * 3 + "1",  # runs of 12 characters whose sums need more than int64's sum bound
        "n" * 11 + "7" + "1" + "n" * 11 + "7",
        "OOOOOOOOOOOOOO?",
    ],
)
def test_string_reader_values_beyond_int64(string: str) -> None:
    assert outcome(_string_to_counts, string) == outcome(reference_string_to_counts, string)


@settings(max_examples=2000, deadline=None, database=None)
@given(rle_strings, st.integers(0, 2**12))
def test_string_reader_bounded_by_the_pixel_count_agrees_or_refuses(string: str, limit: int) -> None:
    # What decode_rle reads for a mask of ``limit`` pixels: the same runs when they fit it (and
    # no value takes over 12 characters), else an error, never a run past it.
    bounded = outcome(lambda s: _string_to_counts(s, limit=limit), string)
    free = outcome(_string_to_counts, string)
    if free[0] == "runs" and sum(free[1]) <= limit and not re.search("[P-o]{12}", string):
        assert bounded == free
    else:
        assert bounded[0] == "error"


@pytest.mark.parametrize(
    ("string", "limit", "match"),
    [
        ("o" * 80_000 + "0", 64, r"value 0 \(characters 0..80000\) is longer than the 12 characters"),
        ("o" * 13 + "0", 2**32, r"value 0 \(characters 0..13\) is longer than the 12 characters"),
        ("1" + "n" * 11 + "7", 64, r"runs pass the mask's 64 pixels at run 1 \(ending at character 12\)"),
        ("4" * 17, 64, r"runs pass the mask's 64 pixels at run 7 \(ending at character 7\)"),  # 4, 4, 4, 8, 8, 12, 12, 16
        ("44" + "n" * 11 + "N", 64, r"decodes to a negative run \(-\d+\) at run 2"),
    ],
)
def test_string_reader_bounded_refuses_at_the_first_run_past_the_mask(string: str, limit: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _string_to_counts(string, limit=limit)
    with pytest.raises(ValueError, match=match):
        decode_rle({"size": [1, limit], "counts": string})


@SETTINGS
@given(mask_stacks(min_side=1, max_masks=1, dtypes=("bool",)))
def test_decode_rle_matches_pycocotools_and_writes_into_out(masks: np.ndarray) -> None:
    for mask in masks:
        rle = maskUtils.encode(np.asfortranarray(mask.astype(np.uint8)))
        expected = coco_decode(rle)
        decoded = decode_rle(rle)
        assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous
        np.testing.assert_array_equal(decoded, expected)
        stack = np.full((2, *mask.shape), 7, dtype=np.uint8)
        row = stack[1]
        assert decode_rle(rle, out=row) is row
        np.testing.assert_array_equal(stack[1], expected)
        assert (stack[0] == 7).all()
        uncompressed = {"size": list(mask.shape), "counts": _runs_of(mask)}
        np.testing.assert_array_equal(decode_rle(uncompressed), expected)
        np.testing.assert_array_equal(coco_decode(maskUtils.frPyObjects(uncompressed, *mask.shape)), expected)


def _runs_of(mask: np.ndarray) -> list[int]:
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))
    runs = np.diff(edges).tolist()
    return [0, *runs] if flat[0] else runs


def test_decode_rle_refuses_a_wrong_out() -> None:
    rle = encode_rle(np.eye(3, dtype=bool))
    for out in (np.zeros((3, 4), np.uint8), np.zeros((3, 3), bool), [[0] * 3] * 3):
        with pytest.raises(ValueError, match=r"out must be a 3x3 uint8 numpy array"):
            decode_rle(rle, out=out)  # type: ignore[arg-type]


def test_encode_rles_of_instance_masks_gives_pycocotools_strings() -> None:
    """What the service answers for a stack of instance masks (and for none)."""
    rng = np.random.default_rng(3)
    masks = np.zeros((5, 48, 64), dtype=np.uint8)
    for k in range(4):
        y1, x1 = rng.integers(0, 40, size=2)
        masks[k, y1 : y1 + rng.integers(1, 30), x1 : x1 + rng.integers(1, 40)] = 1
    masks[4] = rng.random((48, 64)) < 0.3
    got = encode_rles(masks)
    assert [rle["counts"] for rle in got] == coco_encode(masks)
    assert all(rle["size"] == [48, 64] and isinstance(rle["counts"], str) for rle in got)
    assert encode_rles(masks[:0]) == []


# --------------------------------------------------------------------------------------------
# cutmix_masks and masks_to_boxes
# --------------------------------------------------------------------------------------------


@st.composite
def cut_cases(draw):
    masks = draw(mask_stacks(min_side=1, max_side=10, max_masks=5))
    _, height, width = masks.shape
    if draw(st.booleans()):  # a cut box as cutmix() passes it: inside the canvas, maybe empty or whole
        x1 = draw(st.integers(0, width))
        x2 = draw(st.integers(x1, width))
        y1 = draw(st.integers(0, height))
        y2 = draw(st.integers(y1, height))
    else:  # any ints: off the canvas, reversed
        x1, x2 = (draw(st.integers(-3, width + 3)) for _ in range(2))
        y1, y2 = (draw(st.integers(-3, height + 3)) for _ in range(2))
    pasted = np.asarray(draw(st.lists(st.booleans(), min_size=len(masks), max_size=len(masks))), dtype=bool)
    return masks, (x1, y1, x2, y2), pasted


def assert_same(got, expected) -> None:
    for g, e in zip(got, expected, strict=True):
        g, e = to_numpy(g), to_numpy(e)
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_array_equal(g, e)


@SETTINGS
@given(cut_cases(), st.sampled_from(["float32", "float64"]))
def test_cutmix_masks_int_cut_equals_array_cut_numpy_and_torch(case, dtype_name: str) -> None:
    masks, cut, pasted = case
    dtype = getattr(np, dtype_name)
    expected = F.cutmix_masks(masks, np.asarray(cut, dtype=dtype), pasted, dtype)
    assert_same(F.cutmix_masks(masks, cut, pasted, dtype), expected)
    assert_same(F.cutmix_masks(masks, list(cut), pasted, dtype), expected)
    # The rule itself, in plain numpy: pasted masks keep the cut, the others the rest.
    x1, y1, x2, y2 = cut
    ys, xs = np.arange(masks.shape[1])[:, None], np.arange(masks.shape[2])[None, :]
    region = (ys >= y1) & (ys < y2) & (xs >= x1) & (xs < x2)
    kept = (masks != 0) & (region == pasted[:, None, None])
    np.testing.assert_array_equal(to_numpy(expected[0]) != 0, kept)
    before = (masks != 0).sum(axis=(1, 2)).astype(dtype)
    after = kept.sum(axis=(1, 2)).astype(dtype)
    np.testing.assert_array_equal(expected[1], np.where(before > 0, after / np.maximum(before, 1), 0).astype(dtype))
    for dev in DEVICES:
        tmasks, tpasted = torch.from_numpy(masks).to(dev), torch.from_numpy(pasted).to(dev)
        tdtype = getattr(torch, dtype_name)
        tcut = torch.tensor(cut, dtype=tdtype, device=dev)
        assert_same(F.cutmix_masks(tmasks, cut, tpasted, tdtype), expected)
        assert_same(F.cutmix_masks(tmasks, tcut, tpasted, tdtype), expected)


def test_cutmix_masks_edge_cuts_and_no_masks() -> None:
    masks = np.zeros((4, 5, 7), dtype=np.uint8)
    masks[1] = 1
    masks[2, 0, 0] = masks[2, 4, 6] = 3
    masks[3, 2:4, 1:6] = 1
    pasted = np.array([False, True, False, True])
    cuts = [(0, 0, 0, 0), (3, 2, 3, 4), (0, 0, 7, 5), (0, 0, 1, 1), (6, 4, 7, 5), (0, 2, 7, 3), (2, 0, 3, 5)]
    for cut in cuts:
        for m in (masks, masks != 0):
            expected = F.cutmix_masks(m, np.asarray(cut, dtype=np.float64), pasted, np.float64)
            assert_same(F.cutmix_masks(m, cut, pasted, np.float64), expected)
        none = F.cutmix_masks(masks[:0], np.asarray(cut, np.float32), pasted[:0])
        assert_same(F.cutmix_masks(masks[:0], cut, pasted[:0]), none)
    out, visibility, boxes = F.cutmix_masks(masks, (0, 0, 7, 5), pasted, np.float64)
    np.testing.assert_array_equal(visibility, [0, 1, 0, 1])  # the whole canvas: pasted masks keep all, others nothing
    np.testing.assert_array_equal(boxes, [[0, 0, 0, 0], [0, 0, 7, 5], [0, 0, 0, 0], [1, 2, 6, 4]])
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}


@pytest.mark.parametrize("shape", [(2, 1, 9), (2, 9, 1), (1, 1, 1)])
def test_cutmix_masks_thin_canvases(shape: tuple[int, int, int]) -> None:
    masks = np.ones(shape, dtype=bool)
    masks[0, ..., 0] = False
    pasted = np.array([True, False][: shape[0]])
    _, height, width = shape
    for cut in [(0, 0, width, height), (0, 0, 0, 0), (0, 0, 1, 1), (width - 1, height - 1, width, height)]:
        expected = F.cutmix_masks(masks, np.asarray(cut, dtype=np.float32), pasted)
        assert_same(F.cutmix_masks(masks, cut, pasted), expected)


def test_pixel_counts_exact_for_wide_rows() -> None:
    # Rows of 2**15 pixels or more are summed in int32, narrower ones in int16; both exact.
    for width in (2**15 - 1, 2**15, 40_000):
        masks = np.ones((2, 2, width), dtype=bool)
        masks[1, 1, ::3] = False
        np.testing.assert_array_equal(F._pixel_counts(F._binary(masks)), masks.sum(axis=(1, 2)))
        cut = (5, 0, width - 5, 1)
        pasted = np.array([False, True])
        assert_same(F.cutmix_masks(masks, cut, pasted), F.cutmix_masks(masks, np.asarray(cut, np.float32), pasted))


@SETTINGS
@given(mask_stacks(min_side=1, dtypes=("bool", "uint8")))
def test_masks_to_boxes_of_any_uint8_values_equals_its_0_1_masks(masks: np.ndarray) -> None:
    expected = F.masks_to_boxes((masks != 0).astype(np.uint8), np.float64)
    for m in (masks, masks != 0, masks.astype(np.int32)):
        assert_same([F.masks_to_boxes(m, np.float64)], [expected])
    if len(masks):
        rles = maskUtils.encode(np.asfortranarray(np.moveaxis((masks != 0).astype(np.uint8), 0, -1)))
        coco = maskUtils.toBbox(rles)  # xywh
        coco[:, 2:] += coco[:, :2]
        np.testing.assert_array_equal(expected, coco)
    for dev in DEVICES:
        assert_same([F.masks_to_boxes(torch.from_numpy(masks).to(dev), torch.float64)], [expected])


def test_cutmix_uses_the_int_cut_with_the_same_result(monkeypatch) -> None:
    cuts = []
    original = F.cutmix_masks

    def spy(masks, cut, pasted, dtype=None, **kwargs):
        cuts.append(cut)
        return original(masks, cut, pasted, dtype, **kwargs)

    monkeypatch.setattr(F, "cutmix_masks", spy)
    rng = np.random.default_rng(7)
    a = {"image": np.zeros((20, 30, 3), np.uint8), "boxes": np.array([[0, 0, 30, 20], [2, 3, 12, 15]], np.float64),
         "labels": np.array([1, 2]), "masks": (rng.random((2, 20, 30)) < 0.6).astype(np.uint8)}
    b = {"image": np.full((20, 30, 3), 9, np.uint8), "boxes": np.array([[5, 5, 25, 18]], np.float64),
         "labels": np.array([3]), "masks": (rng.random((1, 20, 30)) < 0.6).astype(np.uint8)}
    cut = (4, 2, 21, 17)
    out = F.cutmix(a, b, cut, min_size=0.0)
    assert cuts == [cut, cut]  # a's masks, then b's
    masks, visibility, boxes = F.cutmix_masks(
        np.concatenate([a["masks"], b["masks"]]), np.asarray(cut, np.float64), np.array([False, False, True]), np.float64
    )
    keep = visibility > 0
    given = np.concatenate([a["boxes"], b["boxes"]])
    np.testing.assert_array_equal(out["masks"], masks[keep])
    np.testing.assert_array_equal(out["boxes"], F.visible_boxes(given, boxes, visibility)[keep])
    np.testing.assert_array_equal(out["weights"], visibility[keep])
