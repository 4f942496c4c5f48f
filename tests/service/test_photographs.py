"""Real COCO photographs (../shared/data/coco-mini) through POST /v1/mix: JPEG in, polygons and
crowd RLEs, and the answer checked against detmix's own result for the same parameters."""

from __future__ import annotations

import base64
import json

import pytest
from pycocotools import mask as mask_utils

from .servicekit import check_against_core


@pytest.fixture(scope="module")
def photo_batch(coco_mini) -> dict:
    coco = json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())
    crowd_images = {a["image_id"] for a in coco["annotations"] if a["iscrowd"]}
    chosen = sorted(crowd_images)[:2] + [i["id"] for i in coco["images"] if i["id"] not in crowd_images][:4]
    images = []
    for record in coco["images"]:
        if record["id"] in chosen:
            data = (coco_mini / "val2017" / record["file_name"]).read_bytes()
            images.append(record | {"data": base64.b64encode(data).decode("ascii")})
    annotations = [a for a in coco["annotations"] if a["image_id"] in chosen]
    return {"images": images, "annotations": annotations, "categories": coco["categories"],
            "info": coco["info"], "licenses": coco["licenses"]}


@pytest.mark.parametrize("recipe", ["cutmix", "mixup"])
def test_photographs_mix_as_the_core_does(client, photo_batch, recipe):
    body = photo_batch | {"recipe": recipe, "seed": 2024, "output": {"format": "png"}}
    response = client.post("/v1/mix", json=body)
    assert response.status_code == 200, response.text[:2000]
    answer = response.json()
    assert len(answer["images"]) == 6
    assert check_against_core(body, answer, recipe, masks=True) > 20
    # crowd regions come back as regions (iscrowd 1, no mix_weight), never among the dropped
    assert {a["iscrowd"] for a in answer["annotations"]} == {0, 1}
    crowd_ids = {a["id"] for a in body["annotations"] if a["iscrowd"]}
    assert not {d["source_annotation_id"] for d in answer["dropped"]} & crowd_ids
    if recipe == "cutmix":
        assert answer["dropped"], "no annotation dropped: the check of the dropped list proves nothing"


def test_every_segmentation_encoding_gives_the_same_answer(client, photo_batch):
    """Polygons, uncompressed RLE (COCO's crowd regions) and compressed RLE strings of the same
    masks: the answer is the same, and it is the core's."""
    sizes = {i["id"]: (i["height"], i["width"]) for i in photo_batch["images"]}
    annotations, forms = [], set()
    for k, ann in enumerate(photo_batch["annotations"]):
        height, width = sizes[ann["image_id"]]
        segmentation = ann["segmentation"]
        if k % 2 == 0 or isinstance(segmentation, dict):  # every RLE and half the polygons, compressed
            rle = mask_utils.frPyObjects(segmentation, height, width)
            rle = mask_utils.merge(rle) if isinstance(rle, list) else rle
            segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        forms.add("rle" if isinstance(segmentation, dict) and isinstance(segmentation["counts"], str) else
                  "crowd" if isinstance(segmentation, dict) else "polygon")
        annotations.append(ann | {"segmentation": segmentation})
    assert forms == {"rle", "polygon"}
    options = {"recipe": "cutmix", "seed": 31, "output": {"format": "png"}}
    body = photo_batch | {"annotations": annotations} | options
    answer = client.post("/v1/mix", json=body).json()
    original = client.post("/v1/mix", json=photo_batch | options).json()
    assert answer == original
    assert check_against_core(body, answer, "cutmix", masks=True) > 20


def test_photographs_replay_through_params(client, photo_batch):
    body = photo_batch | {"recipe": "deit", "seed": 7, "output": {"format": "jpeg", "quality": 90}}
    first = client.post("/v1/mix", json=body).json()
    replay = {k: v for k, v in body.items() if k != "seed"} | {"params": [i["mix"] for i in first["images"]]}
    again = client.post("/v1/mix", json=replay).json()
    assert again["annotations"] == first["annotations"] and again["dropped"] == first["dropped"]
