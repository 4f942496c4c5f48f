"""Real COCO photographs (../shared/data/coco-mini) through POST /v1/mix: JPEG in, polygons and
crowd RLEs, and the answer checked against detmix's own result for the same parameters."""

from __future__ import annotations

import base64
import json

import pytest

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
    assert {a["iscrowd"] for a in answer["annotations"]} == {0, 1}  # crowd regions mixed like the rest


def test_photographs_replay_through_params(client, photo_batch):
    body = photo_batch | {"recipe": "deit", "seed": 7, "output": {"format": "jpeg", "quality": 90}}
    first = client.post("/v1/mix", json=body).json()
    replay = {k: v for k, v in body.items() if k != "seed"} | {"params": [i["mix"] for i in first["images"]]}
    again = client.post("/v1/mix", json=replay).json()
    assert again["annotations"] == first["annotations"] and again["dropped"] == first["dropped"]
