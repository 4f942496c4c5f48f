"""The region family: CutMix over any region, Cutout, ResizeMix, FMix and SaliencyMix, through
the core, replay, numpy and torch, BatchMix and the Albumentations adapter, on real photographs
where it matters. (The service is in tests/service/test_modes.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_sample, to_numpy, to_torch
from detmix import MixParams, RandomMix, align_pair, apply_params, functional as F, load_recipe, mix_pair
from detmix.modes import get_mode, mode_names
from detmix.modes.fmix import fmix_region
from detmix.modes.saliencymix import salient_point

REGION_MODES = ("cutout", "resizemix", "fmix", "saliencymix")


# ------------------------------------------------------------------ CutMix over any region


def test_a_rectangular_region_is_the_cut_box_with_masks_and_on_integer_boxes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = make_sample(40, 60, [[2, 3, 30, 25], [20, 10, 58, 39], [0, 0, 60, 40]], masks=True, fill=10)
        b = make_sample(40, 60, [[5, 5, 50, 35], [30, 0, 45, 12]], masks=True, fill=200)
        x1, x2 = sorted(rng.integers(0, 61, 2))
        y1, y2 = sorted(rng.integers(0, 41, 2))
        region = np.zeros((40, 60), bool)
        region[y1:y2, x1:x2] = True
        for masks in (True, False):
            if not masks:
                a, b = ({k: v for k, v in s.items() if k != "masks"} for s in (a, b))
            box, reg = F.cutmix(a, b, (x1, y1, x2, y2)), F.cutmix(a, b, region=region)
            for key in ("image", "boxes", "weights", "source", "index"):
                np.testing.assert_array_equal(reg[key], box[key], err_msg=f"{key} masks={masks} cut={(x1, y1, x2, y2)}")
            assert reg["lam"] == pytest.approx(box["lam"])


def test_boxes_only_region_follows_the_pixel_centres():
    a = make_sample(10, 10, [[1.2, 1.0, 5.6, 4.0]], fill=0)  # pixel centres x in {1.5..5.5} -> columns 1..5
    b = make_sample(10, 10, [], fill=255)
    region = np.zeros((10, 10), bool)
    region[:, 4:] = True  # takes columns 4 and 5 of the box's 5
    out = F.cutmix(a, b, region=region, min_size=0.0)
    assert out["weights"][0] == pytest.approx(3 / 5)
    np.testing.assert_allclose(out["boxes"][0], [1.2, 1.0, 4.0, 4.0])  # tight box of columns 1..3, clipped
    untouched = np.zeros((10, 10), bool)
    untouched[6:, 6:] = True
    out = F.cutmix(a, b, region=untouched)
    np.testing.assert_array_equal(out["boxes"], a["boxes"])  # untouched: the input box exactly
    assert out["lam"] == pytest.approx(1 - 16 / 100)


def test_region_errors_name_the_argument():
    a, b = make_sample(10, 10, [[1, 1, 5, 5]]), make_sample(10, 10, [])
    with pytest.raises(ValueError, match="give exactly one of cut_box .* and region .*, got both"):
        F.cutmix(a, b, (0, 0, 2, 2), region=np.ones((10, 10), bool))
    with pytest.raises(ValueError, match=r"region must have shape \(10, 10\) \(the canvas\), got \(9, 10\)"):
        F.cutmix(a, b, region=np.ones((9, 10), bool))
    with pytest.raises(TypeError, match="region must be bool"):
        F.cutmix(a, b, region=np.ones((10, 10), np.float32))
    with pytest.raises(TypeError, match="region is a torch tensor but the image is a numpy array"):
        F.cutmix(a, b, region=torch.ones(10, 10, dtype=torch.bool))


# ------------------------------------------------------------------ each mode


def test_cutout_erases_and_only_a_boxes_follow():
    a = make_sample(40, 60, [[0, 0, 20, 20], [30, 10, 50, 30]], masks=True, fill=50, ids=[7, 8])
    out = F.cutout(a, (25, 0, 60, 40), fill=3, min_visibility=0.0)
    assert (out["image"][:, 25:] == 3).all() and (out["image"][:, :25] == 50).all()
    assert out["index"].tolist() == [0] and out["ids"].tolist() == [7]
    assert out["dropped"]["source"].tolist() == [0] and out["dropped"]["index"].tolist() == [1]
    np.testing.assert_array_equal(out["boxes"], [[0, 0, 20, 20]])  # untouched


def test_resizemix_scales_and_moves_every_box_and_mask_of_b():
    a = make_sample(40, 60, [[0, 0, 20, 20]], masks=True, fill=50)
    b = make_sample(20, 30, [[0, 0, 10, 10], [15, 5, 30, 20]], masks=True, fill=200)
    out = F.resizemix(a, b, (10, 10, 40, 30))  # b scaled by 1 (30x20 into 30x20), moved by (10, 10)
    pasted = out["source"] == 1
    np.testing.assert_array_equal(out["boxes"][pasted], [[10, 10, 20, 20], [25, 15, 40, 30]])
    np.testing.assert_array_equal(out["masks"][pasted][0][10:20, 10:20], 1)
    assert out["lam"] == pytest.approx(1 - 600 / 2400)
    half = F.resizemix(a, b, (30, 20, 45, 30))  # scaled by 0.5
    # the tight boxes of the masks resized by nearest neighbour (scaled boxes: [37.5, 22.5, 45, 30])
    np.testing.assert_allclose(half["boxes"][half["source"] == 1], [[30, 20, 35, 25], [37, 22, 45, 30]])
    assert (half["image"][20:30, 30:45] == 200).all()


def test_fmix_region_covers_one_minus_lam_and_is_regenerated_from_the_record():
    for lam in (0.0, 0.3, 0.77, 1.0):
        region = fmix_region(5, 3.0, lam, 48, 64)
        assert region.sum() == round((1 - lam) * 48 * 64)
    np.testing.assert_array_equal(fmix_region(5, 3.0, 0.5, 48, 64), fmix_region(5, 3.0, 0.5, 48, 64))
    assert (fmix_region(5, 3.0, 0.5, 48, 64) != fmix_region(6, 3.0, 0.5, 48, 64)).any()
    # low decay (white-ish noise) is fragmented: many more region edges than the paper's decay 3
    def edges(r):
        return int((r[1:] != r[:-1]).sum() + (r[:, 1:] != r[:, :-1]).sum())
    assert edges(fmix_region(5, 0.5, 0.5, 48, 64)) > 3 * edges(fmix_region(5, 3.0, 0.5, 48, 64))
    a = make_sample(48, 64, [[0, 0, 30, 30]], masks=True, fill=0)
    b = make_sample(48, 64, [[20, 10, 60, 40]], masks=True, fill=255)
    params = MixParams("fmix", 1 - round(0.4 * 48 * 64) / (48 * 64), None, (48, 64), {"seed": 11, "decay": 3.0})
    out = apply_params(a, b, params, load_recipe("fmix"))
    region = fmix_region(11, 3.0, params.lam, 48, 64)
    np.testing.assert_array_equal(out["image"][..., 0] == 255, region)
    assert out["lam"] == pytest.approx(params.lam)


def test_saliencymix_centres_the_cut_on_the_salient_point_or_an_object():
    image = np.full((60, 80, 3), 90, np.uint8)
    image[40:48, 60:68] = 255  # one bright square on a flat background
    x, y = salient_point(image)
    assert 58 <= x <= 70 and 38 <= y <= 50
    partner = {"image": image, "boxes": np.array([[5.0, 5.0, 15.0, 25.0]]), "labels": np.array([1])}
    mode = get_mode("saliencymix")
    cfg = load_recipe("saliencymix").saliencymix
    params = mode.sample(np.random.default_rng(0), cfg.model_copy(update={"lam_clamp": (0.9, 0.9)}), 60, 80, (partner,))
    x1, y1, x2, y2 = params.cut_box
    assert x1 <= x < x2 and y1 <= y < y2
    by_object = mode.sample(np.random.default_rng(0), cfg.model_copy(update={"centre": "object"}), 60, 80, (partner,))
    x1, y1, x2, y2 = by_object.cut_box
    assert x1 <= 10 < x2 and y1 <= 15 < y2
    with pytest.raises(ValueError, match="saliencymix centres its cut on the partner: pass partners="):
        mode.sample(np.random.default_rng(0), cfg, 60, 80, ())


# ------------------------------------------------------------------ through every path, on photographs


@pytest.fixture(scope="module")
def photos(coco_mini):
    from detmix.coco import CocoDetectionSource

    source = CocoDetectionSource(coco_mini / "annotations" / "instances_val2017.json", coco_mini / "val2017")
    return [source[k] for k in range(6)]


def _exact(out, a, b, recipe):
    """Every input box kept or dropped once; with masks every kept box is its input box when its
    mask is whole, else the tight box of its visible mask clipped to its (aligned) input box."""
    ia, ib = len(a["boxes"]), len(b["boxes"])
    seen = sorted(zip(out["source"].tolist(), out["index"].tolist())) + sorted(
        zip(out["dropped"]["source"].tolist(), out["dropped"]["index"].tolist()))
    in_play = [(1, i) for i in range(ib)] if get_mode(out["params"].mode).partner_in_play(out["params"]) else []
    assert sorted(s for s in seen if s[0] == 0) == [(0, i) for i in range(ia)]
    assert sorted(s for s in seen if s[0] == 1) == in_play
    tight = F.masks_to_boxes(out["masks"], np.float64)
    for k in range(len(out["boxes"])):
        box = out["boxes"][k]
        assert (box[2:] > box[:2]).all()
        if out["weights"][k] == 1 and recipe.section(out["params"].mode).weight == "visibility":
            continue  # untouched: its input box (checked against the input in the tests above)
        inside = (box[:2] >= tight[k][:2] - 1e-4).all() and (box[2:] <= tight[k][2:] + 1e-4).all()
        assert inside, (k, box, tight[k])


@pytest.mark.parametrize("name", REGION_MODES)
def test_random_mix_on_photographs_is_exact_and_replays(photos, name):
    mixer = RandomMix(name)
    rng = np.random.default_rng(1)
    for k in range(len(photos)):
        a, b = photos[k], photos[(k + 1) % len(photos)]
        out = mixer(a, b, rng)
        assert out["params"].mode == name
        _exact(out, a, b, mixer.recipe)
        again = mix_pair(a, b, MixParams.from_dict(out["params"].to_dict()), mixer.recipe)
        for key in ("image", "boxes", "masks", "weights", "crowd_mask"):
            np.testing.assert_array_equal(again[key], out[key])


@pytest.mark.parametrize("name", REGION_MODES)
def test_numpy_equals_torch(photos, name):
    recipe = load_recipe(name)
    a, b = align_pair(photos[0], photos[1], recipe.align)
    keys = ("image", "boxes", "labels", "masks", "crowd_boxes", "crowd_mask")
    a, b = ({k: s[k] for k in keys} for s in (a, b))
    params = RandomMix(recipe)(a, b, np.random.default_rng(3))["params"]
    want = apply_params(a, b, params, recipe)
    got = to_numpy(apply_params(to_torch(a), to_torch(b), params, recipe))
    # A resized partner is resampled by Pillow (numpy) or torch's bilinear: within one level.
    atol = 1 if get_mode(name).resizes_partner else 0
    np.testing.assert_allclose(got["image"].transpose(1, 2, 0).astype(int), want["image"].astype(int), atol=atol, rtol=0)
    for key in ("boxes", "weights", "masks", "source", "index", "crowd_mask", "crowd_boxes"):
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-5 if key.endswith("boxes") else 0)


@pytest.mark.parametrize("name", REGION_MODES)
def test_batchmix_equals_the_core_pair_by_pair(photos, name):
    from detmix.torch import BatchMix

    keys = ("image", "boxes", "labels", "masks")
    samples = [to_torch({k: s[k] for k in keys}) for s in photos[:4]]
    images = [s["image"] for s in samples]
    targets = [{k: v for k, v in s.items() if k != "image"} for s in samples]
    mix = BatchMix(name, per="pair")
    out_images, out = mix(images, targets, generator=torch.Generator().manual_seed(0))
    params = mix.last_params
    height, width = params.canvas
    recipe = mix.recipe
    for i in range(4):
        pair = params.pair(i)
        assert pair.mode == name
        a = {k: s for k, s in samples[i].items()}
        b = {k: s for k, s in samples[int(params.partner[i])].items()}
        pa, pb = align_pair(a, b, "pad")  # the batch canvas: top-left padding to the largest image
        pa = align_pair(pa, {"image": torch.zeros(3, height, width, dtype=torch.uint8), "boxes": torch.zeros(0, 4),
                             "labels": torch.zeros(0, dtype=torch.int64)}, "pad")[0]
        if not get_mode(name).resizes_partner:
            pb = align_pair(pb, pa, "pad")[0]
        else:
            pb = b
        ref = apply_params(pa, pb, pair, recipe)
        torch.testing.assert_close(out_images[i], ref["image"], rtol=0, atol=0)
        torch.testing.assert_close(out[i]["boxes"], ref["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(out[i]["weights"], ref["weights"])
        torch.testing.assert_close(out[i]["masks"], ref["masks"])


@pytest.mark.parametrize("name", REGION_MODES)
def test_albumentations_recipe_mix_equals_the_core(photos, name):
    import albumentations as A

    from detmix.albumentations import RecipeMix, from_recipe
    from detmix.datasets import to_albumentations_item

    assert isinstance(from_recipe(name), RecipeMix) and from_recipe(name).p == 1.0  # the recipe's prob
    assert RecipeMix(name).align == load_recipe(name).align
    mix = from_recipe(name, p=1.0)
    assert isinstance(mix, RecipeMix)
    tf = A.Compose([mix], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
                   additional_targets={"crowd_mask": "mask"}, seed=3)
    item, partner = (to_albumentations_item(s, bbox_format="pascal_voc") for s in photos[2:4])
    out = tf(**item, mix_metadata=[partner])
    params = MixParams.from_dict(mix.params["mix"])
    assert params.mode == name
    ref = mix_pair(photos[2], photos[3], params, load_recipe(name))
    np.testing.assert_array_equal(out["image"], ref["image"])
    np.testing.assert_allclose(np.asarray(out["bboxes"], np.float64).reshape(-1, 4), ref["boxes"], atol=2e-3)
    np.testing.assert_array_equal(out["masks"], ref["masks"])
    np.testing.assert_array_equal(out["crowd_mask"], ref["crowd_mask"])


def test_the_region_modes_are_registered_in_order():
    assert mode_names()[:7] == ("none", "mixup", "cutmix", "cutout", "resizemix", "fmix", "saliencymix")


def test_region_boxes_equals_the_rule_on_the_boxes_pixel_covers():
    """``region_boxes`` sums rows and columns; the rule it implements is the masks rule applied to
    each box's pixel cover (:func:`pixel_boxes`), computed here the slow way, on numpy and torch."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        height, width = (int(v) for v in rng.integers(1, 30, 2))
        n = int(rng.integers(0, 8))
        x1, y1 = rng.uniform(0, width, n), rng.uniform(0, height, n)
        x2 = np.minimum(x1 + rng.uniform(0.01, width, n), width)
        y2 = np.minimum(y1 + rng.uniform(0.01, height, n), height)
        boxes = np.stack([x1, y1, x2, y2], axis=1).reshape(-1, 4)
        region = rng.random((height, width)) < rng.random()
        pasted = rng.random(n) < 0.5
        cover = F.pixel_boxes(boxes, height, width).astype(np.uint8)
        _, visibility, tight = F.cutmix_masks(cover, None, pasted, np.float64, region=region)
        want = F.visible_boxes(boxes, tight, visibility), visibility
        got = F.region_boxes(boxes, region, pasted)
        got_torch = F.region_boxes(torch.from_numpy(boxes), torch.from_numpy(region), torch.from_numpy(pasted))
        for g in (got, [t.numpy() for t in got_torch]):
            np.testing.assert_array_equal(g[0], want[0])
            np.testing.assert_array_equal(g[1], want[1])


def test_resizemix_boxes_of_b_are_tight_to_their_resized_masks(photos):
    a, b = photos[0], photos[1]
    out = F.resizemix(a, b, (40, 30, 40 + 213, 30 + 142))  # b shrunk to a third
    pasted = out["source"] == 1
    assert pasted.sum() >= 2
    # inside the paste box nothing of b is cut: every pasted box is its resized mask's tight box
    np.testing.assert_array_equal(out["boxes"][pasted], F.masks_to_boxes(out["masks"][pasted], np.float64))


def test_saliency_is_not_drawn_to_the_border(photos):
    """The FFT takes an image as periodic: without mirroring, the jump between opposite edges
    was the peak for most photographs."""
    near = 0
    for s in photos:
        height, width = s["image"].shape[:2]
        x, y = salient_point(s["image"])
        near += min(x, width - 1 - x) < 0.05 * width or min(y, height - 1 - y) < 0.05 * height
    assert near <= 1


def test_cutout_fill_must_be_a_value_of_the_image_dtype():
    a = make_sample(10, 10, [[1, 1, 5, 5]])
    for fill in (300, -1, 2.5):
        with pytest.raises(ValueError, match=r"fill must be a whole number in \[0, 255\] for a uint8 image"):
            F.cutout(a, (0, 0, 5, 5), fill=fill)
        with pytest.raises(ValueError, match=r"fill must be a whole number in \[0, 255\] for a uint8 image"):
            F.cutout(to_torch(a), (0, 0, 5, 5), fill=fill)
    assert (F.cutout(a, (0, 0, 5, 5), fill=255.0)["image"][:5, :5] == 255).all()
    floats = make_sample(10, 10, [[1, 1, 5, 5]], dtype=np.float32)
    assert (F.cutout(floats, (0, 0, 5, 5), fill=0.5)["image"][:5, :5] == 0.5).all()
    with pytest.raises(ValueError, match="less than or equal to 255"):
        load_recipe({"cutout": {"fill": 300}})


def test_pictures_outline_the_paste_box_and_leave_out_a_resized_partner_s_drops():
    from detmix.preview import dropped_input_boxes

    a = make_sample(40, 60, [[0, 0, 20, 20]], fill=50)
    b = make_sample(40, 60, [[50, 30, 60, 40]], fill=200)
    out = F.resizemix(a, b, (0, 0, 10, 10), min_size=2)  # b's box shrinks under min_size: dropped
    out["params"] = MixParams("resizemix", 1 - 100 / 2400, None, (40, 60), {"paste_box": (0, 0, 10, 10)})
    assert out["dropped"]["source"].tolist() == [1]
    assert get_mode("resizemix").outline(out["params"]) == (0, 0, 10, 10)
    assert dropped_input_boxes(a, b, out, partner=False).shape == (0, 4)  # its input place is not where it was
    np.testing.assert_array_equal(dropped_input_boxes(a, b, out), [[50, 30, 60, 40]])
