"""Per-sample speed of the core: detmix.functional on one pair at a time, on the CPU.

Compared in the same run, on the same 640x640 uint8 images with ~10 boxes each:
* ``copy``: ``numpy.copyto`` of one image's bytes, the memory bound of any mix (it must write
  a whole output image);
* ``pixels only``: the image kernel alone (what a classification CutMix/MixUp costs);
* ``detmix``: the full call with box rules (and with 640x640 instance masks);
for numpy arrays and for torch CPU tensors. Medians of repeated runs; figures go to
``bench/results/core-cpu.json``.

    python bench/bench_core.py [--repeats 50] [--out bench/results/core-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from detmix import functional as F


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _sample(rng, size, n, masks):
    xy = rng.uniform(0, size - 80, (n, 2))
    wh = rng.uniform(20, 80, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    s = {"image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "boxes": boxes,
         "labels": rng.integers(1, 80, n).astype(np.int64)}
    if masks:
        m = np.zeros((n, size, size), np.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
            m[k, y1:y2, x1:x2] = 1
        s["masks"] = m
    return s


def _torch(sample):
    import torch

    out = {k: torch.from_numpy(v) for k, v in sample.items()}
    out["image"] = out["image"].permute(2, 0, 1).contiguous()
    return out


def run(repeats: int, size: int = 640, boxes: int = 10) -> dict:
    rng = np.random.default_rng(0)
    cut = (160, 120, 480, 440)
    rows = []
    for masks in (False, True):
        a, b = _sample(rng, size, boxes, masks), _sample(rng, size, boxes, masks)
        kinds = [("numpy", a, b)]
        try:
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            kinds.append(("torch-cpu", _torch(a), _torch(b)))
        except ImportError:  # torch is an optional extra
            pass
        for kind, sa, sb in kinds:
            if kind == "numpy":
                dst = np.empty_like(sa["image"])
                copy = lambda: np.copyto(dst, sa["image"])  # noqa: E731
                layout = "HWC"
            else:
                dst = sa["image"].clone()
                copy = lambda: dst.copy_(sa["image"])  # noqa: E731
                layout = "CHW"
            label = f"{kind}{' +masks' if masks else ''}"
            rows += [
                {"case": label, "what": "copy (bound)", "ms": _median_ms(copy, repeats)},
                {"case": label, "what": "cutmix pixels only", "ms": _median_ms(
                    lambda: F.cutmix_image(sa["image"], sb["image"], cut, layout), repeats)},
                {"case": label, "what": "detmix cutmix", "ms": _median_ms(lambda: F.cutmix(sa, sb, cut), repeats)},
                {"case": label, "what": "mixup pixels only", "ms": _median_ms(
                    lambda: F.mixup_image(sa["image"], sb["image"], 0.4), repeats)},
                {"case": label, "what": "detmix mixup", "ms": _median_ms(lambda: F.mixup(sa, sb, 0.4), repeats)},
            ]
    for row in rows:
        bound = next(r["ms"] for r in rows if r["case"] == row["case"] and r["what"] == "copy (bound)")
        row["x_copy"] = row["ms"] / bound
        row["images_per_s"] = 1e3 / row["ms"]
    return {
        "benchmark": "core per-sample, CPU",
        "image": f"{size}x{size}x3 uint8",
        "boxes_per_image": boxes,
        "repeats": repeats,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "torch": getattr(sys.modules.get("torch"), "__version__", None)},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "core-cpu.json")
    args = parser.parse_args()
    result = run(args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{'case':<18} {'what':<20} {'ms':>8} {'img/s':>8} {'x copy':>7}")
    for r in result["rows"]:
        print(f"{r['case']:<18} {r['what']:<20} {r['ms']:8.3f} {r['images_per_s']:8.0f} {r['x_copy']:7.1f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
