"""Every mode of the registry through POST /v1/mix (by name and inline), and a toy mode added
through the registry alone that runs through RandomMix, BatchMix and the service: the extension
point of ``docs/modes.md``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from detmix import MixParams, RandomMix, functional as F, load_recipe
from detmix._fields import BoxRules
from detmix.modes import Mode, register, unregister
from detmix.modes.cutmix import check_cut_params, cutmix

from .servicekit import check_against_core, coco_batch

REGION_MODES = ("cutout", "resizemix", "fmix", "saliencymix")


@pytest.mark.parametrize("name", REGION_MODES)
def test_each_region_mode_by_name_answers_as_the_core(client, name):
    body = coco_batch(4, masks=True) | {"recipe": name, "seed": 3, "output": {"format": "png"}}
    response = client.post("/v1/mix", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert {image["mix"]["params"]["mode"] for image in answer["images"]} == {name}
    check_against_core(body, answer, name, masks=True)
    replay = {k: v for k, v in body.items() if k != "seed"} | {"params": [i["mix"] for i in answer["images"]]}
    again = client.post("/v1/mix", json=replay).json()
    assert again["annotations"] == answer["annotations"] and again["dropped"] == answer["dropped"]


def test_a_replayed_record_of_a_new_mode_is_checked_by_its_mode(client):
    body = coco_batch(2) | {"recipe": "fmix", "seed": 1}
    answer = client.post("/v1/mix", json=body).json()
    params = [i["mix"] for i in answer["images"]]
    params[0]["params"]["decay"] = 0
    replay = {k: v for k, v in body.items() if k != "seed"} | {"params": params}
    response = client.post("/v1/mix", json=replay)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "params", 0, "params", "decay"] and "decay must be a number in (0, 10]" in detail["msg"]
    params[0]["params"] = {"mode": "blur", "lam": 0.5}
    response = client.post("/v1/mix", json={k: v for k, v in body.items() if k != "seed"} | {"params": params})
    assert response.status_code == 422 and "mode must be one of" in response.text


# ------------------------------------------------------------------ a mode added through the registry alone


class StripeConfig(BoxRules):
    """A toy mode: a vertical stripe of the partner, of width (1 - lam) of the canvas."""


class Stripe(Mode):
    name = "stripe"
    config = StripeConfig
    uses_cut_box = True

    def sample(self, rng: Any, cfg: StripeConfig, height: int, width: int, partners: Any = ()) -> MixParams:
        w = max(1, int(round((1 - float(rng.uniform(0.2, 0.6))) * width)))
        x1 = int(rng.integers(0, width - w + 1))
        return MixParams(self.name, 1 - w / width, (x1, 0, x1 + w, height), (height, width))

    def check(self, params: MixParams) -> None:
        check_cut_params(params)

    def apply(self, a: dict, partners: Any, params: MixParams, cfg: StripeConfig, box_keys: Any = None) -> dict:
        return cutmix(a, partners[0], params.cut_box, min_visibility=cfg.min_visibility, min_area=cfg.min_area,
                      min_size=cfg.min_size, weight=cfg.weight, box_keys=box_keys)


@pytest.fixture
def stripe():
    mode = register(Stripe())
    yield mode
    unregister("stripe")


def test_a_toy_mode_runs_through_random_mix_batch_mix_and_the_service(stripe, client):
    recipe = {"name": "stripes", "stripe": {"min_visibility": 0.1}}
    assert load_recipe(recipe).section("stripe").min_visibility == 0.1

    # RandomMix and replay
    body = coco_batch(2, masks=True)
    from .servicekit import core_sample

    a, b = core_sample(body, 1, masks=True), core_sample(body, 2, masks=True)
    out = RandomMix(recipe)(a, b, np.random.default_rng(0))
    x1, _, x2, _ = out["params"].cut_box
    assert out["params"].mode == "stripe" and (out["image"][:, x1:x2] == b["image"][:, x1:x2]).all()
    assert out["lam"] == pytest.approx(1 - (x2 - x1) / a["image"].shape[1])

    # BatchMix: no vectorised path, so pair by pair through the mode's kernel
    from detmix.torch import BatchMix

    images = [torch.from_numpy(s["image"].copy()).permute(2, 0, 1).contiguous() for s in (a, b)]
    targets = [{"boxes": torch.from_numpy(s["boxes"]), "labels": torch.from_numpy(s["labels"]),
                "masks": torch.from_numpy(s["masks"])} for s in (a, b)]
    mix = BatchMix(recipe, per="pair")
    out_images, out_targets = mix(images, targets, generator=torch.Generator().manual_seed(0))
    pair = mix.last_params.pair(0)
    assert pair.mode == "stripe"
    ref = cutmix(a, b, pair.cut_box, min_visibility=0.1)
    np.testing.assert_array_equal(out_images[0].permute(1, 2, 0).numpy(), ref["image"])
    np.testing.assert_allclose(out_targets[0]["boxes"].numpy(), ref["boxes"])
    assert mix.last_params.to_dict()["mode"] == ["stripe", "stripe"]

    # The service, with the recipe inline
    response = client.post("/v1/mix", json=body | {"recipe": recipe, "seed": 4, "output": {"format": "png"}})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert {i["mix"]["params"]["mode"] for i in answer["images"]} == {"stripe"}
    check_against_core(body | {"recipe": recipe}, answer, recipe, masks=True)


def test_a_mode_name_is_registered_once(stripe):
    with pytest.raises(ValueError, match="a mode named 'stripe' is already registered"):
        register(Stripe())
    with pytest.raises(ValueError, match="'cutmix' is a built-in mode and cannot be unregistered"):
        unregister("cutmix")
    with pytest.raises(ValueError, match="mode.name must not be a recipe field"):
        class Odds(Stripe):
            name = "odds"
        register(Odds())
    assert F.cutmix  # the functional namespace still answers


def test_register_refuses_a_batch_kind_it_cannot_honour():
    class Typo(Stripe):
        name = "typo"
        batch_kind = "Cut"

    with pytest.raises(ValueError, match="mode.batch_kind must be 'cut', 'blend' or None, got 'Cut'"):
        register(Typo())

    class Extra(Stripe):
        name = "extra"
        batch_kind = "cut"
        extra_keys = ("gain",)

    with pytest.raises(ValueError, match=r"has its own parameters \['gain'\], which the vectorised 'cut' batch path"):
        register(Extra())


def test_batchmix_refuses_a_mode_with_several_partners():
    from detmix.torch import BatchMix

    class Two(Stripe):
        name = "two"
        partners = 2

    register(Two())
    try:
        with pytest.raises(ValueError, match=r"BatchMix pairs each image with one partner .* \{'two': 2\}"):
            BatchMix({"two": {}})
    finally:
        unregister("two")


def test_a_replayed_record_names_the_key_a_mode_does_not_take_or_misses(client):
    body = coco_batch(2) | {"recipe": "fmix", "seed": 1}
    params = [i["mix"] for i in client.post("/v1/mix", json=body).json()["images"]]
    assert all(0 <= p["params"]["seed"] < 2**53 for p in params)  # exact in any JSON reader
    replay = {k: v for k, v in body.items() if k != "seed"}
    extra = [dict(params[0], params=params[0]["params"] | {"foo": 1}), params[1]]
    response = client.post("/v1/mix", json=replay | {"params": extra})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "params", 0, "params", "foo"]
    assert "foo is not a parameter of mode 'fmix'" in response.text
    missing = [dict(params[0], params={k: v for k, v in params[0]["params"].items() if k != "seed"}), params[1]]
    response = client.post("/v1/mix", json=replay | {"params": missing})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "params", 0, "params", "seed"]


def test_copy_paste_by_name_and_without_masks(client):
    body = coco_batch(4, masks=True) | {"recipe": "copy_paste", "seed": 5, "output": {"format": "png"}}
    response = client.post("/v1/mix", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    check_against_core(body, answer, "copy_paste", masks=True)
    assert {d["reason"] for d in answer["dropped"]} <= {"invisible", "min_visibility", "min_area", "min_size",
                                                        "not_selected"}
    # a boxes-only batch cannot be pasted by masks: a 422 naming the fix, never a 500
    boxes_only = coco_batch(2) | {"recipe": "copy_paste", "seed": 5}
    response = client.post("/v1/mix", json=boxes_only)
    assert response.status_code == 422 and "by_box=True" in response.text
    by_box = boxes_only | {"recipe": {"copy_paste": {"by_box": True, "select": "all"}}}
    response = client.post("/v1/mix", json=by_box)
    assert response.status_code == 200, response.text
    check_against_core(by_box, response.json(), {"copy_paste": {"by_box": True, "select": "all"}})
