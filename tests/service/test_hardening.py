"""Issue 13 on a real uvicorn server on 127.0.0.1: requests that cost gigabytes or minutes, slow
clients, and the edges where a plain 500 used to come out. Memory is the server's own peak RSS
(``/proc/PID/status`` ``VmHWM``, reset before each request), CPU its ``utime + stime``.

Each server here runs with the default settings unless a test says otherwise (and one worker
thread, so that one request's figures are its own)."""

from __future__ import annotations

import base64
import json
import resource
import select
import shutil
import signal
import socket
import time

import httpx
import pytest
from PIL import Image

from detmix_service.middleware import PLAYGROUND_CSP

from .servicekit import (RawRequest, assert_clean_log, b64, coco_batch, error_locs, error_text, image_bytes, in_flight,
                         live_server, peak_rss, temp_files_open, uploads, wait_until)

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
    assert "the batch would take about" in error_text(response) and "masks 2048.0 MiB" in error_text(response)
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


# -- 3. JPEG holds 65,500 pixels a side -------------------------------------------------------------


def test_jpeg_output_wider_than_libjpeg_writes_is_refused_up_front(server):
    wide = 65_535  # a side the service takes (1 pixel high: far under the pixel limits)
    body = {"images": [{"id": i, "width": wide, "height": 1, "data": b64(image_bytes(1, wide, value=50 * i))}
                       for i in (1, 2)],
            "annotations": [], "categories": [{"id": 1, "name": "thing"}], "seed": 0}
    response = post(server, json.dumps(body).encode())
    assert response.status_code == 422, response.text  # was a plain-text 500 from libjpeg
    assert error_locs(response) == [["body", "output", "format"]]
    assert response.json()["detail"][0]["type"] == "output_too_large"
    assert error_text(response) == (
        "image 1 is 65535x1: its mixed image cannot be a JPEG, which holds at most 65500 pixels a side (libjpeg); "
        "ask for output format 'png'")
    body["output"] = {"format": "png"}
    response = post(server, json.dumps(body).encode())
    assert response.status_code == 200 and response.json()["images"][0]["width"] == wide


# -- 7. a dataset that serves no image ----------------------------------------------------------------


def _empty_dataset_settings(tmp_path, data_dir) -> dict:
    annotations = data_dir / "annotations" / "instances_train.json"
    return {"data_dir": data_dir, "log_level": "info",
            "datasets": {"lost": {"annotations": str(annotations), "images": str(tmp_path / "no-such-folder")}}}


def test_a_dataset_that_serves_no_image_stops_the_start(tmp_path, data_dir):
    settings = _empty_dataset_settings(tmp_path, data_dir)
    with pytest.raises(RuntimeError, match="the server exited with 3") as failed:
        with live_server(tmp_path / "run", settings):
            pass
    log = str(failed.value)
    assert f"dataset 'lost' serves no image: its images folder '{tmp_path / 'no-such-folder'}' is not a folder" in log
    assert "set allow_empty_datasets to start anyway" in log


def test_an_allowed_empty_dataset_is_not_offered_and_readyz_says_so(tmp_path, data_dir):
    settings = _empty_dataset_settings(tmp_path, data_dir) | {"allow_empty_datasets": True}
    with live_server(tmp_path / "run", settings) as live:
        ready = httpx.get(f"{live.url}/readyz").json()
        assert ready == {"status": "ready", "detail": "datasets serving no image, not offered: ['lost']"}
        assert [d["name"] for d in httpx.get(f"{live.url}/v1/datasets").json()] == ["synthetic"]
        response = post(live, b'{"batch_size": 2}', "/v1/datasets/lost/batch")
        assert response.status_code == 404 and response.json()["detail"][0]["type"] == "not_found"
        assert "dataset 'lost' is not one of ['synthetic']" in error_text(response)
        assert live.stop() == 0
    assert_clean_log(live)


# -- 9. the smaller ones --------------------------------------------------------------------------------


def test_a_dataset_image_replaced_by_a_bomb_is_a_json_error(tmp_path, data_dir):
    images = tmp_path / "images"
    shutil.copytree(data_dir / "train", images)
    annotations = data_dir / "annotations" / "instances_train.json"
    records = json.loads(annotations.read_text())["images"]
    settings = {"data_dir": data_dir, "datasets": {"copy": {"annotations": str(annotations), "images": str(images)}}}
    with live_server(tmp_path / "run", settings) as live:
        victim, other = records[0], records[1]
        with Image.new("1", (20_000, 20_000)) as bomb:  # 400 Mpx in a few kB: over twice Pillow's bomb limit
            bomb.save(images / victim["file_name"], format="PNG")
        swapped = records[2]
        other_size = image_bytes(swapped["height"] + 1, swapped["width"])  # another size, same name
        (images / swapped["file_name"]).write_bytes(other_size)
        for broken in (victim, swapped):
            body = json.dumps({"image_ids": [broken["id"], other["id"]], "seed": 0}).encode()
            with peak_rss(live.process.pid) as cost:
                response = post(live, body, "/v1/datasets/copy/batch")
            assert response.status_code == 500, response.text  # JSON, not a plain-text 500
            assert response.json() == {"detail": [{
                "loc": [], "msg": f"dataset 'copy': image {broken['id']} cannot be read on the server",
                "type": "dataset_unreadable"}]}
            assert cost["peak_mib"] < 64, cost  # the header was enough
        assert live.stop() == 0
    log = live.output()
    assert "Traceback" not in log
    assert f"image {victim['id']} ({victim['file_name']}) cannot be read: DecompressionBombError" in log
    assert f"image {swapped['id']} ({swapped['file_name']}) cannot be read: ValueError: the file is" in log


def test_a_multipart_body_cut_before_its_closing_delimiter_is_malformed(server):
    body = coco_batch(2)
    boundary = "detmixcut"
    request = json.dumps(body | {"images": [{k: v for k, v in r.items() if k != "data"} | {"file_name": f"{r['id']}.png"}
                                             for r in body["images"]]})
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="request"\r\n\r\n{request}\r\n'.encode()]
    for record in body["images"]:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{record["id"]}.png"\r\n'
                     f'Content-Type: image/png\r\n\r\n'.encode() + base64.b64decode(record["data"]) + b"\r\n")
    whole = b"".join(parts) + f"--{boundary}--\r\n".encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    assert httpx.post(f"{server.url}/v1/mix", content=whole, headers=headers, timeout=30).status_code == 200
    for cut in (len(whole) - 10, len(parts[0]) + 100, 40):
        response = httpx.post(f"{server.url}/v1/mix", content=whole[:cut], headers=headers, timeout=30)
        assert response.status_code == 422, (cut, response.text)
        assert response.json()["detail"] == [{
            "loc": ["body"], "type": "multipart",
            "msg": f"the multipart body ends before its closing delimiter '--{boundary}--': it was cut short"}]


# -- 6. no room to spool an upload ---------------------------------------------------------------------


def _small_files() -> None:
    # Files the server writes stop at 1.5 MiB (EFBIG, as a full disk gives ENOSPC): Starlette
    # spools a multipart part over 1 MiB to TMPDIR. Python ignores SIGXFSZ, so the write fails.
    resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 2**19, 3 * 2**19))


def test_no_room_to_spool_an_upload_is_a_json_507_and_leaves_nothing(tmp_path, data_dir):
    with live_server(tmp_path, {"data_dir": data_dir, "log_level": "warning"}, preexec_fn=_small_files) as live:
        body = coco_batch(2)
        big = image_bytes(1200, 1200)  # 4 MiB of noise PNG: spooled past 1 MiB, cut at 1.5 MiB
        records = [{k: v for k, v in r.items() if k != "data"} | {"file_name": f"{r['id']}.png"}
                   for r in body["images"]]
        records[0] |= {"width": 1200, "height": 1200}
        files = [("images", ("1.png", big, "image/png")),
                 ("images", ("2.png", base64.b64decode(body["images"][1]["data"]), "image/png"))]
        response = httpx.post(f"{live.url}/v1/mix", data={"request": json.dumps(body | {"images": records})},
                              files=files, timeout=30)
        assert response.status_code == 507, response.text
        [item] = response.json()["detail"]
        assert item["loc"] == ["body"] and item["type"] == "insufficient_storage"
        assert item["msg"].startswith("the server has no room left to spool the upload (EFBIG: File too large)")
        wait_until(lambda: not temp_files_open(live))
        assert list(live.tmpdir.iterdir()) == []
        wait_until(lambda: in_flight(live.url) == 0)
        small = httpx.post(f"{live.url}/v1/mix", json=coco_batch(2), timeout=30)  # and still mixes
        assert small.status_code == 200
        assert live.stop() == 0
    assert_clean_log(live)


# -- 4. slow uploads ------------------------------------------------------------------------------------


def test_a_body_slower_than_the_minimum_pace_gets_a_json_408(tmp_path, data_dir):
    settings = {"data_dir": data_dir, "upload_grace_s": 1.0, "min_upload_bytes_per_s": 4096, "max_in_flight": 1}
    with live_server(tmp_path, settings) as live:
        body = json.dumps(coco_batch(2)).encode()
        slow = [RawRequest(live.url, "POST", "/v1/mix", body) for _ in range(4)]
        start = time.monotonic()
        sent = 0
        # 1 KiB a second each (a quarter of the pace): due at 1 s + received / 4096 B/s, ~1.3 s in.
        while time.monotonic() - start < 5 and sent < len(body):
            sent += 1024
            for request in slow:
                try:
                    request.send(sent)
                except OSError:  # answered and closed
                    pass
            time.sleep(1)
        # Meanwhile a fast batch is admitted: the only batch place was never taken by the slow ones.
        assert httpx.post(f"{live.url}/v1/mix", content=body, headers=JSON, timeout=30).status_code == 200
        for request in slow:
            status, headers, answer = request.response()
            assert status == 408 and headers["connection"] == "close", answer
            [item] = json.loads(answer)["detail"]
            assert item["loc"] == ["body"] and item["type"] == "upload_too_slow"
            assert "slower than the 4096 bytes/s this server waits for after the first 1 s" in item["msg"]
        assert time.monotonic() - start < 8
        wait_until(lambda: uploads(live.url) == 0 and in_flight(live.url) == 0)
        assert live.stop() == 0
    assert_clean_log(live)


def test_uploads_beyond_max_uploads_are_refused_at_once(tmp_path, data_dir):
    with live_server(tmp_path, {"data_dir": data_dir, "max_uploads": 2, "retry_after_s": 3}) as live:
        body = json.dumps(coco_batch(2)).encode()
        holders = [RawRequest(live.url, "POST", "/v1/mix", body) for _ in range(2)]
        for holder in holders:
            holder.send(100)
        wait_until(lambda: uploads(live.url) == 2)
        refused = httpx.post(f"{live.url}/v1/mix", content=body, headers=JSON, timeout=10)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
        assert refused.json()["detail"][0]["msg"] == "2 uploads are in progress, the most this server takes; retry in 3 s"
        for holder in holders:
            holder.send()
            assert holder.response()[0] == 200
        assert live.stop() == 0
    assert_clean_log(live)


# -- 5. SIGTERM with work past the grace period ----------------------------------------------------------


def test_requests_cut_off_at_shutdown_get_a_json_503_and_the_process_exits_in_time(tmp_path, data_dir):
    grace = 3.0
    settings = {"data_dir": data_dir, "graceful_timeout_s": grace, "worker_threads": 1, "max_in_flight": 4}
    side = 4096
    png = image_bytes(side, side, value=70)
    body = json.dumps({"images": [{"id": i, "width": side, "height": side, "data": b64(png)} for i in (1, 2)],
                       "categories": [{"id": 1, "name": "thing"}], "recipe": "mixup", "seed": 0,
                       "output": {"format": "png"}}).encode()
    with live_server(tmp_path, settings) as live:
        requests = [RawRequest(live.url, "POST", "/v1/mix", body) for _ in range(4)]  # ~2 s of work each, one at a time
        for request in requests:
            request.sock.settimeout(grace + 10)
            request.send()
        wait_until(lambda: in_flight(live.url) == 4)
        signalled = time.monotonic()
        live.process.send_signal(signal.SIGTERM)
        answers = [request.response() for request in requests]
        status = live.process.wait(grace + 10)
        exited = time.monotonic() - signalled
    statuses = [answer[0] for answer in answers]
    assert 503 in statuses and set(statuses) <= {200, 503}, statuses
    for code, headers, answer in answers:
        if code == 503:
            assert headers["content-type"] == "application/json" and headers["retry-after"] == "1"
            [item] = json.loads(answer)["detail"]
            assert item["type"] == "shutting_down" and "not done within its graceful shutdown" in item["msg"]
    assert status == 0
    assert exited < grace + 1.5, exited  # was 20.6 s: the process waited for the abandoned worker thread
    log = live.output()
    assert "CancelledError" not in log and "Traceback" not in log and "Exception in ASGI application" not in log


# -- the missing protections: headers, the API pages ----------------------------------------------------


def test_security_headers_and_no_server_banner(server):
    page = httpx.get(f"{server.url}/")
    assert page.headers["content-security-policy"] == PLAYGROUND_CSP
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    for answer in (httpx.get(f"{server.url}/healthz"), httpx.get(f"{server.url}/static/playground.js"),
                   post(server, b"{"), httpx.get(f"{server.url}/v1/nothing")):
        assert answer.headers["x-content-type-options"] == "nosniff", answer.url
        assert "server" not in answer.headers, answer.headers  # no "server: uvicorn" unless asked
        assert "content-security-policy" not in answer.headers
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200 and docs.headers["x-frame-options"] == "DENY"
    assert "cdn" not in docs.text and "/docs/assets/swagger-ui-bundle.js" in docs.text
    bundle = httpx.get(f"{server.url}/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
    assert len(bundle.content) > 500_000 and b"SwaggerUIBundle" in bundle.content
    assert httpx.get(f"{server.url}/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert httpx.get(f"{server.url}/redoc").status_code == 404  # ReDoc's bundle needs a CDN: not served


def test_the_api_pages_can_be_turned_off(tmp_path, data_dir):
    with live_server(tmp_path, {"data_dir": data_dir, "api_docs": False, "server_header": True}) as live:
        for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui-bundle.js", "/redoc"):
            answer = httpx.get(live.url + path)
            assert answer.status_code == 404 and answer.json() == {
                "detail": [{"loc": [], "msg": "Not Found", "type": "http"}]}, path
        healthz = httpx.get(f"{live.url}/healthz")
        assert healthz.status_code == 200 and healthz.headers["server"] == "uvicorn"  # asked for
        assert live.stop() == 0


# -- slow headers (slowloris) --------------------------------------------------------------------------


def test_slow_headers_are_cut_at_the_header_timeout(tmp_path, data_dir):
    timeout_s, count = 1.0, 200
    with live_server(tmp_path, {"data_dir": data_dir, "header_timeout_s": timeout_s}) as live:
        port = int(live.url.rsplit(":", 1)[1])
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
        for sock in socks:
            sock.sendall(b"POST /v1/mix HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        start, answers, open_ = time.monotonic(), {}, set(range(count))
        # A header line every 0.3 s from every connection; the server closes each at the timeout.
        while open_ and time.monotonic() - start < timeout_s + 5:
            for k in list(open_):
                try:
                    socks[k].sendall(b"X-Slow: 1\r\n")
                except OSError:  # closed by the server
                    pass
            readable, _, _ = select.select([socks[k] for k in open_], [], [], 0.3)
            for sock in readable:
                k = socks.index(sock)
                data = b""
                try:
                    while chunk := sock.recv(65536):
                        data += chunk
                except ConnectionResetError:
                    pass
                answers[k] = data
                open_.discard(k)
        held = time.monotonic() - start
        assert not open_, f"{len(open_)} of {count} slow connections still open after {held:.1f} s"
        assert held < timeout_s + 3, held
        head, _, body = answers[0].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ") and json.loads(body)["detail"][0]["type"] == "header_timeout"
        assert sum(a.startswith(b"HTTP/1.1 408 ") for a in answers.values()) >= count * 0.9
        for sock in socks:
            sock.close()
        # A client that sends its head in time is served as before, on a connection kept alive.
        with httpx.Client(base_url=live.url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            time.sleep(timeout_s + 0.5)  # idle between requests is the keep-alive timeout's business
            assert client.post("/v1/mix", json=coco_batch(2)).status_code == 200
        assert live.stop() == 0
    assert_clean_log(live)
