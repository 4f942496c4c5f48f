"""The service as users start it and its HTTP edges over a real socket: the ``detmix serve``
console script with worker processes, ``make run``, the body-size limit (declared and chunked),
the upload deadline (JSON and multipart), and the async client against the sync one."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import anyio
import httpx
import numpy as np
import pytest
import yaml

from detmix.client import AsyncDetmixClient, DetmixClient
from .servicekit import (RawRequest, assert_clean_log, check_against_core, coco_batch, free_port, in_flight, live_server,
                         temp_files_open, uploads, wait_ready, wait_until)

REPO = Path(__file__).resolve().parents[2]
LIMIT = 4 * 2**20  # max_body_bytes of the strict server: above 1 MiB, so an upload can spool to disk
TIMEOUT_S = 2.0  # request_timeout_s of the strict server


# -- helpers ---------------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process, None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2])


def _processes() -> dict[int, tuple[str, int, int]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            found[int(entry.name)] = stat
    return found


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _children(pid: int) -> list[int]:
    return sorted(p for p, (state, ppid, _) in _processes().items() if ppid == pid and state != "Z")


def _group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    return sorted(p for p, (state, _, pgrp) in _processes().items() if pgrp == pgid and state != "Z")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no DETMIX_* settings, no PYTHONPATH pointing at the
    sources (the installed package must do), no make of an enclosing ``make test``."""
    drop = ("DETMIX_", "PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    wait_ready(url, process, lambda: log.read_text(errors="replace"), timeout)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group led by ``process`` (its session)."""
    if _group(process.pid) or process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if process.poll() is None:
        process.wait(10)


def _log_of(path: Path) -> SimpleNamespace:
    return SimpleNamespace(output=lambda: path.read_text(errors="replace"))


def _rejections(url: str, reason: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf'^detmix_rejections_total\{{reason="{reason}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    data = b""
    while chunk := sock.recv(1 << 16):
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
    return int(lines[0].split()[1]), headers, json.loads(body)


def _multipart(body: dict, file_bytes: bytes, boundary: str = "detmixboundary") -> bytes:
    request = {k: v for k, v in body.items() if k != "images"}
    request["images"] = [{"id": 1, "width": 40, "height": 30, "file_name": "a.png"}]
    return (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n{json.dumps(request)}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + file_bytes + f"\r\n--{boundary}--\r\n".encode()


# -- servers ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def strict(tmp_path_factory, data_dir):
    """A server with a small body limit and a short deadline."""
    settings = {"data_dir": data_dir, "max_body_bytes": LIMIT, "request_timeout_s": TIMEOUT_S, "max_in_flight": 2,
                "worker_threads": 1}
    with live_server(tmp_path_factory.mktemp("strict"), settings) as live:
        yield live
        assert live.stop() == 0
    assert_clean_log(live)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, data_dir):
    with live_server(tmp_path_factory.mktemp("plain"), {"data_dir": data_dir, "worker_threads": 2}) as live:
        yield live
        assert live.stop() == 0
    assert_clean_log(live)


# -- 1. detmix serve, the console script, with two workers -----------------------------------------

def test_detmix_serve_console_script_with_two_workers(tmp_path, data_dir):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"detmix": "detmix.cli:main"}
    script = Path(sys.executable).with_name("detmix")  # what pip installed for [project.scripts]
    assert script.is_file() and os.access(script, os.X_OK), script
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"data_dir": str(data_dir), "worker_threads": 1, "max_in_flight": 2}))
    (tmpdir := tmp_path / "tmp").mkdir()
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as sink:
        manager = subprocess.Popen(
            [str(script), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
             "--settings", str(settings)],
            stdout=sink, stderr=subprocess.STDOUT, env=_clean_env(TMPDIR=str(tmpdir)), cwd=tmp_path,
            start_new_session=True,
        )
    try:
        _wait_ready(url, manager, log)
        wait_until(lambda: len([p for p in _children(manager.pid) if "spawn_main" in _cmdline(p)]) == 2)
        workers = [p for p in _children(manager.pid) if "spawn_main" in _cmdline(p)]
        body = coco_batch(2)
        answer = httpx.post(f"{url}/v1/mix", json={**body, "output": {"format": "png"}}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert check_against_core(body, answer.json(), "deit") > 0
        # Each worker logged its start with its own pid; the manager has no server of its own.
        logged = r"Started server process \[(\d+)\]"
        wait_until(lambda: {int(p) for p in re.findall(logged, log.read_text())} == set(workers))
        assert f"Started parent process [{manager.pid}]" in log.read_text()
        everything = _group(manager.pid)  # manager, workers, multiprocessing's resource tracker
        assert set(workers) | {manager.pid} <= set(everything)

        manager.send_signal(signal.SIGTERM)
        assert manager.wait(30) == 0
        wait_until(lambda: not any(_alive(p) for p in everything), timeout=10)
        assert _group(manager.pid) == []
    finally:
        _kill_group(manager)
    text = log.read_text()
    assert "Received SIGTERM" in text and all(f"Waiting for child process [{p}]" in text for p in workers)
    assert_clean_log(_log_of(log))


@pytest.mark.parametrize("workers", [1, 2])
def test_detmix_serve_exits_3_when_the_app_cannot_start(tmp_path, data_dir, workers):
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"data_dir": str(data_dir), "datasets": {
        "broken": {"annotations": str(tmp_path / "missing.json"), "images": str(tmp_path)}}}))
    log = tmp_path / "server.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("detmix")), "serve", "--host", "127.0.0.1", "--port",
             str(free_port()), "--workers", str(workers), "--settings", str(settings)],
            stdout=sink, stderr=subprocess.STDOUT, env=_clean_env(), cwd=tmp_path, start_new_session=True,
        )
    try:
        code = process.wait(60)
        wait_until(lambda: _group(process.pid) == [], timeout=10)
    finally:
        _kill_group(process)
    text = log.read_text(errors="replace")
    assert "dataset 'broken'" in text and "cannot be loaded" in text, text
    assert code == 3, text


# -- 2. the body limit on a real socket ------------------------------------------------------------

def test_a_declared_content_length_over_the_limit_is_refused_before_the_body(strict):
    before = _rejections(strict.url, "body_too_large")
    request = RawRequest(strict.url, "POST", "/v1/mix", b"{" * (LIMIT + 1))
    request.sock.settimeout(10)  # a server waiting for the body would time this out
    request.send(0)  # the head only: not one byte of the body
    status, headers, answer = request.response()
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(answer) == {"detail": [{
        "loc": ["body"], "type": "body_too_large",
        "msg": f"the body is {LIMIT + 1} bytes (Content-Length), more than the limit of {LIMIT} bytes"}]}
    assert _rejections(strict.url, "body_too_large") == before + 1
    assert in_flight(strict.url) == 0  # refused before the route: never admitted
    assert httpx.get(f"{strict.url}/healthz").status_code == 200


def test_a_chunked_body_past_the_limit_is_refused_as_it_streams(strict):
    before = _rejections(strict.url, "body_too_large")
    chunk = b" " * 2**16
    sock = socket.create_connection(("127.0.0.1", int(strict.url.rsplit(":", 1)[1])), timeout=10)
    sock.sendall(b"POST /v1/mix HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    sent = 0
    while sent <= LIMIT:  # never the terminating chunk: the answer must not wait for the end
        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sent += len(chunk)
    # The first chunk past the limit is answered, the rest of the body unsent.
    assert select.select([sock], [], [], 10)[0], f"no answer after {sent} bytes, over the limit of {LIMIT}"
    status, headers, answer = _read_answer(sock)
    assert status == 413 and headers["connection"] == "close"
    assert answer["detail"][0]["loc"] == ["body"] and answer["detail"][0]["type"] == "body_too_large"
    assert answer["detail"][0]["msg"] == f"the body is longer than the limit of {LIMIT} bytes"
    assert _rejections(strict.url, "body_too_large") == before + 1
    wait_until(lambda: in_flight(strict.url) == 0)
    assert httpx.get(f"{strict.url}/healthz").status_code == 200
    ok = httpx.post(f"{strict.url}/v1/mix", json=coco_batch(2), timeout=30)  # and still mixes
    assert ok.status_code == 200 and len(ok.json()["images"]) == 2


# -- 3. the upload deadline ------------------------------------------------------------------------

def _stall_and_expect_504(server, request: RawRequest, upto: int, spooled: bool = False) -> None:
    before = _rejections(server.url, "deadline_exceeded")
    request.sock.settimeout(TIMEOUT_S + 10)
    start = time.monotonic()
    request.send(upto)  # the head and part of the body, then nothing
    wait_until(lambda: uploads(server.url) == 1)
    assert in_flight(server.url) == 0  # a batch is admitted once its body is in
    if spooled:
        wait_until(lambda: temp_files_open(server), timeout=TIMEOUT_S)  # the upload went into a temporary file
    status, _, answer = request.response()
    elapsed = time.monotonic() - start
    assert status == 504, answer
    assert json.loads(answer) == {"detail": [{
        "loc": [], "type": "deadline_exceeded",
        "msg": f"the body did not arrive within the deadline of {TIMEOUT_S:g} s"}]}
    assert TIMEOUT_S - 0.1 <= elapsed < TIMEOUT_S + 5, elapsed  # at the deadline, not before; the socket waits 10 s more
    assert _rejections(server.url, "deadline_exceeded") == before + 1
    wait_until(lambda: uploads(server.url) == 0)
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_json_upload_that_stalls_gets_504_at_the_deadline(strict):
    body = json.dumps(coco_batch(2)).encode()
    _stall_and_expect_504(strict, RawRequest(strict.url, "POST", "/v1/mix", body), len(body) // 2)


def test_a_multipart_upload_that_stalls_gets_504_and_leaves_no_temp_files(strict):
    big = np.random.default_rng(3).integers(0, 256, 5 * 2**19, dtype=np.uint8).tobytes()  # 2.5 MiB, spooled to disk
    body = _multipart(coco_batch(1), big)
    assert len(body) < LIMIT
    request = RawRequest(strict.url, "POST", "/v1/mix", body, "multipart/form-data; boundary=detmixboundary")
    _stall_and_expect_504(strict, request, 2 * 2**20, spooled=True)
    wait_until(lambda: not temp_files_open(strict), timeout=5)
    assert list(strict.tmpdir.iterdir()) == []


# -- 4. the async client answers as the sync one ---------------------------------------------------

def test_async_client_mix_equals_sync_client_mix(plain):
    body = coco_batch(3, masks=True)
    images = [base64.b64decode(record["data"]) for record in body["images"]]  # the encoded PNGs, sent as they are
    coco = {"images": [{"id": r["id"]} for r in body["images"]], "annotations": body["annotations"],
            "categories": body["categories"]}
    with DetmixClient(plain.url) as client:
        expected = client.mix(images, coco, recipe="deit", seed=11, output_format="png")
    assert check_against_core(body, expected.answer, "deit", masks=True) > 0

    async def main() -> list:
        results: list = [None] * 3
        async with AsyncDetmixClient(plain.url) as client:
            async def one(k: int) -> None:
                results[k] = await client.mix(images, coco, recipe="deit", seed=11, output_format="png")

            async with anyio.create_task_group() as group:  # three at once, on one client
                for k in range(3):
                    group.start_soon(one, k)
        return results

    for got in anyio.run(main):
        assert got.seed == expected.seed == 11 and got.params == expected.params
        assert len(got.images) == len(expected.images) == 3
        for image, target, want_image, want in zip(got.images, got.targets, expected.images, expected.targets,
                                                   strict=True):
            np.testing.assert_array_equal(image, want_image)
            assert target.keys() == want.keys() and "masks" in target
            for key in ("boxes", "labels", "weights", "area", "iscrowd", "source_image_id", "source_annotation_id",
                        "masks"):
                np.testing.assert_array_equal(target[key], want[key])
            assert (target["image_id"], target["dropped"]) == (want["image_id"], want["dropped"])


# -- 5. make run -----------------------------------------------------------------------------------

def test_make_run_serves_the_embedded_dataset(tmp_path, data_dir):
    make = shutil.which("make")
    assert make, "make runs the README's commands: it must be installed"
    if not (REPO / ".venv" / ".run-deps").exists():
        pytest.skip("make run would create .venv and install packages (no .venv/.run-deps): needs the network")
    port = free_port()
    (tmpdir := tmp_path / "tmp").mkdir()
    env = _clean_env(DETMIX_DATA_DIR=str(data_dir), TMPDIR=str(tmpdir))
    plan = subprocess.run([make, "-n", "run", "HOST=127.0.0.1", f"PORT={port}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)
    assert plan.returncode == 0, plan.stderr
    if "pip" in plan.stdout:
        pytest.skip("make run would reinstall packages (.venv/.run-deps older than pyproject.toml): needs the network")
    url, log = f"http://127.0.0.1:{port}", tmp_path / "make.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([make, "run", "HOST=127.0.0.1", f"PORT={port}"], cwd=REPO, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(url, process, log)
        assert f"{url}/ (playground), {url}/docs (API)" in log.read_text()
        page = httpx.get(f"{url}/", timeout=10)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert [d["name"] for d in httpx.get(f"{url}/v1/datasets").json()] == ["synthetic"]
        servers = [p for p in _children(process.pid) if "detmix serve" in _cmdline(p)]
        assert len(servers) == 1, [_cmdline(p) for p in _children(process.pid)]
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        wait_until(lambda: _group(process.pid) == [], timeout=10)
    finally:
        _kill_group(process)
    text = log.read_text(errors="replace")
    assert "Finished server process" in text, text  # the server shut down, it was not killed
    assert_clean_log(_log_of(log))
