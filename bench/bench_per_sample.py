"""Per-sample speed on the CPU: detmix's Albumentations transforms against the detection-mixing peers.

    .venv/bin/python bench/bench_per_sample.py [--repeats 100] [--images 8] [--out PATH]

One sample at a time, as a Dataset-level transform runs in a DataLoader worker, on ``--images``
coco-mini photographs resized to 640x640 (``detmix.align_pair(..., "resize")``: image bilinear,
boxes scaled, instance masks nearest), cycling through pairs of them. Timed in the same process,
round-robin (each round calls every case once, so a change of machine load weighs on all alike):

* ``numpy copy``: ``np.copyto`` of one 640x640x3 uint8 image into a preallocated array: the memory
  bound of any mix, which must write a whole output image (cache-warm, so optimistic);
* detmix ``BoxCutMix`` / ``BoxMixUp`` (``p=1``) in an ``A.Compose`` with
  ``BboxParams(format="pascal_voc", label_fields=["labels"])``, with boxes only and with boxes and
  instance masks (one per box); and ``detmix.functional.cutmix`` alone (no pipeline) for reference;
* Albumentations ``Mosaic`` (2x2 grid of 640 cells, 640x640 view, four images, boxes) in an
  ``A.Compose``: it reads four images where a CutMix reads two, so it is a neighbour, not a twin;
* Ultralytics ``CutMix`` / ``MixUp`` (``p=1``) called as YOLO's pipeline calls them, on
  ``{"img", "instances", "cls"}`` with a one-item dataset holding the partner. ``CutMix`` does
  nothing when none of its 3 random cuts avoids every box of the image: its median mixes calls that
  mixed and calls that did not; the share of calls that mixed is reported.

Each transform draws its own parameters (its own generator, or numpy's global one for Ultralytics,
seeded once). Figures: median, 10th and 90th percentile of ``--repeats`` calls after ``--warmup``,
calls per second, and ``x copy`` (median / copy median). Writes ``bench/results/per-sample-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, also when loaded by path
from _env import cpu_name, package_versions  # noqa: E402

os.environ.setdefault("YOLO_OFFLINE", "1")  # never let ultralytics reach the network
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # nor albumentations look for updates

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"
DEFAULT_OUT = REPO / "bench" / "results" / "per-sample-cpu.json"


def load_photographs(annotations: Path, images: Path, count: int, size: int) -> list[dict[str, Any]]:
    """The first ``count`` images with at least one box, resized to ``size`` x ``size``."""
    from detmix.align import align_pair
    from detmix.coco import CocoDetectionSource

    source = CocoDetectionSource(annotations, images, masks=True)
    canvas = {"image": np.zeros((size, size, 3), np.uint8), "boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}
    out = []
    for k in range(len(source)):
        raw = source[k]
        if not len(raw["boxes"]):
            continue
        sample = {"image": raw["image"], "boxes": raw["boxes"].astype(np.float64), "labels": raw["labels"],
                  "masks": raw["masks"]}
        _, resized = align_pair(canvas, sample, "resize")
        boxes = np.asarray(resized["boxes"], np.float64)
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        out.append({"image": np.ascontiguousarray(resized["image"]), "boxes": boxes[keep],
                    "labels": np.asarray(resized["labels"])[keep],
                    "masks": np.ascontiguousarray(resized["masks"][keep])})
        if len(out) == count:
            break
    if len(out) < 2:
        raise ValueError(f"need at least 2 images with boxes in {annotations}, got {len(out)}")
    return out


class Case:
    """One timed call: ``prepare(i)`` builds the i-th call's inputs untimed, ``call(inputs)`` is timed."""

    def __init__(self, name: str, what: str, prepare: Callable[[int], Any], call: Callable[[Any], Any],
                 note: str = "") -> None:
        self.name, self.what, self.note = name, what, note
        self.prepare, self.call = prepare, call
        self.times: list[float] = []
        self.results: list[Any] = []


def _item(sample: dict[str, Any], masks: bool) -> dict[str, Any]:
    item = {"image": sample["image"], "bboxes": sample["boxes"], "labels": sample["labels"]}
    if masks:
        item["masks"] = sample["masks"]
    return item


def build_cases(photos: Sequence[dict[str, Any]], seed: int, size: int) -> tuple[list[Case], list[str]]:
    """Every case whose library is installed, and the names of those that are not."""
    n = len(photos)
    pair = lambda i: (photos[i % n], photos[(i + 1) % n])  # noqa: E731
    missing: list[str] = []
    dst = np.empty_like(photos[0]["image"])
    cases = [Case("numpy copy", "np.copyto of one 640x640x3 uint8 image (memory bound)",
                  lambda i: photos[i % n]["image"],
                  lambda image: np.copyto(dst, image))]

    from detmix import functional as F

    for masks in (False, True):
        def prep_core(i: int, masks: bool = masks) -> tuple[dict, dict]:
            a, b = pair(i)
            keys = ("image", "boxes", "labels") + (("masks",) if masks else ())
            return {k: a[k] for k in keys}, {k: b[k] for k in keys}

        middle = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
        cases.append(Case(f"detmix functional.cutmix ({'boxes + masks' if masks else 'boxes'})",
                          "the core alone, a fixed cut of half the side in the middle", prep_core,
                          lambda ab, middle=middle: F.cutmix(ab[0], ab[1], middle)))

    try:
        import albumentations as A

        from detmix.albumentations import BoxCutMix, BoxMixUp
    except ImportError as error:
        missing.append(f"albumentations / detmix.albumentations: {error}")
    else:
        bbox_params = dict(format="pascal_voc", label_fields=["labels"])
        for cls, label in ((BoxCutMix, "BoxCutMix"), (BoxMixUp, "BoxMixUp")):
            for masks in (False, True):
                compose = A.Compose([cls(p=1.0)], bbox_params=A.BboxParams(**bbox_params), seed=seed)

                def prep_alb(i: int, masks: bool = masks) -> dict[str, Any]:
                    a, b = pair(i)
                    return {**_item(a, masks), "mix_metadata": [_item(b, masks)]}

                cases.append(Case(f"detmix {label} ({'boxes + masks' if masks else 'boxes'})",
                                  "detmix.albumentations in A.Compose, p=1", prep_alb,
                                  lambda data, compose=compose: compose(**data)))
        mosaic = A.Compose([A.Mosaic(grid_yx=(2, 2), target_size=(size, size), cell_shape=(size, size), p=1.0)],
                           bbox_params=A.BboxParams(**bbox_params), seed=seed)

        def prep_mosaic(i: int) -> dict[str, Any]:
            items = [_item(photos[(i + k) % n], False) for k in range(4)]
            return {**items[0], "mosaic_metadata": items[1:]}

        cases.append(Case("Albumentations Mosaic (boxes)", "A.Mosaic 2x2, 640 cells, 640 view, in A.Compose, p=1",
                          prep_mosaic, lambda data: mosaic(**data), note="reads 4 images"))

    try:
        from ultralytics.data.augment import CutMix, MixUp
        from ultralytics.utils.instance import Instances
    except ImportError as error:
        missing.append(f"ultralytics: {error}")
    else:
        random.seed(seed)
        np.random.seed(seed)

        def labels_of(sample: dict[str, Any], image: np.ndarray) -> dict[str, Any]:
            return {"img": image, "cls": np.asarray(sample["labels"], np.float32).reshape(-1, 1),
                    "instances": Instances(np.array(sample["boxes"], np.float32), bbox_format="xyxy", normalized=False)}

        class Partner:
            def __init__(self) -> None:
                self.sample: dict[str, Any] | None = None

            def __len__(self) -> int:
                return 1

            def get_image_and_label(self, index: int) -> dict[str, Any]:
                return labels_of(self.sample, self.sample["image"])

        for cls, label in ((CutMix, "CutMix"), (MixUp, "MixUp")):
            partner = Partner()
            transform = cls(partner, p=1.0)

            def prep_ul(i: int, partner: Partner = partner) -> dict[str, Any]:
                a, b = pair(i)
                partner.sample = b
                return labels_of(a, a["image"].copy())  # the transform writes into the image it is given

            def call_ul(labels: dict[str, Any], transform: Any = transform) -> int:
                n_in = len(labels["instances"])
                return int(len(transform(labels)["instances"]) > n_in)  # 1: it mixed

            cases.append(Case(f"Ultralytics {label} (boxes)", f"ultralytics.data.augment.{label}(dataset, p=1)",
                              prep_ul, call_ul))
    return cases, missing


def run(photos: Sequence[dict[str, Any]], repeats: int, warmup: int, seed: int, size: int) -> dict[str, Any]:
    cases, missing = build_cases(photos, seed, size)
    for round_ in range(warmup + repeats):
        for case in cases:
            inputs = case.prepare(round_)
            start = time.perf_counter()
            result = case.call(inputs)
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                case.times.append(elapsed)
                case.results.append(result)
    copy_ms = 1e3 * float(np.median(cases[0].times))
    rows = []
    for case in cases:
        times = 1e3 * np.asarray(case.times)
        median = float(np.median(times))
        row = {"method": case.name, "what": case.what, "median_ms": median,
               "p10_ms": float(np.percentile(times, 10)), "p90_ms": float(np.percentile(times, 90)),
               "calls_per_s": 1e3 / median, "x_copy": median / copy_ms, "note": case.note}
        if case.name.startswith("Ultralytics"):
            mixed = float(np.mean(case.results))
            row["mixed_pct"] = 100.0 * mixed
            if case.name.startswith("Ultralytics CutMix"):
                flags = np.asarray(case.results, bool)
                row["median_ms_when_mixed"] = float(np.median(times[flags])) if flags.any() else None
                row["median_ms_when_skipped"] = float(np.median(times[~flags])) if (~flags).any() else None
                row["note"] = f"mixed in {100.0 * mixed:.0f}% of calls (no box-free cut among 3 in the others)"
        rows.append(row)
    return {"rows": rows, "not_available": missing}


def _versions() -> dict[str, Any]:
    return package_versions(("detmix", "numpy", "albumentations", "ultralytics", "opencv-python-headless",
                             "opencv-python"))


def _machine() -> dict[str, Any]:
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "system": f"{platform.system()} {platform.release()}"}
    try:
        import cv2

        info["opencv_threads"] = cv2.getNumThreads()
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--annotations", type=Path, default=COCO_MINI / "annotations" / "instances_val2017.json")
    parser.add_argument("--images-dir", type=Path, default=COCO_MINI / "val2017")
    parser.add_argument("--images", type=int, default=8, help="photographs to cycle through")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per case first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.images < 2 or args.warmup < 0:
        parser.error("--repeats must be >= 1, --images >= 2 and --warmup >= 0")

    machine = _machine()
    started = time.perf_counter()
    photos = load_photographs(args.annotations, args.images_dir, args.images, args.size)
    result = run(photos, args.repeats, args.warmup, args.seed, args.size)
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    doc = {
        "benchmark": "per-sample",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": _versions(),
        "command": " ".join(["python bench/bench_per_sample.py", *(sys.argv[1:] if argv is None else argv)]),
        "config": {"images": len(photos), "size": args.size, "repeats": args.repeats, "warmup": args.warmup,
                   "seed": args.seed, "annotations": str(args.annotations),
                   "mean_boxes_per_image": float(np.mean([len(p["boxes"]) for p in photos]))},
        "seconds": round(time.perf_counter() - started, 1),
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"{'method':<44} {'median ms':>9} {'p10':>7} {'p90':>7} {'calls/s':>8} {'x copy':>7}")
    for r in doc["rows"]:
        print(f"{r['method']:<44} {r['median_ms']:9.3f} {r['p10_ms']:7.3f} {r['p90_ms']:7.3f} {r['calls_per_s']:8.0f} "
              f"{r['x_copy']:7.0f}  {r['note']}")
    if result["not_available"]:
        print(f"not available here: {result['not_available']}")
    print(f"{len(photos)} photographs, {doc['config']['mean_boxes_per_image']:.1f} boxes each on average; "
          f"{doc['seconds']} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
