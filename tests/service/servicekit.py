"""Helpers of the service tests: images, COCO batches, a live uvicorn server."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from detmix import MixParams, load_recipe, mix_pair
from detmix.functional import DropReason
from detmix.rle import decode_rle

import detmix_service

SERVICE_ROOT = Path(detmix_service.__file__).resolve().parents[1]


def image_bytes(height: int = 30, width: int = 40, fmt: str = "PNG", value: int | None = None, seed: int = 0,
                **save: Any) -> bytes:
    """An encoded RGB image: constant ``value`` or seeded noise."""
    if value is None:
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        pixels = np.full((height, width, 3), value, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def box_polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def coco_batch(n: int = 2, height: int = 30, width: int = 40, *, masks: bool = False) -> dict[str, Any]:
    """A valid JSON /v1/mix body: ``n`` noise PNGs, two boxes each, one category."""
    images, annotations = [], []
    for i in range(1, n + 1):
        images.append({"id": i, "width": width, "height": height, "data": b64(image_bytes(height, width, seed=i))})
        for k, bbox in enumerate(([2.0, 3.0, 12.0, 10.0], [width / 2, height / 2, width / 3, height / 3])):
            ann = {"id": 10 * i + k, "image_id": i, "category_id": 1 + k, "bbox": bbox, "iscrowd": 0}
            if masks:
                ann["segmentation"] = box_polygon(*bbox)
            annotations.append(ann)
    categories = [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]
    return {"images": images, "annotations": annotations, "categories": categories, "seed": 0}


def decode(image: dict) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(image["data"]))) as file:
        return np.asarray(file.convert("RGB"))


def core_sample(body: dict, image_id: int, masks: bool = False) -> dict:
    """The detmix sample of one input image of a JSON /v1/mix body, built independently of the
    service (pixels decoded by Pillow, masks by pycocotools, boxes clipped to the image)."""
    record = next(r for r in body["images"] if r["id"] == image_id)
    with Image.open(io.BytesIO(base64.b64decode(record["data"]))) as file:
        pixels = np.asarray(file.convert("RGB"))
    height, width = pixels.shape[:2]
    every = [a for a in body["annotations"] if a["image_id"] == image_id]
    anns = [a for a in every if not a.get("iscrowd", 0)]
    crowd = [a for a in every if a.get("iscrowd", 0)]

    def boxes(group):
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in group)], np.float64)
        return np.clip(xyxy.reshape(-1, 4), 0, [width, height, width, height])

    def stack(group):
        return np.array([_mask(a["segmentation"], height, width) for a in group], np.uint8).reshape(
            len(group), height, width)

    sample = {
        "image": pixels,
        "boxes": boxes(anns),
        "labels": np.array([a["category_id"] for a in anns], np.int64),
        "ann_id": np.array([a["id"] for a in anns], np.int64),
        "crowd_boxes": boxes(crowd),
        "crowd_ann_id": np.array([a["id"] for a in crowd], np.int64),
    }
    if masks:
        sample["masks"] = stack(anns)
        sample["crowd_masks"] = stack(crowd)
    return sample


def check_against_core(body: dict, answer: dict, recipe_name: Any, masks: bool = False) -> int:
    """Every output image, box, weight, mask and drop equals detmix's for the answer's params."""
    recipe = load_recipe(recipe_name)
    boxes_checked = 0
    for image in answer["images"]:
        mix = image["mix"]
        a = core_sample(body, mix["image_id"], masks)
        b = core_sample(body, mix["partner_id"], masks)
        out = mix_pair(a, b, MixParams.from_dict(mix["params"]), recipe, box_keys=("ann_id",))
        if image["format"] == "png":
            np.testing.assert_array_equal(decode(image), out["image"])
        assert (image["height"], image["width"]) == out["image"].shape[:2]
        every = [ann for ann in answer["annotations"] if ann["image_id"] == image["id"]]
        got = [ann for ann in every if not ann["iscrowd"]]
        crowd = [ann for ann in every if ann["iscrowd"]]
        # crowd regions: never targets (no mix_weight), mixed and boxed as the core does
        assert len(crowd) == len(out["crowd_boxes"])
        for k, ann in enumerate(crowd):
            x1, y1, x2, y2 = out["crowd_boxes"][k]
            np.testing.assert_allclose(ann["bbox"], [x1, y1, x2 - x1, y2 - y1], rtol=0, atol=1e-9)
            assert ann["iscrowd"] == 1 and "mix_weight" not in ann
            side = int(out["crowd_source"][k])
            source = (mix["image_id"], mix["partner_id"])[side]
            expected_id = int((a, b)[side]["crowd_ann_id"][int(out["crowd_index"][k])])
            assert (ann["source_image_id"], ann["source_annotation_id"]) == (source, expected_id)
            if masks:
                np.testing.assert_array_equal(decode_rle(ann["segmentation"]), out["crowd_masks"][k])
        assert len(got) == len(out["boxes"])
        for k, ann in enumerate(got):
            x1, y1, x2, y2 = out["boxes"][k]
            np.testing.assert_allclose(ann["bbox"], [x1, y1, x2 - x1, y2 - y1], rtol=0, atol=1e-9)
            assert ann["mix_weight"] == pytest.approx(float(out["weights"][k]), abs=1e-12)
            source = (mix["image_id"], mix["partner_id"])[int(out["source"][k])]
            assert (ann["source_image_id"], ann["source_annotation_id"]) == (source, int(out["ann_id"][k]))
            assert ann["category_id"] == int(out["labels"][k])
            if masks:
                np.testing.assert_array_equal(decode_rle(ann["segmentation"]), out["masks"][k])
                assert ann["area"] == out["masks"][k].sum()
            else:
                assert "segmentation" not in ann and ann["area"] == pytest.approx((x2 - x1) * (y2 - y1))
            boxes_checked += 1
        dropped = [d for d in answer["dropped"] if d["image_id"] == image["id"]]
        expected = []
        lost = out["dropped"]
        for source, row, visibility, reason in zip(lost["source"], lost["index"], lost["visibility"], lost["reason"]):
            if mix["params"]["mode"] == "none" and source == 1:
                continue  # a batch of one: nothing of the partner was in play
            origin = (a, b)[int(source)]
            expected.append({
                "image_id": image["id"],
                "source_image_id": (mix["image_id"], mix["partner_id"])[int(source)],
                "source_annotation_id": int(origin["ann_id"][row]),
                "category_id": int(origin["labels"][row]),
                "visibility": pytest.approx(float(visibility), abs=1e-12),
                "reason": DropReason(int(reason)).name.lower(),
            })
        assert dropped == expected
    return boxes_checked




def _mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, dict):
        rle = segmentation
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, height, width)
        return decode_rle(rle)
    return decode_rle(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))


def error_locs(response: httpx.Response) -> list[list[Any]]:
    return [item["loc"] for item in response.json()["detail"]]


def error_text(response: httpx.Response) -> str:
    return " | ".join(item["msg"] for item in response.json()["detail"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A ``python -m detmix_service`` process on a loopback port."""

    process: subprocess.Popen
    url: str
    tmpdir: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise


def wait_ready(url: str, process: subprocess.Popen, output: Callable[[], str], timeout: float = 30.0) -> None:
    """Until ``url``'s ``/readyz`` answers 200; fails with ``output()`` (the server's log) if the
    process exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{output()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not get ready in {timeout} s:\n{output()}")
        time.sleep(0.1)


@contextlib.contextmanager
def live_server(workdir: Path, settings: dict[str, Any], startup_timeout: float = 30.0,
                preexec_fn: Callable[[], None] | None = None) -> Iterator[LiveServer]:
    """Start a server with ``settings`` (written as a YAML file), wait for /healthz, and stop it
    (SIGTERM, then SIGKILL) when done. Its temporary folder is ``workdir/tmp``; ``preexec_fn``
    runs in the child before the server starts (resource limits)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (tmpdir := workdir / "tmp").mkdir(exist_ok=True)
    settings_file = workdir / "settings.yaml"
    settings_file.write_text(yaml.safe_dump({k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETMIX_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SERVICE_ROOT), env.get("PYTHONPATH")]))
    env["TMPDIR"] = str(tmpdir)
    log = workdir / "server.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "detmix_service", "--host", "127.0.0.1", "--port", str(port),
             "--settings", str(settings_file)],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=workdir, preexec_fn=preexec_fn,
        )
    server = LiveServer(process, f"http://127.0.0.1:{port}", tmpdir, log)
    try:
        wait_ready(server.url, process, server.output, startup_timeout)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


class RawRequest:
    """An HTTP/1.1 request over a plain socket, so that a test can send its body slowly, stop
    halfway or hang up while the server works."""

    def __init__(self, url: str, method: str, path: str, body: bytes, content_type: str = "application/json") -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        self.body = body
        self.sent = 0

    def send(self, upto: int | None = None) -> None:
        """Send the head (first time) and the body up to byte ``upto`` (default: all of it)."""
        if self.head:
            self.sock.sendall(self.head)
            self.head = b""
        upto = len(self.body) if upto is None else upto
        self.sock.sendall(self.body[self.sent:upto])
        self.sent = upto

    def response(self) -> tuple[int, dict[str, str], bytes]:
        data = b""
        while chunk := self.sock.recv(1 << 16):
            data += chunk
        self.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body

    def close(self) -> None:
        self.sock.close()


# -- live servers: what the tests on a real socket look at ------------------------------------


def in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^detmix_batches_in_flight (\S+)$", text, re.M).group(1))


def uploads(url: str) -> float:
    """Batch bodies the server is receiving (not yet admitted as batches)."""
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^detmix_uploads_in_progress (\S+)$", text, re.M).group(1))


def wait_until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def assert_clean_log(server) -> None:
    log = server.output()
    assert "Traceback" not in log and "Exception in ASGI application" not in log
    assert not re.search(r'" 500\b', log), log


def temp_files_open(server) -> list[str]:
    """The server's open files in its temporary folder (unlinked ones included)."""
    fds = Path(f"/proc/{server.process.pid}/fd")
    targets = []
    for fd in fds.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue
    return [t for t in targets if t.startswith(str(server.tmpdir))]


# -- the server's memory and CPU, from /proc --------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def peak_rss(pid: int) -> Iterator[dict[str, float]]:
    """The peak RSS of process ``pid`` above its RSS at entry, in MiB (``VmHWM``, reset through
    ``clear_refs`` at entry), and the CPU seconds it spent, both filled in at exit."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before, cpu = _status_kib(pid, "VmRSS"), cpu_seconds(pid)
    found: dict[str, float] = {}
    yield found
    found["peak_mib"] = (_status_kib(pid, "VmHWM") - before) / 1024
    found["cpu_s"] = cpu_seconds(pid) - cpu

