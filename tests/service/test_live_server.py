"""A real uvicorn server on a loopback port (``python -m detmix_service``): overload, client
disconnects, graceful shutdown, and the Python client over real HTTP."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from detmix.client import AsyncDetmixClient, DetmixClient, ServiceBatches, ServiceError, batch_seed
from .servicekit import (RawRequest, assert_clean_log, b64, coco_batch, image_bytes, in_flight, live_server,
                         temp_files_open, uploads, wait_until)

HEAVY = json.dumps({"batch_size": 32, "seed": 1, "output": {"format": "png"}}).encode()
HUGE = json.dumps({"images": [{"id": i, "width": 4096, "height": 4096, "data": b64(image_bytes(4096, 4096, value=60))}
                              for i in (1, 2)],
                   "categories": [{"id": 1, "name": "thing"}], "recipe": "mixup", "seed": 0,
                   "output": {"format": "png"}}).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir):
    settings = {"data_dir": data_dir, "max_in_flight": 2, "worker_threads": 1, "max_batch_images": 32,
                "retry_after_s": 2}
    with live_server(tmp_path_factory.mktemp("live"), settings) as live:
        yield live
        assert live.stop() == 0
    assert_clean_log(live)


def test_overload_is_refused_at_once_and_health_stays_fast(server):
    body = json.dumps(coco_batch(2)).encode()
    # Two batches in flight: one mixing 2 x 4096^2 pixels in the only worker thread, one queued for it.
    holders = [RawRequest(server.url, "POST", "/v1/mix", HUGE) for _ in range(2)]
    for holder in holders:
        holder.send()
    wait_until(lambda: in_flight(server.url) == 2)
    start = time.monotonic()
    refused = httpx.post(f"{server.url}/v1/mix", content=body, headers={"content-type": "application/json"})
    assert time.monotonic() - start < 1.0
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
    assert "2 batches are in flight" in refused.json()["detail"][0]["msg"]
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    for holder in holders:
        status, _, answer = holder.response()
        assert status == 200 and len(json.loads(answer)["images"]) == 2
    wait_until(lambda: in_flight(server.url) == 0)


def test_slow_uploads_hold_no_batch_place(server):
    # Issue 13.4: four bodies trickling in held the four batch places for the whole deadline.
    body = json.dumps(coco_batch(2)).encode()
    slow = [RawRequest(server.url, "POST", "/v1/mix", body) for _ in range(4)]
    for request in slow:
        request.send(len(body) // 3)
    wait_until(lambda: uploads(server.url) == 4)
    assert in_flight(server.url) == 0
    fast = httpx.post(f"{server.url}/v1/mix", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert fast.status_code == 200
    for request in slow:
        request.send()
        status, _, answer = request.response()
        assert status == 200 and len(json.loads(answer)["images"]) == 2
    wait_until(lambda: uploads(server.url) == 0 and in_flight(server.url) == 0)


def test_a_burst_gets_200_or_429_and_health_answers_meanwhile(server):
    def batch(_: int) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/datasets/synthetic/batch", content=HEAVY,
                          headers={"content-type": "application/json"}, timeout=60)

    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            start = time.monotonic()
            assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(batch, range(8)))
    finally:
        done.set()
        prober.join()
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    assert all(r.headers["Retry-After"] == "2" for r in responses if r.status_code == 429)
    # Two cores run the server's worker and this test's 8 clients: health is slower than idle but
    # never waits for a batch (~1 s each, one at a time).
    assert len(latencies) >= 5 and float(np.median(latencies)) < 0.25 and max(latencies) < 1.0, latencies


def test_a_client_that_hangs_up_mid_batch(server):
    disconnects = _metric(server.url, 'detmix_rejections_total{reason="client_disconnected"}')
    request = RawRequest(server.url, "POST", "/v1/datasets/synthetic/batch", HEAVY)
    request.send()
    wait_until(lambda: in_flight(server.url) == 1)
    time.sleep(0.2)
    request.close()
    wait_until(lambda: in_flight(server.url) == 0)  # the abandoned thread stopped
    wait_until(lambda: _metric(server.url, 'detmix_rejections_total{reason="client_disconnected"}') == disconnects + 1)
    assert list(server.tmpdir.iterdir()) == []
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_client_that_hangs_up_mid_upload_leaves_no_temp_files(server):
    big = np.random.default_rng(0).integers(0, 256, 3 * 2**20, dtype=np.uint8).tobytes()  # spooled to disk
    boundary = "detmixboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
    request = RawRequest(server.url, "POST", "/v1/mix", body, f"multipart/form-data; boundary={boundary}")
    request.send(2 * 2**20)
    wait_until(lambda: uploads(server.url) == 1)
    wait_until(lambda: temp_files_open(server))  # the upload went past memory into a temporary file
    request.close()
    wait_until(lambda: uploads(server.url) == 0)
    assert in_flight(server.url) == 0
    wait_until(lambda: not temp_files_open(server))
    assert list(server.tmpdir.iterdir()) == []


def _metric(url: str, sample: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    return 0.0


def test_sync_client(server):
    with DetmixClient(server.url) as client:
        assert client.ready()
        assert {d["name"] for d in client.datasets()} == {"synthetic"}
        assert {r["name"] for r in client.recipes()} == {"copy_paste", "cutmix", "cutout", "deit", "fmix", "mixup", "resizemix", "saliencymix"}
        batch = client.dataset_batch("synthetic", batch_size=3, seed=5, output_format="png")
        assert batch.seed == 5 and len(batch.images) == len(batch.targets) == 3
        for image, target in zip(batch.images, batch.targets, strict=True):
            n = len(target["boxes"])
            assert image.dtype == np.uint8 and image.shape == (240, 320, 3)
            assert target["masks"].shape == (n, 240, 320) and target["labels"].shape == (n,)
            assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
        again = client.dataset_batch("synthetic", image_ids=[t["image_id"] for t in batch.targets],
                                     params=batch.params, output_format="png")
        for a, b in zip(batch.images, again.images, strict=True):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(ServiceError) as error:
            client.dataset_batch("synthetic", batch_size=1000)
        assert error.value.status == 422 and "batch_size" in str(error.value)


def test_sync_client_mixes_numpy_images_as_tensors(server):
    body = coco_batch(2)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(2)]
    coco = {k: v for k, v in body.items() if k != "seed"}
    coco["images"] = [{"id": r["id"]} for r in body["images"]]
    with DetmixClient(server.url) as client:
        batch = client.mix(images, coco, recipe="mixup", seed=2, output_format="png", as_tensors=True)
    import torch

    assert batch.images[0].dtype == torch.uint8 and tuple(batch.images[0].shape) == (3, 30, 40)
    assert batch.targets[0]["boxes"].dtype == torch.float32 and len(batch.targets[0]["weights"]) == 4
    lam = batch.params[0]["params"]["lam"]
    partner = batch.params[0]["partner_id"] - 1
    expected = np.clip(np.round(lam * images[0].astype(np.float32) + (1 - lam) * images[partner].astype(np.float32)),
                       0, 255).astype(np.uint8)
    np.testing.assert_array_equal(batch.images[0].permute(1, 2, 0).numpy(), expected)


def test_async_client(server):
    import anyio

    async def main():
        async with AsyncDetmixClient(server.url) as client:
            assert await client.ready()
            first = await client.dataset_batch("synthetic", batch_size=2, seed=9)
            second = await client.dataset_batch("synthetic", batch_size=2, seed=9)
            return first, second

    first, second = anyio.run(main)
    assert first.params == second.params and len(first.targets) == 2


def test_service_batches_stream_the_same_with_workers(server):
    from torch.utils.data import DataLoader, IterableDataset

    with DetmixClient(server.url) as client:
        stream = ServiceBatches(client, "synthetic", batch_size=2, seed=7, num_batches=4)
        assert isinstance(stream, IterableDataset) and len(stream) == 4
        alone = [targets for _, targets in DataLoader(stream, batch_size=None)]
        with_workers = [targets for _, targets in DataLoader(stream, batch_size=None, num_workers=2)]
        expected = client.dataset_batch("synthetic", 2, batch_seed(7, 3), as_tensors=True)
    ids = lambda batches: sorted(tuple(t["image_id"] for t in targets) for targets in batches)  # noqa: E731
    assert len(alone) == 4 and ids(alone) == ids(with_workers)
    assert [t["image_id"] for t in alone[3]] == [t["image_id"] for t in expected.targets]


def test_graceful_shutdown(tmp_path, data_dir):
    with live_server(tmp_path, {"data_dir": data_dir, "drain_s": 1.0, "graceful_timeout_s": 20}) as server:
        body = json.dumps(coco_batch(3)).encode()
        in_progress = RawRequest(server.url, "POST", "/v1/mix", body)
        in_progress.send(len(body) // 2)
        wait_until(lambda: uploads(server.url) == 1)
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{server.url}/readyz").status_code == 503, timeout=1.0)
        assert httpx.get(f"{server.url}/readyz").json()["status"] == "draining"
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        time.sleep(1.5)  # past the drain: the server no longer accepts connections
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/healthz", timeout=2)
        in_progress.send()
        status, _, answer = in_progress.response()
        assert status == 200 and len(json.loads(answer)["images"]) == 3
        assert server.process.wait(20) == 0
    assert_clean_log(server)
