"""Memory and CPU of one batch on a real server: the figures behind the service's memory budget.

    .venv/bin/python bench/service_budget.py                 # the default settings (the budget on)
    .venv/bin/python bench/service_budget.py --budget 1099511627776 --out bench/results/service-budget-off.json

Starts ``python -m detmix_service`` on a free 127.0.0.1 port (one worker thread, the embedded
synthetic dataset in a temporary folder) and sends it, one at a time, the requests of
``docs/service.md``'s table: the largest batches of each kind that the budget lets through and the
hostile ones of issue 13. For each it reads, from ``/proc/PID``, the server's peak RSS above its
RSS before the request (``VmHWM``, reset through ``clear_refs`` before each request) and the CPU
seconds the server spent (``utime + stime``), and prints them with the status and the error type.
With ``--budget`` set far above the default, the same requests show what each kind costs unbounded:
the per-unit prices of :mod:`detmix_service.budget` are upper bounds of these.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.service.servicekit import live_server  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(pid: int, url: str, path: str, body: bytes, timeout: float = 300.0) -> dict:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before, _ = rss_kib(pid)
    cpu = cpu_s(pid)
    start = time.monotonic()
    response = httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=timeout)
    wall = time.monotonic() - start
    time.sleep(0.2)  # the worker thread is done before the answer; let the loop settle
    _, peak = rss_kib(pid)
    detail = response.json().get("detail") if response.status_code != 200 else None
    return {"status": response.status_code, "type": detail[0]["type"] if detail else None,
            "msg": detail[0]["msg"][:160] if detail else None,
            "body_mib": round(len(body) / 2**20, 2), "peak_mib": round((peak - before) / 1024, 1),
            "cpu_s": round(cpu_s(pid) - cpu, 2), "wall_s": round(wall, 2)}


def png(height: int, width: int, seed: int) -> str:
    """A smooth picture (it compresses, so that large images fit the body limit)."""
    y, x = np.mgrid[:height, :width]
    pixels = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                       np.full_like(x, 40 * seed % 256)], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode()


def batch(n: int, side: int, anns: int = 0, segmentation=None, recipe: str = "deit", fmt: str = "png") -> dict:
    images, annotations = [], []
    for i in range(1, n + 1):
        images.append({"id": i, "width": side, "height": side, "data": png(side, side, i)})
        for k in range(anns):
            ann = {"id": i * 100_000 + k, "image_id": i, "category_id": 1,
                   "bbox": [k % max(side - 20, 1), 5.0, 10.0, 10.0]}
            if segmentation is not None:
                ann["segmentation"] = segmentation(i, k, side)
            annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}],
            "recipe": recipe, "seed": 0, "output": {"format": fmt}}


def square(i: int, k: int, side: int) -> list:
    x = float(k % max(side - 20, 1))
    return [[x, 5.0, x + 10, 5.0, x + 10, 15.0, x, 15.0]]


def long_polygon(points: int, digits: bool = False):
    """A polygon of ``points`` points: a circle, or (``digits``) one-digit coordinates, as short
    in JSON as a number can be."""
    def make(i: int, k: int, side: int) -> list:
        if digits:
            return [[float(1 + (j % 8)) for j in range(2 * points)]]
        t = np.linspace(0, 2 * np.pi, points, endpoint=False)
        xy = np.stack([side / 2 + side / 3 * np.cos(t), side / 2 + side / 3 * np.sin(t)], 1).ravel()
        return [np.round(xy, 2).tolist()]
    return make


def noise_rle(side: int):
    from detmix.rle import encode_rle

    mask = np.random.default_rng(0).random((side, side)) < 0.5
    rle = encode_rle(mask)
    return lambda i, k, s: rle


CASES = {
    # name: (path, body factory)
    "issue 13.1: RLE string of 80 KB on 8x8": ("/v1/mix", lambda: dumps(
        {**batch(1, 8), "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8],
                                          "segmentation": {"size": [8, 8], "counts": "o" * 80_000 + "0"}}]})),
    "issue 13.2: 40,000 boxes on one image": ("/v1/mix", lambda: dumps(batch(1, 64, anns=40_000))),
    "issue 13.2: 32 images x 1,000 boxes (valid)": ("/v1/mix", lambda: dumps(batch(32, 64, anns=1000))),
    "issue 13.8: 150 polygons x 200,000 numbers": ("/v1/mix", lambda: dumps(
        batch(1, 1024, anns=150, segmentation=long_polygon(100_000, digits=True))).replace(".0", "")),
    "polygons: 2 x 1024^2, 4 x 100,000 points": ("/v1/mix", lambda: dumps(
        batch(2, 1024, anns=4, segmentation=long_polygon(100_000)))),
    "RLE strings: 2 x 1024^2 noise masks": ("/v1/mix", lambda: dumps(batch(2, 1024, anns=1, segmentation=noise_rle(1024)))),
    "RLE strings: 2 x 2048^2 noise masks": ("/v1/mix", lambda: dumps(batch(2, 2048, anns=1, segmentation=noise_rle(2048)))),
    "issue 13.8: 2 x 4096^2, 32 masks (png)": ("/v1/mix", lambda: dumps(batch(2, 4096, anns=16, segmentation=square))),
    "masks: 2 x 2048^2, 32 masks (png)": ("/v1/mix", lambda: dumps(batch(2, 2048, anns=16, segmentation=square))),
    "images: 2 x 4096^2 mixup (jpeg)": ("/v1/mix", lambda: dumps(batch(2, 4096, recipe="mixup", fmt="jpeg"))),
    "images: 2 x 2896^2 mixup (png)": ("/v1/mix", lambda: dumps(batch(2, 2896, recipe="mixup"))),
    "images: 32 x 640^2, 10 masks each (deit)": ("/v1/mix", lambda: dumps(batch(32, 640, anns=10, segmentation=square))),
    # The largest of each kind that the default budget (1 GiB) lets through.
    "edge: masks, 2 x 2048^2, 48 masks": ("/v1/mix", lambda: dumps(batch(2, 2048, anns=24, segmentation=square))),
    "edge: masks, 2 x 2048^2, 60 masks (refused)": ("/v1/mix", lambda: dumps(batch(2, 2048, anns=30, segmentation=square))),
    "edge: polygons, 2 x 1024^2, 30 x 100,000 points": ("/v1/mix", lambda: dumps(
        batch(2, 1024, anns=15, segmentation=long_polygon(100_000)))),
    "edge: boxes, 32 x 64^2 x 1,000": ("/v1/mix", lambda: dumps(batch(32, 64, anns=1000, recipe="cutmix"))),
    "dataset: synthetic, 32 images": ("/v1/datasets/synthetic/batch", lambda: dumps({"batch_size": 32, "seed": 0})),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, help="max_batch_memory_bytes (default: the service's default)")
    parser.add_argument("--only", help="run the cases whose name holds this text")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "service-budget.json")
    args = parser.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"data_dir": str(Path(tmp) / "data"), "worker_threads": 1, "request_timeout_s": 600,
                    "log_level": "warning"}
        if args.budget:
            settings["max_batch_memory_bytes"] = args.budget
            settings["max_mask_pixels"] = 2**34
        for n, (name, (path, make)) in enumerate(CASES.items()):
            if args.only and args.only not in name:
                continue
            body = make().encode()
            # A fresh server for each request: memory freed by an earlier one stays in the
            # allocator's arenas and would hide this one's peak.
            with live_server(Path(tmp) / f"server-{n}", settings, startup_timeout=120) as server:
                rows[name] = row = measure(server.process.pid, server.url, path, body)
                row["idle_rss_mib"] = round(rss_kib(server.process.pid)[0] / 1024)
                server.stop()
            print(f"{name:48} {row['status']} {row['type'] or '':14} body {row['body_mib']:7.2f} MiB  "
                  f"peak +{row['peak_mib']:7.1f} MiB  cpu {row['cpu_s']:6.2f} s  wall {row['wall_s']:6.2f} s")
            if row["msg"]:
                print("    ", row["msg"])
    machine = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in machine.splitlines() if line.startswith("Model name")), "")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": f"{os.cpu_count()} x {model}", "python": platform.python_version(),
                                    "budget": args.budget, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
