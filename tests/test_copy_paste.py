"""Copy-Paste: the partner's selected objects pasted by their masks, through the core, replay,
numpy and torch, BatchMix, the Albumentations adapter and the service, on real photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_sample, to_numpy, to_torch
from detmix import MixParams, RandomMix, align_pair, apply_params, functional as F, load_recipe, mix_pair
from detmix.functional import DropReason


def pair():
    a = make_sample(40, 60, [[0, 0, 30, 20], [40, 20, 60, 40]], masks=True, fill=10, ids=[1, 2])
    b = make_sample(40, 60, [[10, 5, 20, 15], [45, 25, 55, 35], [0, 30, 10, 40]], masks=True, fill=200,
                    ids=[11, 12, 13])
    return a, b


def test_selected_objects_are_pasted_by_their_masks_and_the_others_not_selected():
    a, b = pair()
    out = F.copy_paste(a, b, [0, 1])
    region = (b["masks"][0] | b["masks"][1]).astype(bool)
    np.testing.assert_array_equal(out["image"][region], b["image"][region])
    np.testing.assert_array_equal(out["image"][~region], a["image"][~region])
    assert out["lam"] == pytest.approx(1 - region.sum() / (40 * 60))
    pasted = out["source"] == 1
    assert out["index"][pasted].tolist() == [0, 1] and out["ids"][pasted].tolist() == [11, 12]
    np.testing.assert_array_equal(out["boxes"][pasted], b["boxes"][:2])  # whole: their input boxes
    np.testing.assert_array_equal(out["weights"][pasted], 1.0)
    # a's first object loses the pasted pixels: its box is the tight box of what is left
    own = out["source"] == 0
    left = a["masks"][0].astype(bool) & ~region
    np.testing.assert_array_equal(out["masks"][own][0].astype(bool), left)
    assert out["weights"][own][0] == pytest.approx(left.sum() / a["masks"][0].sum())
    dropped = {(int(s), int(i)): DropReason(int(r)) for s, i, r in
               zip(out["dropped"]["source"], out["dropped"]["index"], out["dropped"]["reason"])}
    assert dropped == {(1, 2): DropReason.NOT_SELECTED}


def test_by_box_and_errors_name_the_argument():
    a, b = pair()
    with pytest.raises(ValueError, match="copy_paste pastes b's objects by their masks: give masks .* or by_box=True"):
        F.copy_paste({k: v for k, v in a.items() if k != "masks"}, {k: v for k, v in b.items() if k != "masks"}, [0])
    no_masks = [{k: v for k, v in s.items() if k != "masks"} for s in (a, b)]
    out = F.copy_paste(*no_masks, [0], by_box=True)
    assert (out["image"][5:15, 10:20] == 200).all() and (out["image"][20:, :] != 200).all()
    with pytest.raises(ValueError, match=r"select must hold row indices of b's 3 objects, got \[3\]"):
        F.copy_paste(a, b, [3])
    with pytest.raises(ValueError, match="select must not name an object twice"):
        MixParams("copy_paste", 1.0, None, (40, 60), {"select": (1, 1)})
    empty = F.copy_paste(a, b, [])
    np.testing.assert_array_equal(empty["image"], a["image"])
    assert sorted(empty["dropped"]["index"][empty["dropped"]["source"] == 1].tolist()) == [0, 1, 2]


def test_numpy_equals_torch():
    a, b = pair()
    want = F.copy_paste(a, b, [0, 2])
    got = to_numpy(F.copy_paste(to_torch(a), to_torch(b), [0, 2]))
    np.testing.assert_array_equal(got["image"].transpose(1, 2, 0), want["image"])
    for key in ("boxes", "weights", "masks", "source", "index"):
        np.testing.assert_array_equal(got[key], want[key])
    for key in ("source", "index", "reason"):
        np.testing.assert_array_equal(got["dropped"][key], want["dropped"][key])


def test_the_sampler_selects_among_the_partners_objects_by_class():
    mode = RandomMix({"copy_paste": {"select": "random", "classes": [2, 3]}})
    a, b = pair()
    seen = set()
    for seed in range(20):
        out = mode(a, b, np.random.default_rng(seed))
        select = out["params"]["select"]
        assert select and set(select) <= {1, 2}  # b's labels are 1, 2, 3: rows 1 and 2
        seen.add(select)
    assert len(seen) > 1
    everything = RandomMix({"copy_paste": {"select": "all"}})(a, b, np.random.default_rng(0))
    assert everything["params"]["select"] == (0, 1, 2)


@pytest.fixture(scope="module")
def photos(coco_mini):
    from detmix.coco import CocoDetectionSource

    source = CocoDetectionSource(coco_mini / "annotations" / "instances_val2017.json", coco_mini / "val2017")
    return [source[k] for k in range(5)]


def test_on_photographs_every_box_is_exact_and_replays(photos):
    mixer = RandomMix("copy_paste")
    rng = np.random.default_rng(0)
    for k in range(len(photos)):
        a, b = photos[k], photos[(k + 1) % len(photos)]
        out = mixer(a, b, rng)
        select = set(out["params"]["select"])
        kept_b = {int(i) for s, i in zip(out["source"], out["index"]) if s == 1}
        lost_b = {int(i): int(r) for s, i, r in zip(out["dropped"]["source"], out["dropped"]["index"],
                                                     out["dropped"]["reason"]) if s == 1}
        assert kept_b | set(lost_b) == set(range(len(b["boxes"])))
        assert {i for i, r in lost_b.items() if r == DropReason.NOT_SELECTED} == set(range(len(b["boxes"]))) - select
        tight = F.masks_to_boxes(out["masks"], np.float64)
        aligned_b = align_pair(a, b, mixer.recipe.align)[1]
        for row in range(len(out["boxes"])):
            source, index = int(out["source"][row]), int(out["index"][row])
            given = (a, aligned_b)[source]["boxes"][index]
            box = out["boxes"][row]
            if out["weights"][row] == 1:
                np.testing.assert_allclose(box, given, rtol=0, atol=1e-4)  # untouched
            else:
                expected = np.concatenate([np.maximum(given[:2], tight[row][:2]), np.minimum(given[2:], tight[row][2:])])
                np.testing.assert_allclose(box, expected, rtol=0, atol=1e-4)
        again = mix_pair(a, b, MixParams.from_dict(out["params"].to_dict()), mixer.recipe)
        np.testing.assert_array_equal(again["image"], out["image"])


def test_batchmix_and_albumentations_equal_the_core(photos):
    import albumentations as A

    from detmix.albumentations import RecipeMix
    from detmix.datasets import to_albumentations_item
    from detmix.torch import BatchMix

    keys = ("image", "boxes", "labels", "masks")
    samples = [to_torch({k: s[k] for k in keys}) for s in photos[:3]]
    mix = BatchMix("copy_paste", per="pair")
    out_images, out = mix([s["image"] for s in samples], [{k: v for k, v in s.items() if k != "image"} for s in samples],
                          generator=torch.Generator().manual_seed(0))
    height, width = mix.last_params.canvas
    pad = {"image": torch.zeros(3, height, width, dtype=torch.uint8), "boxes": torch.zeros(0, 4),
           "labels": torch.zeros(0, dtype=torch.int64)}
    for i in range(3):
        j = int(mix.last_params.partner[i])
        a = align_pair(samples[i], pad, "pad")[0]
        b = align_pair(samples[j], pad, "pad")[0]
        ref = apply_params(a, b, mix.last_params.pair(i), mix.recipe)
        torch.testing.assert_close(out_images[i], ref["image"], rtol=0, atol=0)
        torch.testing.assert_close(out[i]["boxes"], ref["boxes"])

    transform = RecipeMix("copy_paste", p=1.0)
    tf = A.Compose([transform], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
                   additional_targets={"crowd_mask": "mask"}, seed=2)
    item, partner = (to_albumentations_item(s, bbox_format="pascal_voc") for s in photos[3:5])
    got = tf(**item, mix_metadata=[partner])
    ref = mix_pair(photos[3], photos[4], MixParams.from_dict(transform.params["mix"]), load_recipe("copy_paste"))
    np.testing.assert_array_equal(got["image"], ref["image"])
    np.testing.assert_allclose(np.asarray(got["bboxes"], np.float64).reshape(-1, 4), ref["boxes"], atol=2e-3)
