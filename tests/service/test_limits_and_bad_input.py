"""Every limit and every kind of bad input: the status code, the field (``loc``) and the message.

A client mistake is never a 500: each case below pins what the client is told instead.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from PIL import ImageFile

from .servicekit import b64, box_polygon, coco_batch, error_locs, error_text, image_bytes


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` and whose pixel data is garbage."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"not zlib at all") + chunk(b"IEND", b"")


def annotation(body: dict, k: int = 0) -> dict:
    return body["annotations"][k]


def masked(body: dict) -> dict:
    for ann in body["annotations"]:
        ann["segmentation"] = box_polygon(*ann["bbox"])
    return body


Case = tuple[str, Callable[[dict], Any], int, list, str]

# (name, mutate the valid 2-image body, status, loc of the first error, words of its message)
CASES: list[Case] = [
    ("missing bbox", lambda b: annotation(b).pop("bbox"), 422, ["body", "annotations", 0, "bbox"],
     "annotation 10: Field required"),
    ("missing image_id", lambda b: annotation(b).pop("image_id"), 422, ["body", "annotations", 0, "image_id"],
     "annotation 10"),
    ("missing categories", lambda b: b.pop("categories"), 422, ["body", "categories"], "Field required"),
    ("w = 0", lambda b: annotation(b).update(bbox=[1, 1, 0, 5]), 422, ["body", "annotations", 0, "bbox"],
     "w > 0 and h > 0"),
    ("h < 0", lambda b: annotation(b).update(bbox=[1, 1, 5, -2]), 422, ["body", "annotations", 0, "bbox"],
     "w > 0 and h > 0"),
    ("box outside", lambda b: annotation(b).update(bbox=[30, 2, 20, 5]), 422, ["body", "annotations", 0, "bbox"],
     "annotation 10: bbox [30.0, 2.0, 20.0, 5.0] must lie inside image 1 (40x30) up to the 1 px that are clipped, but x + w = 50 > 40"),
    ("box left of the image", lambda b: annotation(b).update(bbox=[-3, 2, 5, 5]), 422,
     ["body", "annotations", 0, "bbox"], "must lie inside image 1 (40x30) up to the 1 px that are clipped, but x = -3 < 0"),
    ("bbox of 3 numbers", lambda b: annotation(b).update(bbox=[1, 2, 3]), 422, ["body", "annotations", 0, "bbox"],
     "at least 4 items"),
    ("bbox as strings", lambda b: annotation(b).update(bbox=["1", "2", "3", "4"]), 422,
     ["body", "annotations", 0, "bbox", 0], "valid number"),
    ("duplicate annotation id", lambda b: annotation(b, 1).update(id=10), 422, ["body", "annotations", 1, "id"],
     "annotation id 10 appears twice: annotations[0] and annotations[1]"),
    ("duplicate image id", lambda b: b["images"][1].update(id=1), 422, ["body", "images", 1, "id"],
     "image id 1 appears twice"),
    ("duplicate category id", lambda b: b["categories"][1].update(id=1), 422, ["body", "categories", 1, "id"],
     "category id 1 appears twice"),
    ("unknown image_id", lambda b: annotation(b).update(image_id=99), 422, ["body", "annotations", 0, "image_id"],
     "annotation 10: image_id 99 is not the id of an image of the batch"),
    ("unknown category_id", lambda b: annotation(b).update(category_id=7), 422,
     ["body", "annotations", 0, "category_id"], "annotation 10: category_id 7 is not the id of a category"),
    ("negative id", lambda b: annotation(b).update(id=-1), 422, ["body", "annotations", 0, "id"], "greater than"),
    ("iscrowd 2", lambda b: annotation(b).update(iscrowd=2), 422, ["body", "annotations", 0, "iscrowd"], "0 or 1"),
    ("polygon with an odd count", lambda b: masked(b)["annotations"][0].update(segmentation=[[1, 1, 5, 1, 5, 5, 1]]),
     422, ["body", "annotations", 0, "segmentation"], "odd number (7) of coordinates"),
    ("polygon of two points", lambda b: masked(b)["annotations"][0].update(segmentation=[[1, 1, 5, 5]]), 422,
     ["body", "annotations", 0, "segmentation", 0], "at least 6 items"),
    ("polygon outside", lambda b: masked(b)["annotations"][0].update(segmentation=[[1, 1, 45, 1, 5, 5]]), 422,
     ["body", "annotations", 0, "segmentation", 0], "annotation 10: polygon 0 point 1 (45, 1) lies outside image 1"),
    ("segmentation of another type", lambda b: masked(b)["annotations"][0].update(segmentation="abc"), 422,
     ["body", "annotations", 0, "segmentation"], "a list of polygons or an RLE object"),
    ("RLE of the wrong size", lambda b: masked(b)["annotations"][0].update(
        segmentation={"size": [30, 41], "counts": [1230]}), 422,
     ["body", "annotations", 0, "segmentation", "size"], "RLE size [30, 41] must be [height, width] of image 1, [30, 40]"),
    ("RLE runs not covering the image", lambda b: masked(b)["annotations"][0].update(
        segmentation={"size": [30, 40], "counts": [100, 20]}), 422,
     ["body", "annotations", 0, "segmentation", "counts"], "got runs summing to 120"),
    ("RLE string with bad characters", lambda b: masked(b)["annotations"][0].update(
        segmentation={"size": [30, 40], "counts": "~~~"}), 422,
     ["body", "annotations", 0, "segmentation", "counts"], "must use characters"),
    ("segmentation on some annotations only", lambda b: masked(b)["annotations"][2].pop("segmentation"), 422,
     ["body", "annotations", 2, "segmentation"], "annotation 20: has no segmentation but annotation 10 has one"),
    ("unknown top-level key", lambda b: b.update(colour="red"), 422, ["body", "colour"], "Extra inputs"),
    ("seed as a string", lambda b: b.update(seed="5"), 422, ["body", "seed"], "valid integer"),
    ("negative seed", lambda b: b.update(seed=-1), 422, ["body", "seed"], "greater than or equal to 0"),
    ("seed over 63 bits", lambda b: b.update(seed=2**63), 422, ["body", "seed"], "less than or equal to"),
    ("quality 0", lambda b: b.update(output={"quality": 0}), 422, ["body", "output", "quality"], "greater than"),
    ("quality 100", lambda b: b.update(output={"quality": 100}), 422, ["body", "output", "quality"], "less than"),
    ("gif output", lambda b: b.update(output={"format": "gif"}), 422, ["body", "output", "format"], "'jpeg' or 'png'"),
    ("unknown recipe", lambda b: b.update(recipe="nope"), 422, ["body", "recipe"],
     "recipe 'nope' is not one of ['copy_paste', 'cutmix', 'cutout', 'deit', 'fmix', 'mixup', 'resizemix', 'saliencymix']"),
    ("recipe name with a slash", lambda b: b.update(recipe="../deit"), 422, ["body", "recipe"], "pattern"),
    ("alpha 0", lambda b: b.update(recipe={"cutmix": {"alpha": 0}}), 422, ["body", "recipe", "cutmix", "alpha"],
     "greater than 0"),
    ("alpha 1000", lambda b: b.update(recipe={"mixup": {"alpha": 1000}}), 422, ["body", "recipe", "mixup", "alpha"],
     "less than or equal to 100"),
    ("prob 1.5", lambda b: b.update(recipe={"prob": 1.5, "mixup": {}}), 422, ["body", "recipe", "prob"],
     "less than or equal to 1"),
    ("lam_clamp reversed", lambda b: b.update(recipe={"mixup": {"lam_clamp": [0.8, 0.2]}}), 422,
     ["body", "recipe", "mixup", "lam_clamp"], "low <= high"),
    ("negative min_area", lambda b: b.update(recipe={"cutmix": {"min_area": -1}}), 422,
     ["body", "recipe", "cutmix", "min_area"], "greater than or equal to 0"),
    ("alpha as a string", lambda b: b.update(recipe={"mixup": {"alpha": "2"}}), 422,
     ["body", "recipe", "mixup", "alpha"], "valid number"),
    ("prob as a boolean", lambda b: b.update(recipe={"prob": True, "mixup": {}}), 422, ["body", "recipe", "prob"],
     "valid number"),
    ("lam_clamp of strings", lambda b: b.update(recipe={"cutmix": {"lam_clamp": ["0.2", 0.8]}}), 422,
     ["body", "recipe", "cutmix", "lam_clamp", 0], "valid number"),
    ("recipe without a mix", lambda b: b.update(recipe={"prob": 1.0}), 422, ["body", "recipe"],
     "needs at least one mode section of ['mixup', 'cutmix'"),
    ("image without data", lambda b: b["images"][0].pop("data"), 422, ["body", "images", 0, "data"],
     "image 1: a JSON request carries each image as base64 in 'data'"),
    ("data not base64", lambda b: b["images"][0].update(data="***"), 422, ["body", "images", 0, "data"],
     "image 1: data must be base64"),
    ("GIF", lambda b: b["images"][0].update(data=b64(image_bytes(30, 40, fmt="GIF"))), 415,
     ["body", "images", 0, "data"], "image 1: the file is not JPEG, PNG or WebP (its first bytes are 47 49 46 38"),
    ("BMP", lambda b: b["images"][0].update(data=b64(image_bytes(30, 40, fmt="BMP"))), 415,
     ["body", "images", 0, "data"], "not JPEG, PNG or WebP"),
    ("text", lambda b: b["images"][0].update(data=b64(b"hello, world")), 415, ["body", "images", 0, "data"],
     "not JPEG, PNG or WebP"),
    ("truncated JPEG", lambda b: b["images"][0].update(data=b64(image_bytes(30, 40, fmt="JPEG")[:-700])), 422,
     ["body", "images", 0, "data"], "image 1: the image data is truncated or corrupt"),
    ("truncated PNG", lambda b: b["images"][0].update(data=b64(image_bytes(30, 40)[:120])), 422,
     ["body", "images", 0, "data"], "truncated or corrupt"),
    ("corrupt PNG header", lambda b: b["images"][0].update(data=b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)), 422,
     ["body", "images", 0, "data"], "image 1: corrupt PNG header"),
    ("WebP as a file", lambda b: b["images"][0].update(data=b64(image_bytes(30, 40, fmt="WEBP"))), 200, [], ""),
    ("declared size is not the file's", lambda b: b["images"][0].update(width=41), 422,
     ["body", "images", 0, "data"], "image 1: the file is 40x30 but the record says width=41, height=30"),
    ("header over the pixel limit", lambda b: b["images"][0].update(data=b64(png_header(4000, 3000))), 422,
     ["body", "images", 0, "data"], "image 1: the PNG is 4000x3000 = 12000000 pixels, more than the limit of 1000000 "
     "(read from its header; nothing was decoded)"),
    ("decompression bomb", lambda b: b["images"][0].update(data=b64(png_header(20000, 20000))), 422,
     ["body", "images", 0, "data"], "image 1: refused as a decompression bomb"),
    ("declared image over the pixel limit", lambda b: b["images"][0].update(width=2000, height=1000), 422,
     ["body", "images", 0], "image 1 is 2000x1000 = 2000000 pixels, more than the limit of 1000000"),
    ("too many images", lambda b: b["images"].extend(
        {"id": 100 + i, "width": 40, "height": 30, "data": "AA=="} for i in range(3)), 422, ["body", "images"],
     "a batch holds at most 4 images, got 5"),
    ("too many annotations on an image", lambda b: b["annotations"].extend(
        {"id": 100 + i, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]} for i in range(5)), 422,
     ["body", "annotations"], "image 1 has 7 annotations, more than the limit of 5"),
]


@pytest.fixture(scope="module")
def limited(make_client):
    with make_client(max_batch_images=4, max_image_pixels=1_000_000, max_annotations_per_image=5) as client:
        yield client


@pytest.mark.parametrize(("mutate", "status", "loc", "words"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_input_is_named(limited, mutate, status, loc, words):
    body = coco_batch(2)
    mutate(body)
    response = limited.post("/v1/mix", json=body)
    assert response.status_code == status, response.text
    if status != 200:
        assert error_locs(response)[0] == loc
        assert words in error_text(response)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_nan_is_not_json(client):
    text = json.dumps(coco_batch(2)).replace('"seed": 0', '"seed": NaN')
    response = client.post("/v1/mix", content=text, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert error_locs(response) == [["body"]] and "NaN is not a JSON number" in error_text(response)


@pytest.mark.parametrize("literal", ["1e999", "-1e999"])
def test_numbers_that_overflow_to_infinity_are_refused(client, literal):
    body = coco_batch(2)
    body["annotations"][0]["bbox"][2] = 123.25
    text = json.dumps(body).replace("123.25", literal)
    response = client.post("/v1/mix", content=text, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert error_locs(response)[0] == ["body", "annotations", 0, "bbox", 2] and "finite number" in error_text(response)


@pytest.mark.parametrize(("content", "words"), [(b"{", "not valid JSON"), (b"[1, 2]", "must be a JSON object"),
                                                 (b"\xff\xfe", "not valid JSON"), (b"1" * 5000, "not valid JSON")])
def test_malformed_json(client, content, words):
    response = client.post("/v1/mix", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422 and words in error_text(response)


def test_the_batch_pixel_limit_is_checked_before_decoding(make_client):
    body = coco_batch(3)
    with make_client(max_batch_pixels=3000) as client:
        response = client.post("/v1/mix", json=body)
    assert response.status_code == 422 and error_locs(response) == [["body", "images"]]
    assert "the batch's images have 3600 pixels in all" in error_text(response)


def test_the_mask_budget_is_a_limit(make_client):
    body = masked(coco_batch(2))
    with make_client(max_mask_pixels=4000) as client:
        response = client.post("/v1/mix", json=body)
    assert response.status_code == 422 and error_locs(response) == [["body", "annotations"]]
    assert "masks would take 4800 pixels" in error_text(response)


def test_unsupported_content_type(client):
    response = client.post("/v1/mix", content=b"images", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and error_locs(response) == [["header", "content-type"]]
    assert "got 'text/plain'" in error_text(response)


def test_declared_body_over_the_limit_is_refused_unread(make_client):
    with make_client(max_body_bytes=4096) as client:
        body = json.dumps(coco_batch(2)).encode()
        assert len(body) > 4096
        response = client.post("/v1/mix", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 413 and error_locs(response) == [["body"]]
        assert f"the body is {len(body)} bytes (Content-Length), more than the limit of 4096 bytes" in error_text(response)
        assert 'detmix_rejections_total{reason="body_too_large"} 1.0' in client.get("/metrics").text


def test_streamed_body_over_the_limit_stops_at_the_limit(make_settings):
    """No Content-Length (chunked): the read that passes the limit raises instead of returning,
    so the app never sees a byte past it and the client is answered 413."""
    from detmix_service.metrics import Metrics
    from detmix_service.middleware import BodySizeLimit
    from detmix_service.errors import PayloadTooLarge

    handed: list[int] = []

    async def app(scope, receive, send):  # reads as long as there is body
        while True:
            message = await receive()
            handed.append(len(message["body"]))
            if not message.get("more_body"):
                return

    chunks = iter([{"type": "http.request", "body": b"x" * 1000, "more_body": True}] * 100)
    sent = []

    async def receive():
        return next(chunks)

    async def send(message):
        sent.append(message)

    import anyio

    metrics = Metrics()
    scope = {"type": "http", "method": "POST", "path": "/v1/mix", "headers": [(b"transfer-encoding", b"chunked")]}
    anyio.run(BodySizeLimit(app, 4096, metrics), scope, receive, send)
    assert sum(handed) == 4000  # the fifth chunk would pass 4096: never handed over
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["detail"][0]["msg"] == "the body is longer than the limit of 4096 bytes"
    assert metrics.rejections.labels(PayloadTooLarge.reason)._value.get() == 1


def _form(body: dict) -> tuple[dict, list]:
    files, records = [], []
    for record in body["images"]:
        name = f"{record['id']}.png"
        files.append(("images", (name, base64.b64decode(record["data"]), "image/png")))
        records.append({k: v for k, v in record.items() if k != "data"} | {"file_name": name})
    return {"request": json.dumps(body | {"images": records})}, files


@pytest.mark.parametrize(("change", "loc", "words"), [
    (lambda form, files: form.pop("request"), ["body", "request"],
     "the form field 'request' (the MixRequest JSON) is missing"),
    (lambda form, files: files.pop(), ["body", "request", "images", 1, "file_name"],
     "image 2: no file part is named '2.png'"),
    (lambda form, files: files.append(("images", ("3.png", b"x", "image/png"))), ["body", "images"],
     "file parts ['3.png'] are not named by any image's file_name"),
    (lambda form, files: files.append(("images", ("1.png", b"x", "image/png"))), ["body", "images", 2],
     "two file parts are named '1.png'"),
    (lambda form, files: form.update(colour="red"), ["body", "colour"], "unknown form fields ['colour']"),
    (lambda form, files: form.update(request="{"), ["body", "request"], "not valid JSON"),
    (lambda form, files: files.__setitem__(0, ("images", ("1.png", b"GIF89a....", "image/gif"))), ["body", "images", 0],
     "image 1: the file is not JPEG, PNG or WebP"),
])
def test_multipart_mistakes(client, change, loc, words):
    form, files = _form(coco_batch(2))
    change(form, files)
    response = client.post("/v1/mix", data=form, files=files)
    assert response.status_code in (415, 422), response.text
    assert error_locs(response)[0] == loc and words in error_text(response)


def test_multipart_refuses_inline_data(client):
    body = coco_batch(2)
    form, files = _form(body)
    request = json.loads(form["request"])
    request["images"][0]["data"] = body["images"][0]["data"]
    response = client.post("/v1/mix", data={"request": json.dumps(request)}, files=files)
    assert response.status_code == 422 and error_locs(response) == [["body", "request", "images", 0, "data"]]


def _replay(client, change) -> Any:
    body = coco_batch(3) | {"recipe": "cutmix", "seed": 4}
    params = [image["mix"] for image in client.post("/v1/mix", json=body).json()["images"]]
    change(params)
    return client.post("/v1/mix", json=body | {"params": params})


@pytest.mark.parametrize(("change", "loc", "words"), [
    (lambda p: p.pop(), ["body", "params"], "params must hold one entry per image (3), got 2"),
    (lambda p: p[1].update(image_id=p[0]["image_id"]), ["body", "params", 1, "image_id"], "appears twice"),
    (lambda p: p[0].update(partner_id=77), ["body", "params", 0, "partner_id"], "partner_id 77 is not the id"),
    (lambda p: p[0]["params"].update(canvas=[31, 40]), ["body", "params", 0, "params", "canvas"],
     "must be [height, width] = [30, 40]"),
    (lambda p: p[0]["params"].update(cut_box=[0, 0, 50, 10]), ["body", "params", 0, "params", "cut_box"],
     "cut_box must satisfy 0 <= x1 <= x2 <= 40"),
    (lambda p: p[0]["params"].update(lam=0.123), ["body", "params", 0, "params", "lam"],
     "params.lam must be 1 - area(cut_box) / (height * width)"),
    (lambda p: p[0]["params"].update(mode="mixup", cut_box=None), ["body", "params", 0, "params", "mode"],
     "needs a 'mixup' section in recipe 'cutmix'"),
    (lambda p: p[0]["params"].update(mode="none", cut_box=None, lam=0.5), ["body", "params", 0, "params", "lam"],
     "must be 1 for mode 'none'"),
    (lambda p: p[0]["params"].update(cut_box=None), ["body", "params", 0, "params", "cut_box"],
     "cut_box must be given for the modes ['cutmix'"),
    (lambda p: p[0]["params"].update(lam=1.5), ["body", "params", 0, "params", "lam"], "less than or equal to 1"),
])
def test_replayed_params_are_checked(client, change, loc, words):
    response = _replay(client, change)
    assert response.status_code == 422, response.text
    assert error_locs(response)[0] == loc and words in error_text(response)


def test_a_late_batch_answers_504_and_frees_its_place(make_client):
    body = coco_batch(16, height=120, width=160, masks=True) | {"output": {"format": "png"}}
    with make_client(request_timeout_s=0.01, max_in_flight=1, max_batch_images=16) as client:
        response = client.post("/v1/mix", json=body)
        assert response.status_code == 504
        assert error_locs(response) == [["body"]] or error_locs(response) == [[]]
        assert "deadline of 0.01 s" in error_text(response)
        runtime = client.app.state.runtime
        for _ in range(200):  # the abandoned thread stops at its next checkpoint
            if runtime.admission.in_flight == 0:
                break
            time.sleep(0.01)
        assert runtime.admission.in_flight == 0
