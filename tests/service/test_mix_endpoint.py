"""POST /v1/mix through the app (TestClient): the answer is detmix's for the same parameters."""

from __future__ import annotations

import base64
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image
from detmix_service import mixing

from .servicekit import b64, check_against_core, coco_batch, core_sample, decode, image_bytes


@pytest.mark.parametrize("recipe", ["deit", "cutmix", "mixup"])
def test_answer_equals_the_core_for_the_same_params(client, recipe):
    body = coco_batch(6) | {"recipe": recipe, "seed": 11, "output": {"format": "png"}}
    response = client.post("/v1/mix", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["seed"] == 11 and answer["recipe"]["name"] == recipe
    assert [image["id"] for image in answer["images"]] == [1, 2, 3, 4, 5, 6]
    assert check_against_core(body, answer, recipe) > 0
    assert len({ann["id"] for ann in answer["annotations"]}) == len(answer["annotations"])


def test_masks_come_back_as_rle_of_the_cores_masks(client):
    body = coco_batch(4, masks=True) | {"recipe": "cutmix", "seed": 5, "output": {"format": "png"}}
    answer = client.post("/v1/mix", json=body).json()
    assert all(isinstance(ann["segmentation"]["counts"], str) for ann in answer["annotations"])
    assert check_against_core(body, answer, "cutmix", masks=True) > 0


def test_pairs_follow_the_documented_cyclic_rule(client):
    body = coco_batch(7) | {"seed": 123}
    answer = client.post("/v1/mix", json=body).json()
    partner = {image["id"]: image["mix"]["partner_id"] for image in answer["images"]}
    order = np.random.default_rng(123).permutation(7) + 1  # image ids are 1..7
    assert partner == {int(order[k]): int(order[(k + 1) % 7]) for k in range(7)}
    assert all(partner[i] != i for i in partner)


def test_replaying_params_gives_the_same_answer(client):
    body = coco_batch(5, masks=True) | {"seed": 3, "output": {"format": "png"}}
    first = client.post("/v1/mix", json=body).json()
    replay = {k: v for k, v in body.items() if k != "seed"} | {"params": [image["mix"] for image in first["images"]]}
    again = client.post("/v1/mix", json=replay).json()
    assert again["seed"] is None
    assert again["annotations"] == first["annotations"] and again["dropped"] == first["dropped"]
    assert [image["data"] for image in again["images"]] == [image["data"] for image in first["images"]]


def test_same_seed_same_answer_and_a_drawn_seed_is_returned(client):
    body = coco_batch(4)
    assert client.post("/v1/mix", json=body).json() == client.post("/v1/mix", json=body).json()
    unseeded = client.post("/v1/mix", json={k: v for k, v in body.items() if k != "seed"}).json()
    assert isinstance(unseeded["seed"], int) and 0 <= unseeded["seed"] < 2**63
    redo = client.post("/v1/mix", json=body | {"seed": unseeded["seed"]}).json()
    assert redo["annotations"] == unseeded["annotations"]


def test_multipart_equals_json(client):
    body = coco_batch(3) | {"seed": 9}
    files, records = [], []
    for record in body["images"]:
        name = f"photo-{record['id']}.png"
        files.append(("images", (name, base64.b64decode(record["data"]), "image/png")))
        records.append({k: v for k, v in record.items() if k != "data"} | {"file_name": name})
    form = {"request": json.dumps(body | {"images": records})}
    via_form = client.post("/v1/mix", data=form, files=files)
    assert via_form.status_code == 200, via_form.text
    assert via_form.json() == client.post("/v1/mix", json=body).json()


def test_a_batch_of_one_is_not_mixed(client):
    body = coco_batch(1) | {"output": {"format": "png"}}
    answer = client.post("/v1/mix", json=body).json()
    (image,) = answer["images"]
    assert image["mix"] == {"image_id": 1, "partner_id": 1,
                            "params": {"mode": "none", "lam": 1.0, "cut_box": None, "canvas": [30, 40]}}
    for got, sent in zip(answer["annotations"], body["annotations"], strict=True):
        assert got["bbox"] == pytest.approx(sent["bbox"], abs=1e-12)  # through xyxy and back
    assert {ann["mix_weight"] for ann in answer["annotations"]} == {1.0} and answer["dropped"] == []
    np.testing.assert_array_equal(decode(image), core_sample(body, 1)["image"])


def test_images_of_different_sizes_are_padded_to_a_common_canvas(client):
    body = coco_batch(2) | {"recipe": "mixup", "output": {"format": "png"}}
    body["images"][1] |= {"width": 50, "height": 36, "data": b64(image_bytes(36, 50, seed=7))}
    answer = client.post("/v1/mix", json=body).json()
    assert {(image["height"], image["width"]) for image in answer["images"]} == {(36, 50)}
    check_against_core(body, answer, "mixup")


def test_crowd_regions_come_back_as_regions_never_as_targets(client):
    body = coco_batch(2) | {"recipe": "mixup", "output": {"format": "png"}}
    body["annotations"][1]["iscrowd"] = 1
    answer = client.post("/v1/mix", json=body).json()
    by_source = {(a["source_image_id"], a["source_annotation_id"]): a for a in answer["annotations"]}
    assert by_source[(1, 11)]["iscrowd"] == 1 and "mix_weight" not in by_source[(1, 11)]
    assert by_source[(1, 10)]["iscrowd"] == 0 and by_source[(1, 10)]["mix_weight"] > 0
    assert check_against_core(body, answer, "mixup") > 0
    # a CutMix whose cut covers the crowd region whole removes it: it is not listed as dropped
    params = [{"image_id": 1, "partner_id": 2, "params": {"mode": "cutmix", "lam": 1 - 30 * 40 / 1200,
                                                          "cut_box": [0, 0, 40, 30], "canvas": [30, 40]}},
              {"image_id": 2, "partner_id": 1, "params": {"mode": "none", "lam": 1.0, "canvas": [30, 40]}}]
    replay = {k: v for k, v in body.items() if k != "seed"} | {"recipe": "cutmix", "params": params}
    cut = client.post("/v1/mix", json=replay).json()
    assert all(a["iscrowd"] == 0 for a in cut["annotations"] if a["image_id"] == 1)
    assert 11 not in {d["source_annotation_id"] for d in cut["dropped"]}


def test_a_box_poking_out_by_a_rounding_is_clipped_and_said(client, caplog):
    """COCO exports often have x + w = 640.01 on a 640 px image: clipped, listed in ``clipped``
    and logged (CocoDetectionSource does the same); more than 1 px out is still refused."""
    body = coco_batch(2) | {"recipe": "cutmix", "output": {"format": "png"}}
    body["annotations"][0]["bbox"] = [30.0, 2.0, 10.01, 5.0]  # x + w = 40.01 on a 40 px image
    with caplog.at_level(logging.INFO, logger=mixing.__name__):
        response = client.post("/v1/mix", json=body)
    assert response.status_code == 200, response.text
    said = [r.getMessage() for r in caplog.records if r.name == mixing.__name__ and r.levelno == logging.INFO]
    assert any("clipped 1 boxes that poked out of their image by at most 1 px (annotation ids [10])" in m
               for m in said), said
    answer = response.json()
    assert answer["clipped"] == [{"image_id": 1, "annotation_id": 10, "overshoot": pytest.approx(0.01, abs=1e-9)}]
    check_against_core(body, answer, "cutmix")  # the core's sample clips it onto the image too
    body["annotations"][0]["bbox"] = [30.0, 2.0, 11.5, 5.0]
    assert client.post("/v1/mix", json=body).status_code == 422


def test_output_images_carry_no_exif(client):
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0x0112] = 6  # Orientation: the pixels are used as stored
    photo = image_bytes(30, 40, fmt="JPEG", exif=exif.tobytes())
    assert b"Exif" in photo
    body = coco_batch(2)
    body["images"][0]["data"] = b64(photo)
    answer = client.post("/v1/mix", json=body | {"output": {"format": "jpeg", "quality": 80}}).json()
    for image in answer["images"]:
        data = base64.b64decode(image["data"])
        assert data[:3] == b"\xff\xd8\xff" and b"Exif" not in data
        with Image.open(io.BytesIO(data)) as file:
            assert file.format == "JPEG" and not file.getexif() and (file.width, file.height) == (40, 30)


def test_jpeg_quality_changes_the_encoding(client):
    body = coco_batch(2)
    low = client.post("/v1/mix", json=body | {"output": {"format": "jpeg", "quality": 5}}).json()
    high = client.post("/v1/mix", json=body | {"output": {"format": "jpeg", "quality": 95}}).json()
    assert len(low["images"][0]["data"]) < len(high["images"][0]["data"])
    assert low["annotations"] == high["annotations"]


def test_inline_recipe(client):
    recipe = {"name": "hard-cut", "prob": 1.0, "cutmix": {"alpha": 2.0, "weight": "hard", "min_visibility": 0.3}}
    answer = client.post("/v1/mix", json=coco_batch(3) | {"recipe": recipe}).json()
    assert answer["recipe"]["name"] == "hard-cut"
    assert {image["mix"]["params"]["mode"] for image in answer["images"]} == {"cutmix"}
    assert {ann["mix_weight"] for ann in answer["annotations"]} == {1.0}
    assert all(d["visibility"] < 0.3 for d in answer["dropped"])
