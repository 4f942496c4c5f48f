"""Samplers, the params record, recipes and the end-to-end RandomMix / apply_params path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, make_sample, to_torch
from detmix import MixParams, RandomMix, Recipe, align_pair, apply_params, builtin_recipes, load_recipe
from detmix.recipes import PACKAGED_RECIPES
from detmix.sampling import as_numpy_generator, sample_cut_box, sample_lam, sample_params

# ---------------------------------------------------------------- samplers


def test_lam_follows_beta_and_clamp():
    rng = np.random.default_rng(0)
    draws = np.array([sample_lam(rng, 0.8) for _ in range(4000)])
    assert abs(draws.mean() - 0.5) < 0.02
    assert abs(draws.var() - 0.25 / (2 * 0.8 + 1)) < 0.01  # Var of Beta(a, a) = 1 / (4 (2a + 1))
    clamped = [sample_lam(rng, 0.8, (0.3, 0.7)) for _ in range(500)]
    assert min(clamped) >= 0.3 and max(clamped) <= 0.7
    assert clamped.count(0.3) > 0 and clamped.count(0.7) > 0


def test_cut_box_area_tracks_lam_and_centres_cover_the_canvas():
    rng = np.random.default_rng(1)
    boxes = [sample_cut_box(rng, 0.75, 100, 200) for _ in range(400)]
    unclipped = [lam for (x1, y1, x2, y2), lam in boxes if x1 > 0 and y1 > 0 and x2 < 200 and y2 < 100]
    assert unclipped and all(lam == pytest.approx(0.75) for lam in unclipped)  # sides sqrt(1 - lam)
    centres = np.array([((x1 + x2) / 2, (y1 + y2) / 2) for (x1, y1, x2, y2), _ in boxes])
    assert centres[:, 0].min() < 40 and centres[:, 0].max() > 160


def test_no_global_random_state_is_used():
    np.random.seed(0)
    torch.manual_seed(0)
    before = (np.random.get_state()[1].copy(), torch.random.get_rng_state().clone())
    sample_params(np.random.default_rng(3), load_recipe("deit"), 64, 64)
    sample_params(torch.Generator().manual_seed(3), load_recipe("deit"), 64, 64)
    assert (np.random.get_state()[1] == before[0]).all()
    assert torch.equal(torch.random.get_rng_state(), before[1])


def test_torch_generator_is_reproducible():
    one = sample_params(torch.Generator().manual_seed(5), load_recipe("deit"), 64, 80)
    two = sample_params(torch.Generator().manual_seed(5), load_recipe("deit"), 64, 80)
    assert one == two
    with pytest.raises(TypeError, match=r"generator must be a numpy.random.Generator or a torch.Generator, got int"):
        as_numpy_generator(5)


def test_switch_follows_probabilities():
    rng = np.random.default_rng(2)
    deit = load_recipe("deit")
    modes = [sample_params(rng, deit, 32, 32).mode for _ in range(2000)]
    assert abs(modes.count("cutmix") / 2000 - 0.5) < 0.05 and modes.count("none") == 0
    half = deit.model_copy(update={"prob": 0.25})
    modes = [sample_params(rng, half, 32, 32).mode for _ in range(2000)]
    assert abs(modes.count("none") / 2000 - 0.75) < 0.05
    assert {sample_params(rng, load_recipe("mixup"), 32, 32).mode for _ in range(50)} == {"mixup"}
    assert {sample_params(rng, load_recipe("cutmix"), 32, 32).mode for _ in range(50)} == {"cutmix"}


def test_params_record_round_trips_and_validates():
    p = MixParams("cutmix", 0.98, (1, 2, 3, 4), (10, 20))
    assert MixParams.from_dict(p.to_dict()) == p
    assert yaml.safe_load(yaml.safe_dump(p.to_dict())) == p.to_dict()
    with pytest.raises(ValueError, match=r"cut_box must be given for the modes \[.*'cutmix'.*\] and only then"):
        MixParams("cutmix", 0.5)
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\], got 1.5"):
        MixParams("mixup", 1.5)
    with pytest.raises(ValueError, match=r"mode must be one of \('none', 'mixup', 'cutmix'"):
        MixParams("mosaic", 0.5)
    # each mode checks its own record: a cut box's lam is its area's, none has lam 1
    with pytest.raises(ValueError, match=r"lam must be 1 - area\(cut_box\) / \(height \* width\) = 0.98 .* got 0.75"):
        MixParams("cutmix", 0.75, (1, 2, 3, 4), (10, 20))
    with pytest.raises(ValueError, match="lam must be 1 for mode 'none'"):
        MixParams("none", 0.5)
    with pytest.raises(ValueError, match=r"seed is not a parameter of mode 'mixup' \(mode 'mixup' takes \[\]"):
        MixParams.from_dict({"mode": "mixup", "lam": 0.5, "seed": 3})
    with pytest.raises(ValueError, match=r"decay must be given for mode 'fmix'"):
        MixParams.from_dict({"mode": "fmix", "lam": 0.5, "seed": 3, "canvas": [10, 10]})
    # a record's pixels are whole: a fraction is refused, never truncated
    with pytest.raises(ValueError, match=r"cut_box must be 4 whole numbers, got \[0.7, 0, 10.9, 10\]"):
        MixParams.from_dict({"mode": "cutmix", "lam": 0.5, "cut_box": [0.7, 0, 10.9, 10], "canvas": [10, 20]})
    with pytest.raises(ValueError, match=r"canvas must be 2 whole numbers"):
        MixParams.from_dict({"mode": "mixup", "lam": 0.5, "canvas": [48.9, 64]})
    # without a canvas the box is still checked
    with pytest.raises(ValueError, match=r"cut_box must satisfy 0 <= x1 <= x2 and 0 <= y1 <= y2, got \[10, 0, 5, 48\]"):
        MixParams("cutmix", 0.5, (10, 0, 5, 48))
    with pytest.raises(ValueError, match=r"paste_box must satisfy 0 <= x1 < x2 and 0 <= y1 < y2"):
        MixParams("resizemix", 0.5, None, None, {"paste_box": (10, 0, 5, 48)})


# ---------------------------------------------------------------- recipes


def test_builtin_recipes_are_the_documented_ones():
    recipes = builtin_recipes()
    assert {"deit", "cutmix", "mixup"} <= set(recipes)
    deit = recipes["deit"]
    assert (deit.mixup.alpha, deit.cutmix.alpha, deit.switch_prob, deit.prob) == (0.8, 1.0, 0.5, 1.0)
    assert recipes["mixup"].mixup.alpha == 1.5 and recipes["mixup"].cutmix is None
    assert recipes["cutmix"].mixup is None
    for path in (REPO / "configs" / "recipes").glob("*.yaml"):
        assert load_recipe(path) == recipes[path.stem]
    # One source of truth: configs/recipes is the packaged folder, not a copy of it.
    assert (REPO / "configs" / "recipes").resolve() == PACKAGED_RECIPES == REPO / "detmix" / "_recipes"


def test_recipes_dir_adds_to_the_packaged_recipes(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("description: mine\nmixup: {alpha: 0.3}\n")
    (tmp_path / "deit.yaml").write_text("description: a retuned deit\ncutmix: {alpha: 2.0}\n")
    monkeypatch.setenv("DETMIX_RECIPES_DIR", str(tmp_path))
    recipes = builtin_recipes()
    assert list(recipes) == ["copy_paste", "cutmix", "cutout", "deit", "fmix", "mine", "mixup", "resizemix", "saliencymix"]
    assert recipes["mine"].mixup.alpha == 0.3 and recipes["mine"].name == "mine"
    assert recipes["deit"].description == "a retuned deit" and recipes["deit"].mixup is None
    assert RandomMix("mine").recipe == recipes["mine"]
    assert load_recipe("cutmix").cutmix.min_visibility == 0.25
    with pytest.raises(ValueError, match=r"recipe must be one of \['copy_paste', 'cutmix', 'cutout', 'deit', 'fmix', 'mine', 'mixup', 'resizemix', 'saliencymix'\] .* got 'nope'"):
        load_recipe("nope")
    monkeypatch.setenv("DETMIX_RECIPES_DIR", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match=r"DETMIX_RECIPES_DIR must be a folder of recipe YAML files, got '.*absent'"):
        builtin_recipes()
    monkeypatch.delenv("DETMIX_RECIPES_DIR")
    packaged = ["copy_paste", "cutmix", "cutout", "deit", "fmix", "mixup", "resizemix", "saliencymix"]
    assert list(builtin_recipes()) == packaged
    assert list(builtin_recipes(tmp_path)) == sorted([*packaged, "mine"])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"mixup": {"alpha": 0}}, r"mixup.alpha\n  Input should be greater than 0"),
        ({"mixup": {"alpha": float("nan")}}, r"mixup.alpha\n  Input should be a finite number"),
        ({"cutmix": {"min_visibility": 2}}, r"cutmix.min_visibility\n  Input should be less than or equal to 1"),
        ({"cutmix": {"lam_clamp": [0.7, 0.3]}}, r"lam_clamp must be \[low, high\] with low <= high"),
        ({"prob": 1.1, "mixup": {}}, r"prob\n  Input should be less than or equal to 1"),
        ({"mixup": {"alpah": 1}}, r"mixup.alpah\n  Extra inputs are not permitted"),
        ({"mixup": {"alpha": "2"}}, r"mixup.alpha\n  Input should be a valid number"),
        ({"prob": True, "mixup": {}}, r"prob\n  Input should be a valid number"),
        ({"cutmix": {"min_area": "1e3"}}, r"cutmix.min_area\n  Input should be a valid number"),
        ({}, r"a recipe needs at least one mode section of \['mixup', 'cutmix'"),
        ({"mixup": {}, "blur": {}}, r"unknown recipe key 'blur': a recipe has \['name', .*\] and one section per mode"),
        ({"mixup": {}, "odds": {"cutmix": 1}}, r"odds names \['cutmix'\], which the recipe has no section for"),
        ({"cutmix": {}, "fmix": {}, "odds": {"cutmix": 1}}, r"odds must give every mode of the recipe its odds .* \['fmix'\]"),
        ({"cutmix": {}, "mixup": {}, "fmix": {}, "switch_prob": 0.9}, r"switch_prob is the DeiT switch of a recipe of "
         r"CutMix and MixUp alone"),
        ({"cutmix": {}, "mixup": {}, "switch_prob": 0.9, "odds": {"cutmix": 1, "mixup": 1}}, r"switch_prob is the DeiT"),
        ({"mixup": {}, "align": "crop"}, r"align\n  Input should be 'pad' or 'resize'"),
    ],
)
def test_bad_recipes_name_the_field(data, match):
    with pytest.raises(ValueError, match=match):
        Recipe.model_validate(data)


def test_recipe_files_and_names(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("mixup: {alpha: 2.0}\n")
    assert load_recipe(path).name == "mine" and load_recipe(path).mixup.alpha == 2.0
    path.write_text("mixup: {alpha: -1}\n")
    with pytest.raises(ValueError, match=r"recipe file .*mine.yaml is invalid"):
        load_recipe(path)
    with pytest.raises(ValueError, match=r"recipe must be one of \['copy_paste', 'cutmix', 'cutout', 'deit', .*got 'nope'"):
        load_recipe("nope")
    path.write_text("cutmix: {min_area: '1000', alpha: yes}\n")  # a string and a boolean: no numbers
    with pytest.raises(ValueError, match=r"(?s)cutmix.alpha\n  Input should be a valid number.*"
                                         r"cutmix.min_area\n  Input should be a valid number"):
        load_recipe(path)
    for text in ("1e3", "1.0e3", "1.0e+3", "1000", "10_00.0"):  # YAML 1.2 numbers (1.1 reads the first two as strings)
        path.write_text(f"cutmix: {{min_area: {text}, alpha: 1}}\n")
        assert load_recipe(path).cutmix.min_area == 1000.0 and load_recipe(path).cutmix.alpha == 1.0, text


# ---------------------------------------------------------------- alignment


def test_pad_keeps_geometry_and_fills():
    a = make_sample(20, 30, [[1, 1, 5, 5]], masks=True, fill=7)
    b = make_sample(25, 10, [[2, 2, 8, 24]], masks=True, fill=9)
    a2, b2 = align_pair(a, b, "pad")
    assert a2["image"].shape == b2["image"].shape == (25, 30, 3)
    np.testing.assert_array_equal(b2["boxes"], b["boxes"])
    assert (a2["image"][20:] == 0).all() and (a2["image"][:20] == 7).all()
    assert b2["masks"].shape == (1, 25, 30) and b2["masks"][:, :, 10:].sum() == 0
    assert b2["masks"].sum() == b["masks"].sum()
    assert align_pair(a, a, "pad") == (a, a)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_resize_scales_b_onto_a(kind):
    a = make_sample(40, 60, [[0, 0, 10, 10]], masks=True)
    b = make_sample(20, 20, [[5, 5, 10, 20]], masks=True, fill=100)
    if kind == "torch":
        a, b = to_torch(a), to_torch(b)
    _, b2 = align_pair(a, b, "resize")
    boxes = np.asarray(b2["boxes"])
    np.testing.assert_allclose(boxes, [[15, 10, 30, 40]])
    masks = np.asarray(b2["masks"])
    assert masks.shape == (1, 40, 60)
    ys, xs = np.nonzero(masks[0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (15, 30, 10, 40)
    image = np.asarray(b2["image"])
    assert image.shape == ((40, 60, 3) if kind == "numpy" else (3, 40, 60)) and (image == 100).all()


def test_align_errors():
    with pytest.raises(ValueError, match="mode must be 'pad' or 'resize', got 'crop'"):
        align_pair(make_sample(), make_sample(), "crop")


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("recipe", ["deit", "cutmix", "mixup"])
def test_random_mix_replays_from_logged_params(rng, recipe):
    a = make_sample(50, 70, [[5, 5, 40, 40], [30, 10, 69, 49]], masks=True, fill=20)
    b = make_sample(60, 40, [[0, 0, 39, 59]], masks=True, fill=200)
    mixer = RandomMix(recipe)
    for _ in range(10):
        out = mixer(a, b, rng)
        logged = MixParams.from_dict(out["params"].to_dict())
        again = apply_params(*align_pair(a, b, mixer.recipe.align), logged, mixer.recipe)
        np.testing.assert_array_equal(again["image"], out["image"])
        np.testing.assert_array_equal(again["boxes"], out["boxes"])
        np.testing.assert_array_equal(again["weights"], out["weights"])


def test_apply_params_checks_the_canvas_and_the_recipe():
    a, b = make_sample(10, 10), make_sample(10, 10)
    with pytest.raises(ValueError, match=r"drawn for canvas \(20, 20\) but a has canvas \(10, 10\)"):
        apply_params(a, b, MixParams("mixup", 0.5, None, (20, 20)), load_recipe("deit"))
    with pytest.raises(ValueError, match="params ask for mode 'cutmix' but recipe 'mixup' has no 'cutmix' section"):
        apply_params(a, b, MixParams("cutmix", 0.5, (0, 0, 5, 10)), load_recipe("mixup"))
    none = apply_params(make_sample(10, 10, [[1, 1, 2, 2]]), make_sample(10, 10, [[0, 0, 9, 9]]),
                        MixParams("none", 1.0), load_recipe("deit"))
    assert none["weights"].tolist() == [1.0] and none["dropped"]["source"].tolist() == [1]
