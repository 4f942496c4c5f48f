"""Masks as users make them with Pillow: ``np.asarray(image.convert("1"))`` and mode-"1" resizes
give bool arrays whose bytes are 0/255, not 0/1. Every kernel (numpy and torch) must count any
non-zero byte as one pixel, and every bool mask it returns must be canonical 0/1."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import to_numpy, to_torch
from detmix import functional as F
from detmix.rle import encode_rles

H, W = 120, 300  # a row of 300 pixels of 255 overflows the int16 row sums


def pillow_masks(boxes, height=H, width=W) -> np.ndarray:
    """One ellipse per box, drawn by Pillow on a mode "1" image and read back as numpy does."""
    out = []
    for x1, y1, x2, y2 in boxes:
        image = Image.new("1", (width, height))
        ImageDraw.Draw(image).ellipse((x1, y1, x2 - 1, y2 - 1), fill=1)
        out.append(np.asarray(image))
    return np.stack(out)


def canonical(masks: np.ndarray) -> np.ndarray:
    return masks.view(np.uint8).astype(bool)


def test_pillow_arrays_hold_255_bytes():
    """The premise of this file: if Pillow ever gives 0/1 bytes, these tests prove nothing."""
    masks = pillow_masks([[10, 10, 60, 50]])
    assert masks.dtype == np.bool_ and masks.view(np.uint8).max() == 255
    resized = np.asarray(Image.fromarray(masks[0]).resize((2 * W, 2 * H), Image.Resampling.NEAREST))
    assert resized.dtype == np.bool_ and resized.view(np.uint8).max() == 255


def pair(backend: str):
    boxes_a = [[10, 10, 290, 60], [20, 70, 120, 115]]
    boxes_b = [[150, 20, 280, 110]]
    masks_a, masks_b = pillow_masks(boxes_a), pillow_masks(boxes_b)
    a = {"image": np.zeros((H, W, 3), np.uint8), "boxes": np.asarray(boxes_a, np.float64), "labels": np.array([1, 2]),
         "masks": masks_a}
    b = {"image": np.full((H, W, 3), 200, np.uint8), "boxes": np.asarray(boxes_b, np.float64), "labels": np.array([3]),
         "masks": masks_b}
    fixed = [dict(s, masks=canonical(s["masks"])) for s in (a, b)]
    if backend == "torch":
        return [to_torch(s) for s in (a, b)], [to_torch(s) for s in fixed]
    return [a, b], fixed


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("mode", ["cutmix", "mixup"])
def test_pillow_masks_mix_as_their_0_1_copies(backend, mode):
    pillow, fixed = pair(backend)
    if backend == "torch":  # torch.from_numpy keeps the bytes: the torch kernels see 255 too
        assert int(pillow[0]["masks"].view(torch.uint8).max()) == 255

    def run(a, b):
        if mode == "cutmix":
            return to_numpy(F.cutmix(a, b, (140, 0, 300, 120), min_visibility=0.3))
        return to_numpy(F.mixup(a, b, 0.6))

    got, want = run(*pillow), run(*fixed)
    assert got["source"].tolist() == want["source"].tolist() and got["index"].tolist() == want["index"].tolist()
    np.testing.assert_array_equal(got["boxes"], want["boxes"])
    np.testing.assert_array_equal(got["weights"], want["weights"])
    np.testing.assert_array_equal(got["dropped"]["visibility"], want["dropped"]["visibility"])
    np.testing.assert_array_equal(got["masks"], want["masks"])
    assert got["masks"].view(np.uint8).max() == 1  # bool outputs are canonical
    if mode == "cutmix":  # the wide object keeps half of its ellipse: kept, with its true visibility
        assert 0.3 < got["weights"][0] < 0.7 and len(got["boxes"]) == 3


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_kernels_count_any_nonzero_byte_once(backend):
    masks = pillow_masks([[0, 0, W, H], [5, 5, 50, 40]])
    fixed = canonical(masks)
    convert = (lambda m: torch.from_numpy(m.copy())) if backend == "torch" else (lambda m: m)
    got = [to_numpy(v) for v in F.cutmix_masks(convert(masks), (100, 0, 200, 120), convert(np.array([False, True])))]
    want = F.cutmix_masks(fixed, (100, 0, 200, 120), np.array([False, True]))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(to_numpy(F.masks_to_boxes(convert(masks))), F.masks_to_boxes(fixed))
    assert encode_rles(masks) == encode_rles(fixed)


def test_batchmix_counts_pillow_masks_once():
    from detmix.torch import BatchMix, BatchParams

    pillow, fixed = pair("torch")
    params = BatchParams(partner=[1, 0], mode=[2, 2], lam=[1 - 160 * 120 / (H * W)] * 2,
                         cut=[[140, 0, 300, 120]] * 2, canvas=(H, W), per="pair")
    outs = []
    for samples in (pillow, fixed):
        images = [s["image"] for s in samples]
        targets = [{k: v for k, v in s.items() if k != "image"} for s in samples]
        outs.append(BatchMix("cutmix", per="pair").apply(images, targets, params)[1])
    for got, want in zip(*outs):
        np.testing.assert_array_equal(got["boxes"].numpy(), want["boxes"].numpy())
        np.testing.assert_array_equal(got["weights"].numpy(), want["weights"].numpy())
        assert int(got["masks"].view(torch.uint8).max()) <= 1


def small_pair() -> tuple[list[dict], list[dict]]:
    """A pair on a 30x40 canvas: torch copies so few bytes verbatim (a large batch's torch.cat
    happens to rewrite bool bytes as 0/1, which hid a missing canonicalisation)."""
    boxes_a, boxes_b = [[2, 2, 30, 20], [5, 18, 25, 29]], [[20, 4, 38, 26]]
    a = {"image": np.zeros((30, 40, 3), np.uint8), "boxes": np.asarray(boxes_a, np.float64),
         "labels": np.array([1, 2]), "masks": pillow_masks(boxes_a, 30, 40)}
    b = {"image": np.full((30, 40, 3), 200, np.uint8), "boxes": np.asarray(boxes_b, np.float64),
         "labels": np.array([3]), "masks": pillow_masks(boxes_b, 30, 40)}
    fixed = [dict(s, masks=canonical(s["masks"])) for s in (a, b)]
    return [to_torch(s) for s in (a, b)], [to_torch(s) for s in fixed]


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("mode", ["none", "mixup", "cutmix"])
def test_batchmix_returns_pillow_masks_as_their_0_1_copies_in_every_mode(mode, size):
    """MixUp and unmixed images pass their masks through no counting kernel: BatchMix itself must
    make Pillow's 0/255 bool bytes canonical, or they come back 255."""
    from detmix.torch import BatchMix, BatchParams

    pillow, fixed = small_pair() if size == "small" else pair("torch")
    height, width = pillow[0]["image"].shape[1:]
    assert int(pillow[0]["masks"].view(torch.uint8).max()) == 255
    code = {"none": 0, "mixup": 1, "cutmix": 2}[mode]
    cut = [width // 2, 0, width, height]
    lam = {"none": 1.0, "mixup": 0.6, "cutmix": 1 - (cut[2] - cut[0]) * height / (height * width)}[mode]
    params = BatchParams(partner=[0, 1] if mode == "none" else [1, 0], mode=[code] * 2, lam=[lam] * 2,
                         cut=[cut if mode == "cutmix" else [0, 0, 0, 0]] * 2, canvas=(height, width), per="pair")
    outs = []
    for samples in (pillow, fixed):
        images = [s["image"] for s in samples]
        targets = [{k: v for k, v in s.items() if k != "image"} for s in samples]
        outs.append(BatchMix("deit", per="pair").apply(images, targets, params)[1])
    for got, want in zip(*outs):
        assert got["masks"].dtype == torch.bool and int(got["masks"].view(torch.uint8).max()) <= 1
        assert torch.equal(got["masks"].view(torch.uint8), want["masks"].view(torch.uint8))
        np.testing.assert_array_equal(got["boxes"].numpy(), want["boxes"].numpy())
        np.testing.assert_array_equal(got["weights"].numpy(), want["weights"].numpy())


def test_real_coco_masks_resized_by_pillow_keep_their_visible_objects(coco_mini):
    """The reproduction of the issue: real COCO masks resized with Pillow's NEAREST (mode "1")
    and a cut that touches none of the objects of ``a``: none is dropped, none loses visibility.
    The image is the one with the most objects over 130 px wide: a row of more than 128 pixels
    of 255 overflowed the int16 row sums."""
    from detmix.coco import CocoDetectionSource

    annotations = coco_mini / "annotations" / "instances_val2017.json"
    raw = json.loads(annotations.read_text())
    counts = {}
    for ann in raw["annotations"]:
        counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + (not ann["iscrowd"] and ann["bbox"][2] > 130)
    busy = max(counts, key=counts.get)
    assert counts[busy] >= 3
    sample = CocoDetectionSource(annotations, coco_mini / "val2017", image_ids=[busy])[0]
    height, width = (5 * v // 4 for v in sample["image"].shape[:2])
    resize = lambda m: np.asarray(Image.fromarray(m.astype(bool)).resize((width, height), Image.Resampling.NEAREST))  # noqa: E731
    masks = np.stack([resize(m) for m in sample["masks"]])
    assert masks.view(np.uint8).max() == 255
    keep = masks.reshape(len(masks), -1).any(axis=1)
    masks = masks[keep]
    boxes = F.masks_to_boxes(canonical(masks), np.float64)
    a = {"image": np.zeros((height, width, 3), np.uint8), "boxes": boxes, "labels": np.arange(len(boxes)),
         "masks": masks}
    b = {"image": np.ones((height, width, 3), np.uint8), "boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64),
         "masks": np.zeros((0, height, width), bool)}
    free = next((x, y) for y in range(0, height - 8, 4) for x in range(0, width - 8, 4)
                if not masks[:, y:y + 8, x:x + 8].any())
    out = F.cutmix(a, b, (free[0], free[1], free[0] + 8, free[1] + 8), min_visibility=0.5)
    assert len(boxes) >= 3
    assert out["index"].tolist() == list(range(len(boxes)))  # every object kept
    np.testing.assert_array_equal(out["weights"], 1.0)
    np.testing.assert_array_equal(out["boxes"], boxes)  # untouched: the input boxes exactly
