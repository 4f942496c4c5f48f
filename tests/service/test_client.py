"""detmix.client without a server: retries, back-off, errors, answer parsing (httpx MockTransport).
The client against a real server is in test_live_server.py."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

import detmix.client as client_module
from detmix.client import AsyncDetmixClient, DetmixClient, ServiceError, batch_seed, parse_answer
from detmix.rle import encode_rle


def answer() -> dict:
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[1, 2] = 200
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:5] = 1
    mix = {"image_id": 5, "partner_id": 6, "params": {"mode": "mixup", "lam": 0.5, "cut_box": None, "canvas": [4, 6]}}
    return {
        "images": [{"id": 5, "width": 6, "height": 4, "file_name": "mixed-5.png", "format": "png",
                    "data": base64.b64encode(buffer.getvalue()).decode(), "mix": mix}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [2.0, 1.0, 3.0, 2.0], "area": 6.0,
                         "iscrowd": 0, "segmentation": encode_rle(mask), "mix_weight": 0.5, "source_image_id": 6,
                         "source_annotation_id": 60}],
        "categories": [{"id": 3, "name": "c", "supercategory": ""}],
        "dropped": [{"image_id": 5, "source_image_id": 5, "source_annotation_id": 50, "category_id": 3,
                     "visibility": 0.0, "reason": "invisible"}],
        "recipe": {"name": "mixup"},
        "seed": 1,
    }


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(client_module, "_sleep", slept.append)
    return slept


def scripted(*responses: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return httpx.MockTransport(handle), seen


def test_retries_honour_retry_after_then_succeed(sleeps):
    transport, seen = scripted(httpx.Response(429, headers={"Retry-After": "3"}, json={"detail": []}),
                               httpx.Response(503, headers={"Retry-After": "1.5"}, json={"detail": []}),
                               httpx.Response(200, json=answer()))
    with DetmixClient("http://detmix.test", api_key="key-123456", transport=transport) as client:
        batch = client.dataset_batch("synthetic", batch_size=1, seed=1)
    assert sleeps == [3.0, 1.5] and len(seen) == 3
    assert all(request.headers["X-API-Key"] == "key-123456" for request in seen)
    assert json.loads(seen[0].content) == {"recipe": "deit", "output": {"format": "jpeg", "quality": 90},
                                           "batch_size": 1, "seed": 1}
    assert batch.seed == 1 and batch.params[0]["partner_id"] == 6


def test_back_off_without_retry_after_is_exponential_and_capped(sleeps):
    transport, _ = scripted(*[httpx.Response(503)] * 6, httpx.Response(200, json=answer()))
    client = DetmixClient("http://detmix.test", retries=6, backoff=1.0, max_backoff=4.0, transport=transport)
    client.recipes()
    caps = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert len(sleeps) == 6 and all(cap / 2 <= s <= cap for s, cap in zip(sleeps, caps, strict=True))


def test_retry_after_is_capped(sleeps):
    transport, _ = scripted(httpx.Response(429, headers={"Retry-After": "3600"}), httpx.Response(200, json=[]))
    DetmixClient("http://detmix.test", max_backoff=5.0, transport=transport).recipes()
    assert sleeps == [5.0]


def test_gives_up_after_the_retries(sleeps):
    transport, seen = scripted(*[httpx.Response(429, json={"detail": [{"loc": [], "msg": "busy", "type": "x"}]})] * 3)
    with pytest.raises(ServiceError) as error:
        DetmixClient("http://detmix.test", retries=2, transport=transport).datasets()
    assert error.value.status == 429 and "busy" in str(error.value) and len(seen) == 3 and len(sleeps) == 2


def test_connection_errors_are_retried(sleeps):
    transport, seen = scripted(httpx.ConnectError("refused"), httpx.Response(200, json=[]))
    assert DetmixClient("http://detmix.test", transport=transport).datasets() == []
    assert len(seen) == 2 and len(sleeps) == 1


def test_client_mistakes_are_not_retried(sleeps):
    detail = [{"loc": ["body", "batch_size"], "msg": "too big", "type": "limit"}]
    transport, seen = scripted(httpx.Response(422, json={"detail": detail}))
    with pytest.raises(ServiceError, match=r"answered 422: body.batch_size: too big") as error:
        DetmixClient("http://detmix.test", transport=transport).dataset_batch(batch_size=999)
    assert error.value.detail == detail and len(seen) == 1 and sleeps == []


def test_mix_sends_a_multipart_form(sleeps):
    transport, seen = scripted(httpx.Response(200, json=answer()))
    images = [np.zeros((4, 6, 3), np.uint8), np.full((4, 6, 3), 9, np.uint8)]
    coco = {"images": [{"id": 5}, {"id": 6}], "annotations": [], "categories": [{"id": 3, "name": "c"}]}
    DetmixClient("http://detmix.test", transport=transport).mix(images, coco, recipe="mixup", seed=4)
    body = seen[0].content
    assert seen[0].headers["content-type"].startswith("multipart/form-data")
    assert body.count(b'name="images"') == 2 and b"\x89PNG" in body
    request = json.loads(body.split(b'name="request"\r\n\r\n')[1].split(b"\r\n--")[0])
    assert request["images"] == [{"id": 5, "width": 6, "height": 4, "file_name": "0-5"},
                                 {"id": 6, "width": 6, "height": 4, "file_name": "1-6"}]
    assert request["seed"] == 4 and request["recipe"] == "mixup"
    with pytest.raises(ValueError, match="describe each of the 2 images"):
        DetmixClient("http://detmix.test", transport=transport).mix(images, coco | {"images": [{"id": 5}]})


def _file_parts(request: httpx.Request) -> list[bytes]:
    parts = request.content.split(b'name="images"')[1:]
    return [part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0] for part in parts]


def test_mix_takes_torch_images_as_torchvision_does(sleeps):
    torch = pytest.importorskip("torch")
    from torchvision import tv_tensors

    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, (4, 6, 3), dtype=np.uint8) for _ in range(2)]
    coco = {"images": [{"id": 5}, {"id": 6}], "annotations": [], "categories": [{"id": 3, "name": "c"}]}
    sent = []
    for images in (arrays, [torch.from_numpy(arrays[0]).permute(2, 0, 1), tv_tensors.Image(arrays[1].transpose(2, 0, 1))]):
        transport, seen = scripted(httpx.Response(200, json=answer()))
        DetmixClient("http://detmix.test", transport=transport).mix(images, coco, recipe="mixup", seed=4)
        sent.append(_file_parts(seen[0]))
    assert sent[0] == sent[1] and len(sent[0]) == 2
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(sent[1][1]))), arrays[1])
    client = DetmixClient("http://detmix.test", transport=scripted()[0])
    for bad, shown in ((torch.zeros(4, 6, 3, dtype=torch.uint8), r"images\[1\] must be a \(3, H, W\) uint8 tensor, got torch.uint8 \(4, 6, 3\)"),
                       (torch.zeros(3, 4, 6), r"images\[1\] must be a \(3, H, W\) uint8 tensor, got torch.float32"),
                       (np.zeros((3, 4, 6), np.uint8), r"images\[1\] must be an \(H, W, 3\) uint8 array.*got uint8 \(3, 4, 6\)")):
        with pytest.raises(ValueError, match=shown):
            client.mix([arrays[0], bad], coco)


def test_parse_answer_numpy_and_tensors():
    batch = parse_answer(answer())
    (target,) = batch.targets
    np.testing.assert_array_equal(target["boxes"], [[2, 1, 5, 3]])
    assert target["labels"].tolist() == [3] and target["weights"].tolist() == [0.5]
    assert target["masks"].shape == (1, 4, 6) and target["masks"].sum() == 6
    assert target["dropped"][0]["source_annotation_id"] == 50 and batch.images[0][1, 2].tolist() == [200] * 3
    import torch

    tensors = parse_answer(answer(), as_tensors=True)
    assert tuple(tensors.images[0].shape) == (3, 4, 6) and tensors.targets[0]["boxes"].dtype == torch.float32


def test_async_client_retries(monkeypatch):
    import anyio

    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(anyio, "sleep", fake_sleep)
    responses = [httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(200, json=answer())]

    async def main():
        transport = httpx.MockTransport(lambda request: responses.pop(0))
        async with AsyncDetmixClient("http://detmix.test", transport=transport) as client:
            return await client.dataset_batch(batch_size=1)

    assert anyio.run(main).seed == 1 and slept == [2.0]


def test_batch_seeds_are_distinct_and_stable():
    seeds = [batch_seed(7, k) for k in range(100)]
    assert len(set(seeds)) == 100 and all(0 <= s < 2**63 for s in seeds)
    assert seeds == [batch_seed(7, k) for k in range(100)] and batch_seed(8, 0) != seeds[0]


def test_argument_checks():
    with pytest.raises(ValueError, match="retries must be >= 0"):
        DetmixClient(retries=-1)
    with pytest.raises(ValueError, match="backoff must satisfy"):
        DetmixClient(backoff=10, max_backoff=1)
