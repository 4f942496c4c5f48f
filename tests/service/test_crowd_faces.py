"""Every face of detmix on one pair of real COCO photographs with crowd annotations: the
Albumentations adapter draws a CutMix, then the same parameters go through the core, ``BatchMix``
and the service (a real uvicorn server) with its client. They must agree on the crowd regions
(mask and boxes), and no face may put a crowd region among the targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import to_numpy, to_torch
from detmix import MixParams, load_recipe, mix_pair

from .servicekit import live_server


# ------------------------------------------------------------------ every face on real photographs


def _crowd_pair(coco_mini):
    from detmix.coco import CocoDetectionSource

    annotations = coco_mini / "annotations" / "instances_val2017.json"
    raw = json.loads(annotations.read_text())
    crowd_ids = sorted({a["image_id"] for a in raw["annotations"] if a["iscrowd"]})
    source = CocoDetectionSource(annotations, coco_mini / "val2017", image_ids=crowd_ids[:2])
    return annotations, crowd_ids[:2], source[0], source[1]


def test_every_face_agrees_on_a_real_pair_with_crowd(coco_mini, tmp_path):
    """One pair of COCO photographs with crowd annotations, one CutMix drawn by the
    Albumentations adapter, then the same parameters through the core, ``BatchMix`` and the
    service with its client: the same crowd regions (mask and boxes), and never a crowd region
    among the targets."""
    import albumentations as A

    from detmix.albumentations import BoxCutMix
    from detmix.datasets import to_albumentations_item
    from detmix.torch import BatchMix, BatchParams

    annotations, ids, a, b = _crowd_pair(coco_mini)
    recipe = load_recipe({"name": "faces", "prob": 1.0, "cutmix": {"alpha": 1.0, "min_size": 0.0}, "align": "pad"})

    # Albumentations draws the parameters; the crowd mask is a mask target of the Compose.
    mix = BoxCutMix(p=1.0, align="pad", min_size=0.0)
    tf = A.Compose([mix], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
                   additional_targets={"crowd_mask": "mask"}, seed=5)
    item_a, item_b = (to_albumentations_item(s, bbox_format="pascal_voc") for s in (a, b))
    for seed in range(40):  # a draw whose cut takes part of a's crowd region and part of b's
        tf.set_random_seed(seed)
        album = tf(**item_a, mix_metadata=[item_b])
        params = MixParams.from_dict(mix.params["mix"])
        core = mix_pair(a, b, params, recipe)
        touched = [not np.array_equal(core["crowd_mask"][: s["image"].shape[0], : s["image"].shape[1]] != 0,
                                      s["crowd_mask"] != 0) for s in (a, b)]
        if all(touched) and len(core["crowd_boxes"]) == 2:
            break
    else:
        pytest.fail("no draw touched both crowd regions")
    assert not np.array_equal(core["crowd_boxes"][0], a["crowd_boxes"][0])  # the rule did something
    np.testing.assert_array_equal(album["crowd_mask"], core["crowd_mask"])
    np.testing.assert_array_equal(album["image"], core["image"])

    # detmix.torch: the same parameters for a batch of the two images.
    samples = [to_torch({k: v for k, v in s.items() if isinstance(v, np.ndarray)}) for s in (a, b)]
    targets = [{k: v for k, v in s.items() if k != "image"} for s in samples]
    none = MixParams("none", 1.0, None, b["image"].shape[:2])
    batch = BatchParams(partner=[1, 1], mode=[2, 0], lam=[params.lam, 1.0], cut=[params.cut_box, [0, 0, 0, 0]],
                        canvas=params.canvas, per="pair")
    _, out = BatchMix(recipe, per="pair").apply([s["image"] for s in samples], targets, batch)
    torch_out = to_numpy(out[0])
    np.testing.assert_array_equal(torch_out["crowd_mask"], core["crowd_mask"])
    np.testing.assert_allclose(torch_out["crowd_boxes"], core["crowd_boxes"])
    np.testing.assert_allclose(torch_out["boxes"], core["boxes"])

    # The service on a real uvicorn server, and its client's tensors.
    from detmix.client import DetmixClient

    settings = {"datasets": {"photos": {"annotations": str(annotations), "images": str(coco_mini / "val2017")}},
                "max_in_flight": 2, "worker_threads": 1}
    with live_server(tmp_path / "server", settings) as server, DetmixClient(server.url) as client:
        replay = [{"image_id": ids[0], "partner_id": ids[1], "params": params.to_dict()},
                  {"image_id": ids[1], "partner_id": ids[1], "params": none.to_dict()}]
        mixed = client.dataset_batch("photos", image_ids=ids, recipe=recipe.model_dump(mode="json"), params=replay,
                                     output_format="png", as_tensors=True)
    answer = [ann for ann in mixed.answer["annotations"] if ann["image_id"] == ids[0]]
    crowd = [ann for ann in answer if ann["iscrowd"]]
    assert len(crowd) == 2 and all("mix_weight" not in ann for ann in crowd)
    assert not any(d["source_annotation_id"] in {ann["source_annotation_id"] for ann in crowd}
                   for d in mixed.answer["dropped"])
    target = mixed.targets[0]
    assert isinstance(target["boxes"], torch.Tensor) and len(target["boxes"]) == len(core["boxes"])
    assert (target["iscrowd"] == 0).all() and len(target["masks"]) == len(core["boxes"])
    np.testing.assert_allclose(target["crowd_boxes"].numpy(), core["crowd_boxes"], atol=1e-4)
    np.testing.assert_array_equal(target["crowd_mask"].numpy(), core["crowd_mask"])
    np.testing.assert_array_equal(mixed.images[0].permute(1, 2, 0).numpy(), core["image"])
