"""Contracts of the mode registry that every face relies on, each pinned by the behaviour it
promises: a record's own parameters are what a kernel applies (FMix's decay, Cutout's fill),
the partner is what SaliencyMix reads (in draw_params and BatchMix), recipe odds and the DeiT
draw order, ResizeMix reads its partner at its own size, BatchParams keeps and checks each pair's
extra parameters, MixParams refuses what its mode cannot apply, and RecipeMix's align override."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch

from detmix import MixParams, apply_params, load_recipe, mix_pair
from detmix import functional as F
from detmix.align import align_pair
from detmix.mix import draw_params
from detmix.modes import mode_names
from detmix.modes.fmix import fmix_region
from detmix.sampling import sample_params
from detmix.torch import BatchMix, BatchParams


def sample(image: np.ndarray, boxes: Any = ()) -> dict[str, Any]:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return {"image": image, "boxes": boxes, "labels": np.arange(1, len(boxes) + 1, dtype=np.int64)}


def flat(height: int, width: int, value: int = 100) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def with_square(height: int, width: int, x: int, y: int, side: int = 10) -> np.ndarray:
    image = flat(height, width)
    image[y : y + side, x : x + side] = 255
    return image


def contains(box: Any, x: int, y: int, side: int) -> bool:
    """Whether the cut box ``(x1, y1, x2, y2)`` holds the whole square ``[x, x + side) x [y, y + side)``."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return x1 <= x and y1 <= y and x + side <= x2 and y + side <= y2


# ------------------------------------------------------------------ FMix: the record's decay (M25)


def test_fmix_applies_the_region_of_the_records_own_decay():
    height, width, k = 32, 48, 500
    lam = 1.0 - k / (height * width)
    seed = 12345
    a, b = sample(np.zeros((height, width, 3), np.uint8)), sample(np.full((height, width, 3), 255, np.uint8))
    recipe = load_recipe({"fmix": {}})  # the recipe's decay is 3: the record's 1.0 must win
    params = MixParams("fmix", lam, None, (height, width), {"seed": seed, "decay": 1.0})
    out = apply_params(a, b, params, recipe)
    region = fmix_region(seed, 1.0, lam, height, width)
    assert region.sum() == k
    np.testing.assert_array_equal(out["image"], np.broadcast_to(np.where(region[..., None], 255, 0), (height, width, 3)).astype(np.uint8))
    decay3 = fmix_region(seed, 3.0, lam, height, width)
    assert (region != decay3).any()
    assert not np.array_equal(out["image"], np.broadcast_to(np.where(decay3[..., None], 255, 0), (height, width, 3)).astype(np.uint8))


# ------------------------------------------------------------------ SaliencyMix reads the partner (M22, M24, M18)

# (x, y) of a bright 10 px square on a flat 96x128 partner, away from the centre and the corners.
SQUARES = [(100, 10), (10, 70), (104, 74), (90, 60)]
SALIENCY = {"saliencymix": {"lam_clamp": [0.9, 0.9]}}


@pytest.mark.parametrize("x, y", SQUARES)
def test_draw_params_centres_saliencymix_on_the_partner(x, y):
    height, width = 96, 128
    a = sample(flat(height, width))
    b = sample(with_square(height, width, x, y))
    recipe = load_recipe(SALIENCY)
    for seed in range(4):
        params = draw_params(np.random.default_rng(seed), recipe, a, b)
        assert params.mode == "saliencymix"
        assert contains(params.cut_box, x, y, 10), (seed, params.cut_box)


def test_batchmix_centres_saliencymix_on_each_images_partner():
    height, width = 96, 128
    squares = [(10, 70), (100, 10)]  # image 0's, image 1's
    images = torch.stack([torch.from_numpy(with_square(height, width, x, y)).permute(2, 0, 1) for x, y in squares])
    targets = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)} for _ in squares]
    mixer = BatchMix(SALIENCY, per="pair")
    for seed in range(3):
        mixer(images, targets, torch.Generator().manual_seed(seed))
        params = mixer.last_params
        assert params.partner.tolist() == [1, 0]
        assert params.modes == ("saliencymix", "saliencymix")
        for i in range(2):
            x, y = squares[int(params.partner[i])]
            assert contains(params.cut[i].tolist(), x, y, 10), (seed, i, params.cut[i].tolist())
            ox, oy = squares[i]
            assert not contains(params.cut[i].tolist(), ox, oy, 10)


def test_saliencymix_object_centre_draws_among_all_the_partners_objects():
    height, width = 100, 100
    boxes = [[5, 5, 15, 15], [80, 5, 95, 20], [5, 80, 20, 95], [80, 80, 95, 95]]
    a, b = sample(flat(height, width)), sample(flat(height, width), boxes)
    recipe = load_recipe({"saliencymix": {"centre": "object", "lam_clamp": [0.95, 0.95]}})
    rng = np.random.default_rng(0)
    hits = Counter()
    for _ in range(40):
        x1, y1, x2, y2 = draw_params(rng, recipe, a, b).cut_box
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        inside = [k for k, (bx1, by1, bx2, by2) in enumerate(boxes) if bx1 <= cx <= bx2 and by1 <= cy <= by2]
        assert len(inside) == 1, (cx, cy)  # the cut is centred on one of the partner's objects
        hits[inside[0]] += 1
    assert len(hits) == len(boxes), hits  # and every object gets its turn


# ------------------------------------------------------------------ Cutout: fill and area (M20, M9)


def test_cutout_erases_to_the_recipes_fill_on_uint8():
    height, width = 40, 50
    a = sample(np.full((height, width, 3), 200, np.uint8))
    recipe = load_recipe({"cutout": {"fill": 7}})
    box = (10, 5, 30, 25)
    lam = 1.0 - 20 * 20 / (height * width)
    out = apply_params(a, sample(flat(height, width)), MixParams("cutout", lam, box, (height, width)), recipe)
    image = out["image"]
    assert image.dtype == np.uint8
    assert (image[5:25, 10:30] == 7).all()
    outside = np.ones((height, width), bool)
    outside[5:25, 10:30] = False
    assert (image[outside] == 200).all()


def test_cutout_erased_share_spans_the_area_range():
    """The erased share is drawn from U(area); a box clipped by the canvas erases less than its
    draw, so the spread is measured on the boxes that lie inside the canvas."""
    recipe = load_recipe({"cutout": {}})  # area [0.05, 0.25]
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(200):
        params = sample_params(rng, recipe, 100, 100)
        assert params.mode == "cutout"
        x1, y1, x2, y2 = params.cut_box
        assert params.lam == pytest.approx(1.0 - (x2 - x1) * (y2 - y1) / 10000)
        if x1 > 0 and y1 > 0 and x2 < 100 and y2 < 100:  # not clipped: the drawn area itself
            shares.append((x2 - x1) * (y2 - y1) / 10000)
    assert len(shares) >= 40
    assert min(shares) < 0.10 and max(shares) > 0.20, (min(shares), max(shares))
    assert all(0.04 <= s <= 0.25 for s in shares), shares  # whole-pixel sides round the drawn area down


# ------------------------------------------------------------------ recipe odds and the DeiT order (M10, M8)


def test_recipe_odds_weight_the_modes():
    recipe = load_recipe({"cutmix": {}, "mixup": {}, "fmix": {}, "odds": {"cutmix": 2, "mixup": 1, "fmix": 1}})
    rng = np.random.default_rng(0)
    counts = Counter(sample_params(rng, recipe, 16, 16).mode for _ in range(4000))
    assert set(counts) == {"cutmix", "mixup", "fmix"}
    assert abs(counts["cutmix"] / 4000 - 0.5) < 0.03, counts
    assert abs(counts["mixup"] / 4000 - 0.25) < 0.03, counts
    assert abs(counts["fmix"] / 4000 - 0.25) < 0.03, counts


DEIT_DRAWS = [
    {"mode": "cutmix", "lam": 0.7998828125, "cut_box": [0, 131, 141, 240], "canvas": [240, 320]},
    {"mode": "mixup", "lam": 0.0007587160605567715, "cut_box": None, "canvas": [240, 320]},
    {"mode": "mixup", "lam": 0.12024408583865069, "cut_box": None, "canvas": [240, 320]},
    {"mode": "cutmix", "lam": 0.9685026041666667, "cut_box": [0, 0, 41, 59], "canvas": [240, 320]},
    {"mode": "mixup", "lam": 0.6434929864623182, "cut_box": None, "canvas": [240, 320]},
    {"mode": "mixup", "lam": 0.671245963522862, "cut_box": None, "canvas": [240, 320]},
]


def test_deit_draw_sequence_is_pinned():
    """The DeiT switch draws CutMix first (u < switch_prob), as timm and the code before the mode
    registry did: the same generator gives the same six records."""
    rng = np.random.default_rng(0)
    recipe = load_recipe("deit")
    assert [sample_params(rng, recipe, 240, 320).to_dict() for _ in range(6)] == DEIT_DRAWS


# ------------------------------------------------------------------ ResizeMix reads its partner unaligned (M14)


def test_mix_pair_resizemix_resizes_the_original_partner_once():
    rng = np.random.default_rng(3)
    a = sample(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), [[2, 2, 20, 20]])
    b = sample(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8), [[3, 4, 15, 25]])
    recipe = load_recipe({"resizemix": {}, "align": "resize"})
    paste = (7, 5, 32, 35)
    lam = 1.0 - 25 * 30 / (40 * 60)
    params = MixParams("resizemix", lam, None, (40, 60), {"paste_box": paste})
    out = mix_pair(a, b, params, recipe)
    direct = F.resizemix(a, b, paste)
    np.testing.assert_array_equal(out["image"], direct["image"])
    np.testing.assert_allclose(out["boxes"], direct["boxes"])
    aligned_b = align_pair(a, b, "resize")[1]
    twice = F.resizemix(a, aligned_b, paste)
    assert not np.array_equal(out["image"], twice["image"])


# ------------------------------------------------------------------ BatchParams: extra kept and checked (M33, M16)


def batch(height: int = 24, width: int = 32, size: int = 3) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (size, 3, height, width), generator=gen, dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[2.0, 3.0, 12.0, 15.0], [14.0, 8.0, 30.0, 20.0]]),
                "labels": torch.tensor([1, 2])} for _ in range(size)]
    return images, targets


@pytest.mark.parametrize("name", ["fmix", "resizemix"])
@pytest.mark.parametrize("per", ["batch", "pair"])
def test_batchparams_round_trip_keeps_extra_and_replays(name, per):
    images, targets = batch()
    mixer = BatchMix(name, per=per)
    out_images, out_targets = mixer(images, targets, torch.Generator().manual_seed(1))
    params = mixer.last_params
    assert all(set(e) for e in params.extra)  # every pair carries its mode's own parameters
    record = params.to_dict()
    again = BatchParams.from_dict(record)
    assert again == params and again.to_dict() == record
    assert again.extra == params.extra
    replay_images, replay_targets = mixer.apply(images, targets, again)
    assert torch.equal(replay_images, out_images)
    for got, want in zip(replay_targets, out_targets):
        assert torch.equal(got["boxes"], want["boxes"]) and torch.equal(got["weights"], want["weights"])


def code(name: str) -> int:
    return mode_names().index(name)


def test_batchparams_checks_each_pair_with_its_mode():
    height, width = 16, 16
    good_fmix = {"seed": 1, "decay": 3.0}
    with pytest.raises(ValueError, match=r"^pair 0: decay must be"):
        BatchParams(partner=[1, 0], mode=[code("fmix"), code("fmix")], lam=[0.5, 0.5], cut=torch.zeros(2, 4),
                    canvas=(height, width), extra=({"seed": 1, "decay": 0}, good_fmix))
    with pytest.raises(ValueError, match=r"^pair 0: lam must"):
        BatchParams(partner=[1, 0], mode=[code("cutmix"), code("none")], lam=[0.3, 1.0],
                    cut=torch.tensor([[0, 0, 8, 8], [0, 0, 0, 0]]), canvas=(height, width))
    # the same with consistent values is accepted
    BatchParams(partner=[1, 0], mode=[code("cutmix"), code("fmix")], lam=[0.75, 0.5],
                cut=torch.tensor([[0, 0, 8, 8], [0, 0, 0, 0]]), canvas=(height, width), extra=({}, good_fmix))


# ------------------------------------------------------------------ MixParams and apply_params refuse (M15, M30, M31)


def test_apply_params_refuses_more_partners_than_the_mode_takes():
    a, b = sample(flat(20, 20)), sample(flat(20, 20))
    params = MixParams("cutmix", 0.75, (0, 0, 10, 10), (20, 20))
    with pytest.raises(ValueError, match=r"mixes a with 1 partner sample\(s\), got 2"):
        apply_params(a, [b, b], params, load_recipe("cutmix"))


def test_fmix_lam_must_be_a_whole_number_of_pixels():
    MixParams("fmix", 1.0 - 100 / 400, None, (20, 20), {"seed": 3, "decay": 3.0})
    with pytest.raises(ValueError, match=r"^lam must be 1 - k"):
        MixParams("fmix", 1.0 - 100.5 / 400, None, (20, 20), {"seed": 3, "decay": 3.0})


def test_resizemix_lam_must_match_the_paste_box():
    MixParams("resizemix", 1.0 - 100 / 400, None, (20, 20), {"paste_box": (0, 0, 10, 10)})
    with pytest.raises(ValueError, match=r"^lam must be 1 - area\(paste_box\)"):
        MixParams("resizemix", 0.5, None, (20, 20), {"paste_box": (0, 0, 10, 10)})


# ------------------------------------------------------------------ RecipeMix's align override (M36)


@pytest.mark.parametrize("align, canvas", [("pad", (50, 60)), ("resize", (40, 60))])
def test_recipemix_align_override(align, canvas):
    A = pytest.importorskip("albumentations")
    from detmix.albumentations import RecipeMix

    mix = RecipeMix("fmix", align=align, p=1.0)  # the fmix recipe says align: resize
    assert mix.recipe.align == align
    tf = A.Compose([mix], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]), seed=0)
    rng = np.random.default_rng(0)
    out = tf(image=rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), bboxes=np.array([[1.0, 1.0, 20.0, 20.0]]),
             labels=[1], mix_metadata=[{"image": rng.integers(0, 256, (50, 30, 3), dtype=np.uint8),
                                        "bboxes": np.array([[2.0, 2.0, 25.0, 40.0]]), "labels": [2]}])
    assert out["image"].shape[:2] == canvas
