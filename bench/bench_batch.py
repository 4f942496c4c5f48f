"""Throughput of detmix.torch.BatchMix against the alternatives, measured in one run.

    python bench/bench_batch.py                       # CUDA if available, else CPU
    python bench/bench_batch.py --device cpu --repeats 3
    python bench/bench_batch.py --device cuda --batch 32 --size 640 --out bench/results/batch-cuda.json

For each image dtype (uint8 and float32 by default) on a batch of ``--batch`` images of
``--size`` x ``--size`` with ``--boxes`` boxes each, it times (median of ``--repeats`` runs
after ``--warmup``, with the device synchronised around each run; the cases run round-robin so
that a change of machine load weighs on all of them alike):

* ``copy``: ``images.clone()``, the memory-bandwidth bound: it reads and writes the batch once
  (bandwidth = 2 * bytes / time). Mixing reads two images and writes one, so a mix at the copy
  bound is "1.0x copy"; MixUp cannot go below 1.5x (it reads every pixel of both images). A
  ``copy_`` into a preallocated tensor is timed too: on the CPU, ``clone`` also pays for
  page-faulting its fresh output, which CUDA's caching allocator avoids.
* ``BatchMix cutmix`` / ``mixup`` (``per="batch"``, timm's mode) and ``BatchMix deit``
  (``per="pair"``: CutMix and MixUp pairs in one batch), images and boxes;
* ``loop ...``: the same parameters applied pair by pair with ``detmix.apply_params`` (the
  per-sample ``detmix.functional.cutmix`` / ``mixup`` calls a Dataset-level transform makes);
* ``pixels only``: the gather of the partners and ``detmix.functional.cutmix_image`` /
  ``mixup_image`` on the batch, as BatchMix calls them: what is left once host work is removed;
* ``torchvision v2.CutMix`` / ``v2.MixUp``: image-only (no boxes), on the same batch.

Prints a table and writes a JSON file with the figures, the machine, versions and date.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torchvision
from torchvision.transforms import v2

from detmix import apply_params
from detmix import functional as F
from detmix.torch import BatchMix

RECIPES: dict[str, tuple[dict[str, Any], str]] = {
    "cutmix": ({"name": "cutmix", "cutmix": {"alpha": 1.0}}, "batch"),
    "mixup": ({"name": "mixup", "mixup": {"alpha": 1.5}}, "batch"),
    "deit": ("deit", "pair"),
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... or auto (cuda when available)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--size", type=int, default=640, help="height and width of every image")
    parser.add_argument("--boxes", type=int, default=10, help="boxes per image")
    parser.add_argument("--dtypes", default="uint8,float32", help="comma-separated image dtypes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    parser.add_argument("--no-loop", action="store_true", help="skip the per-sample loop (the slowest rows)")
    parser.add_argument("--masks", action="store_true", help="give every box an instance mask (BatchMix only)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file (default bench/results/batch-<device>.json)")
    return parser


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or None,
        "device": str(device),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def make_batch(args: argparse.Namespace, dtype: torch.dtype, device: torch.device):
    rng = np.random.default_rng(args.seed)
    size, n = args.size, args.boxes
    pixels = torch.from_numpy(rng.integers(0, 256, (args.batch, 3, size, size), dtype=np.uint8))
    images = (pixels if dtype == torch.uint8 else pixels.to(dtype) / 255).to(device)
    targets = []
    for i in range(args.batch):
        xy = rng.uniform(0, size - 8, (n, 2))
        wh = rng.uniform(4, size / 3, (n, 2))
        boxes = torch.tensor(np.concatenate([xy, np.minimum(xy + wh, size)], 1), dtype=torch.float32)
        target = {
            "boxes": boxes.to(device),
            "labels": torch.from_numpy(rng.integers(1, 91, n)).to(device),
            "area": ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).to(device),
            "iscrowd": torch.zeros(n, dtype=torch.int64, device=device),
            "image_id": i,
        }
        if args.masks:
            masks = torch.zeros(n, size, size, dtype=torch.uint8)
            for k, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
                masks[k, y1:y2, x1:x2] = 1
            target["masks"] = masks.to(device)
        targets.append(target)
    return images, targets


def timed(cases: list[tuple[str, Callable[[], Any]]], device: torch.device, repeats: int, warmup: int
          ) -> dict[str, list[float]]:
    """Times of every case, run round-robin (case 1, case 2, ..., case 1, ...) so that a change of
    machine load between repeats weighs on every case alike."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _, fn in cases:
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, fn in cases:
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # torchvision's v2.CutMix / v2.MixUp draw from the global generator
    info = machine(device)
    rows: list[dict[str, Any]] = []

    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        images, targets = make_batch(args, dtype, device)
        nbytes = images.numel() * images.element_size()
        buffer = torch.empty_like(images)
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("copy (clone)", images.clone),
            ("copy (copy_ into a preallocated tensor)", lambda: buffer.copy_(images)),
        ]
        notes = {
            "copy (clone)": "reads and writes the batch once: the bound",
            "copy (copy_ into a preallocated tensor)": "the same without allocating the output",
        }
        for recipe_name, (recipe, per) in RECIPES.items():
            mix = BatchMix(recipe, per=per, generator=torch.Generator().manual_seed(args.seed))
            cases.append((f"BatchMix {recipe_name} ({per})", lambda mix=mix: mix(images, targets)))
            if args.no_loop or args.masks:
                continue
            samples = [{"image": images[i], **targets[i]} for i in range(args.batch)]

            def loop(mix=mix, samples=samples):
                params = mix.make_params(args.batch, (args.size, args.size))
                partner = params.partner.tolist()
                return [apply_params(samples[i], samples[partner[i]], params.pair(i), mix.recipe)
                        for i in range(args.batch)]

            cases.append((f"loop {recipe_name} (per sample)", loop))
            notes[cases[-1][0]] = "detmix.apply_params pair by pair"

        # The pixel kernels alone, as BatchMix calls them on an accelerator (whole batch, partner
        # gather included): what is left once boxes and host work are removed.
        perm = torch.randperm(args.batch, device=device)
        cut = torch.tensor([[80, 80, 400, 400]], device=device).expand(args.batch, 4)
        lam = torch.full((args.batch, 1, 1, 1), 0.6, device=device)
        flat = images.reshape(args.batch, -1)

        def partner():
            return flat.index_select(0, perm).reshape(images.shape)

        cases.append(("pixels only: cutmix_image", lambda: F.cutmix_image(images, partner(), cut)))
        cases.append(("pixels only: mixup_image", lambda: F.mixup_image(images, partner(), lam)))
        labels = torch.arange(args.batch, device=device) % 80
        cutmix, mixup = v2.CutMix(num_classes=80), v2.MixUp(num_classes=80)
        cases.append(("torchvision v2.CutMix", lambda: cutmix(images, labels)))
        notes["torchvision v2.CutMix"] = "image only"
        if dtype.is_floating_point:
            cases.append(("torchvision v2.MixUp", lambda: mixup(images, labels)))
            notes["torchvision v2.MixUp"] = "image only"

        times = timed(cases, device, args.repeats, args.warmup)
        copy_s = statistics.median(times["copy (clone)"])
        for method, runs in times.items():
            median = statistics.median(runs)
            row = {"method": method, "dtype": name, "median_s": median, "times_s": runs,
                   "images_per_s": args.batch / median, "x_copy": median / copy_s, "note": notes.get(method, "")}
            if method.startswith("copy"):
                row.update(bytes=nbytes, bandwidth_gb_s=2 * nbytes / median / 1e9)
            rows.append(row)
            print(f"  {method:<40} {name:<8} {median * 1e3:9.2f} ms", file=sys.stderr, flush=True)
        if not dtype.is_floating_point:
            rows.append({"method": "torchvision v2.MixUp", "dtype": name, "median_s": None,
                         "note": "v2.MixUp does not take uint8 images"})
        del images, targets, buffer, cases

    if hasattr(os, "getloadavg"):
        info["load_average_end"] = list(os.getloadavg())  # other processes on the machine skew the figures
    result = {"machine": info, "config": vars(args), "results": rows}
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"batch-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(result))
    print(f"\nwritten to {out}")
    return result


def table(result: dict[str, Any]) -> str:
    info, config = result["machine"], result["config"]
    where = info.get("gpu") or f"{info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch threads)"
    load = info.get("load_average_start")
    if load and not info.get("gpu"):
        where += f", load average {load[0]:.1f} at the start"
    lines = [
        f"B={config['batch']} {config['size']}x{config['size']}, {config['boxes']} boxes/image"
        f"{', masks' if config['masks'] else ''} on {info['device']}: {where}; torch {info['torch']}, {info['date']}",
        "",
        "| method | dtype | median ms | images/s | x copy |",
        "|---|---|---:|---:|---:|",
    ]
    for row in result["results"]:
        if row["median_s"] is None:
            lines.append(f"| {row['method']} | {row['dtype']} | n/a | n/a | n/a ({row['note']}) |")
            continue
        extra = f" ({row['bandwidth_gb_s']:.1f} GB/s)" if "bandwidth_gb_s" in row else ""
        lines.append(
            f"| {row['method']} | {row['dtype']} | {row['median_s'] * 1e3:.1f} | {row['images_per_s']:.0f} | "
            f"{row['x_copy']:.2f}{extra} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
