"""POST /v1/datasets/{name}/batch and the loading of server-side datasets."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from detmix.synthetic import make_synthetic_coco
from .servicekit import error_locs, error_text


@pytest.fixture(scope="module")
def tricky(tmp_path_factory) -> dict:
    """A small COCO dataset with an image outside its folder (three ways), a missing file and
    an invalid annotation, next to a secret that must never be read."""
    root = tmp_path_factory.mktemp("tricky")
    layout = make_synthetic_coco(root / "data", num_train=4, num_val=1, seed=3)
    (root / "secret.png").write_bytes((layout.train_images / "000001.png").read_bytes())
    (layout.train_images / "link.png").symlink_to(root / "secret.png")
    coco = json.loads(layout.train_annotations.read_text())
    template = coco["images"][0]
    coco["images"] += [
        template | {"id": 101, "file_name": "../../secret.png"},
        template | {"id": 102, "file_name": str(root / "secret.png")},
        template | {"id": 103, "file_name": "link.png"},
        template | {"id": 104, "file_name": "missing.png"},
    ]
    bad = dict(coco["annotations"][0], id=9999, bbox=[0, 0, -1, 5])
    coco["annotations"].append(bad)
    path = root / "tricky.json"
    path.write_text(json.dumps(coco))
    return {"annotations": path, "images": layout.train_images, "ids": [i["id"] for i in coco["images"][:4]]}


@pytest.fixture(scope="module")
def served(make_client, tricky):
    with make_client(datasets={"tricky": {"annotations": tricky["annotations"], "images": tricky["images"]}}) as client:
        yield client


def test_files_outside_the_folder_are_never_served(served, caplog):
    info = {d["name"]: d for d in served.get("/v1/datasets").json()}["tricky"]
    assert info["images"] == 4 and info["excluded_images"] == 4 and info["excluded_annotations"] == 1
    for image_id in (101, 102, 103, 104):
        response = served.post("/v1/datasets/tricky/batch", json={"image_ids": [1, image_id]})
        assert response.status_code == 422
        assert error_locs(response) == [["body", "image_ids", 1]]
        assert f"image {image_id} is not served by dataset 'tricky'" in error_text(response)


def test_excluded_records_are_logged(make_client, tricky, caplog):
    with caplog.at_level(logging.WARNING, logger="detmix_service.datasets"):
        with make_client(datasets={"t": {"annotations": tricky["annotations"], "images": tricky["images"]}}):
            pass
    text = caplog.text
    assert "dataset t: left out 4 images" in text and "outside image_dir" in text
    assert "'missing.png' is not a file" in text and "left out 1 annotations: annotation 9999" in text


def test_a_batch_from_a_dataset(served, tricky):
    response = served.post("/v1/datasets/tricky/batch", json={"batch_size": 4, "seed": 1, "recipe": "mixup"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert sorted(image["id"] for image in answer["images"]) == tricky["ids"]
    assert all("segmentation" in ann for ann in answer["annotations"])
    assert 9999 not in {ann["source_annotation_id"] for ann in answer["annotations"]}
    # MixUp keeps every box of both images: each annotation appears in its own output and its partner's.
    coco = json.loads(Path(tricky["annotations"]).read_text())
    valid = [a for a in coco["annotations"] if a["id"] != 9999]
    assert len(answer["annotations"]) + len(answer["dropped"]) == 2 * len(valid)


def test_the_seed_draws_the_images_and_the_mix(client):
    first = client.post("/v1/datasets/synthetic/batch", json={"batch_size": 5, "seed": 42}).json()
    again = client.post("/v1/datasets/synthetic/batch", json={"batch_size": 5, "seed": 42}).json()
    other = client.post("/v1/datasets/synthetic/batch", json={"batch_size": 5, "seed": 43}).json()
    assert first == again and first["seed"] == 42
    assert [i["id"] for i in first["images"]] != [i["id"] for i in other["images"]]
    rng = np.random.default_rng(42)
    assert [i["id"] for i in first["images"]] == [int(k) + 1 for k in rng.choice(48, size=5, replace=False)]


def test_image_ids_and_replay(client):
    body = {"image_ids": [3, 1, 2], "seed": 8, "output": {"format": "png"}}
    first = client.post("/v1/datasets/synthetic/batch", json=body).json()
    assert [i["id"] for i in first["images"]] == [3, 1, 2]
    params = [i["mix"] for i in first["images"]]
    again = client.post("/v1/datasets/synthetic/batch", json={"image_ids": [3, 1, 2], "params": params,
                                                              "output": {"format": "png"}}).json()
    assert again["annotations"] == first["annotations"] and again["images"] == first["images"]


@pytest.mark.parametrize(("body", "status", "loc", "words"), [
    ({"batch_size": 49}, 422, ["body", "batch_size"], "batch_size 49 is more than the 48 images of dataset 'synthetic'"),
    ({"batch_size": 0}, 422, ["body", "batch_size"], "greater than or equal to 1"),
    ({"batch_size": 257}, 422, ["body", "batch_size"], "less than or equal to 256"),
    ({"batch_size": 20}, 422, ["body", "batch_size"], "a batch holds at most 16 images, got 20"),
    ({"image_ids": [1, 2], "batch_size": 3}, 422, ["body", "batch_size"], "disagrees with the 2 image_ids"),
    ({"image_ids": [1, 1]}, 422, ["body", "image_ids", 1], "image 1 is named twice"),
    ({"image_ids": [1, 4000]}, 422, ["body", "image_ids", 1], "image 4000 is not served"),
    ({"image_ids": []}, 422, ["body", "image_ids"], "at least 1 item"),
    ({"seed": 1.5}, 422, ["body", "seed"], "valid integer"),
    ({"recipe": {"cutmix": {"alpha": -1}}}, 422, ["body", "recipe", "cutmix", "alpha"], "greater than 0"),
    ({"sed": 1}, 422, ["body", "sed"], "Extra inputs are not permitted"),
])
def test_dataset_batch_mistakes(make_client, body, status, loc, words):
    with make_client(max_batch_images=16) as client:
        response = client.post("/v1/datasets/synthetic/batch", json=body)
    assert response.status_code == status, response.text
    assert error_locs(response)[0] == loc and words in error_text(response)


def test_unknown_dataset_is_404(client):
    response = client.post("/v1/datasets/nope/batch", json={})
    assert response.status_code == 404 and error_locs(response) == [["path", "name"]]
    assert "dataset 'nope' is not one of ['synthetic']" in error_text(response)
    assert client.post("/v1/datasets/..%2Fetc/batch", json={}).status_code in (404, 422)


def test_an_unreadable_dataset_image_is_a_server_error_not_a_crash(make_client, tmp_path, caplog):
    layout = make_synthetic_coco(tmp_path / "data", num_train=2, num_val=1, seed=1)
    with make_client(datasets={"d": {"annotations": layout.train_annotations, "images": layout.train_images}}) as client:
        (layout.train_images / "000001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        response = client.post("/v1/datasets/d/batch", json={"image_ids": [1, 2]})
        assert response.status_code == 500
        assert "dataset 'd': image 1 cannot be read on the server" in error_text(response)
        assert client.post("/v1/datasets/d/batch", json={"image_ids": [2]}).status_code == 200
    shutil.rmtree(tmp_path / "data")
