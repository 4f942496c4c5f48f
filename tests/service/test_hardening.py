"""Issue 13 on a real uvicorn server on 127.0.0.1: requests that cost gigabytes or minutes, slow
clients, and the edges where a plain 500 used to come out. Memory is the server's own peak RSS
(``/proc/PID/status`` ``VmHWM``, reset before each request), CPU its ``utime + stime``.

Each server here runs with the default settings unless a test says otherwise (and one worker
thread, so that one request's figures are its own)."""

from __future__ import annotations

import json

import httpx
import pytest

from .servicekit import (assert_clean_log, b64, coco_batch, error_locs, error_text, image_bytes, in_flight,
                         live_server, peak_rss, wait_until)

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir):
    with live_server(tmp_path_factory.mktemp("hardening"), {"data_dir": data_dir, "worker_threads": 1}) as live:
        yield live
        assert live.stop() == 0
    assert_clean_log(live)


def post(server, body: bytes, path: str = "/v1/mix", timeout: float = 60.0) -> httpx.Response:
    return httpx.post(server.url + path, content=body, headers=JSON, timeout=timeout)


def one_image(side: int = 8, **extra) -> dict:
    return {"images": [{"id": 1, "width": side, "height": side, "data": b64(image_bytes(side, side))}],
            "categories": [{"id": 1, "name": "thing"}], "seed": 0, **extra}


# -- 1. RLE strings are read in linear time and memory ----------------------------------------------


@pytest.mark.parametrize("length", [80_000, 300_000, 4_000_000])
def test_a_long_rle_value_is_refused_without_big_integers(server, length):
    # "o" * N + "0": one value of N + 1 characters; read with Python ints it took ~0.31 N^2 bytes.
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8],
           "segmentation": {"size": [8, 8], "counts": "o" * length + "0"}}
    body = json.dumps(one_image(annotations=[ann])).encode()
    with peak_rss(server.process.pid) as cost:
        response = post(server, body)
    assert response.status_code == 422, response.text
    assert error_locs(response) == [["body", "annotations", 0, "segmentation", "counts"]]
    assert f"value 0 (characters 0..{length}) is longer than the 12 characters" in error_text(response)
    assert cost["peak_mib"] < 64 + 8 * len(body) / 2**20, cost  # the body, its JSON and model copies


def test_rle_runs_past_the_image_are_refused_at_the_first_one(server):
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8],
           "segmentation": {"size": [8, 8], "counts": "4" * 200_000}}
    response = post(server, json.dumps(one_image(annotations=[ann])).encode())
    assert response.status_code == 422
    assert "annotation 1: rle['counts'] runs pass the mask's 64 pixels at run 7 (ending at character 7)" in error_text(response)


# -- 2. validation is linear; counts are checked before per-item work ----------------------------------


def test_too_many_boxes_are_refused_before_any_per_box_work(server):
    body = one_image(64)
    body["annotations"] = [{"id": k, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]} for k in range(100_000)]
    with peak_rss(server.process.pid) as cost:
        response = post(server, json.dumps(body).encode())
    assert response.status_code == 422 and error_locs(response) == [["body", "annotations"]]
    assert "image 1 has 100000 annotations, more than the limit of 1000" in error_text(response)
    # Quadratic, this took minutes (504 at 60 s, the slot busy for 122 s); linear, well under 10 s of CPU.
    assert cost["cpu_s"] < 10, cost
    wait_until(lambda: in_flight(server.url) == 0)


def test_a_full_batch_of_boxes_validates_in_linear_time(server):
    body = coco_batch(32, 64, 64)
    body["annotations"] = [{"id": 1000 * i + k, "image_id": i, "category_id": 1, "bbox": [k % 50, 2, 10, 10]}
                           for i in range(1, 33) for k in range(1000)]
    with peak_rss(server.process.pid) as cost:
        response = post(server, json.dumps(body).encode())
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 32
    assert cost["cpu_s"] < 10, cost  # 14.5 s quadratic on this machine before the fix; ~1 s now


# -- 8. one memory budget per batch, checked before decoding ------------------------------------------


def test_polygons_over_the_budget_are_refused_before_parsing(server):
    polygon = "[" + ",".join("7" for _ in range(200_000)) + "]"
    annotations = ",".join(
        f'{{"id":{k},"image_id":1,"category_id":1,"bbox":[0,0,8,8],"segmentation":[{polygon}]}}' for k in range(150))
    head = json.dumps(one_image())[:-1]
    body = f'{head},"annotations":[{annotations}]}}'.encode()  # 60 MB, 30 million numbers
    assert 55 * 2**20 < len(body) < 64 * 2**20
    with peak_rss(server.process.pid) as cost:
        response = post(server, body, timeout=120)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "memory_budget" and error_locs(response) == [["body"]]
    assert "the JSON text would take about" in error_text(response)
    assert "more than the memory budget of 1024.0 MiB per batch (max_batch_memory_bytes)" in error_text(response)
    assert cost["peak_mib"] < 4 * len(body) / 2**20, cost  # was ~1 GB and 40 s
    assert cost["cpu_s"] < 5, cost


def test_masks_over_the_budget_are_refused_before_decoding(server):
    # Two 4096 x 4096 images with 16 masks each peaked at +2.1 GB; now refused from the records.
    side = 4096
    png = image_bytes(side, side, value=90)
    body = {"images": [{"id": i, "width": side, "height": side, "data": b64(png)} for i in (1, 2)],
            "annotations": [{"id": 100 * i + k, "image_id": i, "category_id": 1, "bbox": [k, 0, 10, 10],
                             "segmentation": [[k, 0, k + 10, 0, k + 10, 10, k, 10]]} for i in (1, 2) for k in range(16)],
            "categories": [{"id": 1, "name": "thing"}], "seed": 0}
    with peak_rss(server.process.pid) as cost:
        response = post(server, json.dumps(body).encode())
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "memory_budget"
    assert error_locs(response) == [["body", "annotations"]]
    assert "the batch would take about" in error_text(response) and "masks 1536.0 MiB" in error_text(response)
    assert cost["peak_mib"] < 64, cost


def test_a_batch_within_the_budget_stays_within_it(server):
    # The largest images the pixel limits take, mixed: the budget's estimate covers the peak.
    side = 4096
    png = image_bytes(side, side, value=90)
    body = {"images": [{"id": i, "width": side, "height": side, "data": b64(png)} for i in (1, 2)],
            "annotations": [], "categories": [{"id": 1, "name": "thing"}], "seed": 0, "recipe": "mixup",
            "output": {"format": "jpeg"}}
    with peak_rss(server.process.pid) as cost:
        response = post(server, json.dumps(body).encode(), timeout=120)
    assert response.status_code == 200, response.text
    assert cost["peak_mib"] < 1024, cost
