"""Training effect: the same detector, data, seed and schedule with no mixing, with the classification
CutMix/MixUp (boxes left as they were) and with detmix; COCO mAP of each.

CPU smoke test (the default: the embedded synthetic dataset, a tiny schedule, a few minutes)::

    .venv/bin/python bench/training_effect.py

A real run on a GPU (everything after ``--`` goes to ``detmix.train``'s own options, config files
included; ``--out`` names the JSON file)::

    python bench/training_effect.py --out bench/results/training-effect-cuda.json -- \\
        --config configs/train/coco-frcnn-r50.yaml --data-path /data/coco --lr 0.0025 --device cuda

The three arms are built by ``detmix.train.build`` from the same options and trained by
``detmix.engine.train_one_epoch`` / scored by ``detmix.engine.evaluate``, as ``detmix.train.main``
does (without checkpoints). They differ only in the mixer handed to ``train_one_epoch``:

* ``none``: no mixer (``--recipe none``);
* ``classification``: :class:`ClassificationMix` below: the pixels of ``detmix.torch.BatchMix``
  with the same recipe and the same generator, hence the very same partners, lams and cuts as the
  detmix arm, but every image keeps its own boxes as they were, weight 1, and gets none of its
  partner's: what a classification CutMix/MixUp (torchvision ``v2.CutMix``, timm) gives a detector;
* ``detmix``: ``detmix.torch.BatchMix`` (boxes follow the pixels, per-box weights reach the
  Faster R-CNN losses with ``--box-weights auto``).

``detmix.train`` seeds the model's initialisation, the data order and the flips from ``--seed``
alone, and the mixer from its own generator, so the arms see the same images in the same order
from the same initial weights. Writes ``bench/results/training-effect-cpu.json`` (or ``--out``):
per arm and epoch the training losses (on each arm's own targets, so they are not comparable across
arms: an arm that drops the partner's boxes has less to fit) and the COCO bbox metrics of the
unmixed validation set, plus the command that reproduces it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, also when loaded by path
from _env import cpu_name, package_versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "training-effect-cpu.json"
ARMS = ("none", "classification", "detmix")

#: The CPU smoke schedule (synthetic data): options of ``detmix.train`` that a ``--`` part overrides.
SMOKE = ["--epochs", "2", "--max-iters", "4", "--batch-size", "4", "--workers", "0", "--no-mix-epochs", "0",
         "--warmup-iters", "2", "--lr", "0.02", "--lr-steps", "2", "--device", "cpu", "--no-progress"]


class ClassificationMix:
    """The classification CutMix/MixUp on a detection batch: the pixels of
    :class:`detmix.torch.BatchMix` (same recipe, same draws from the same generator), the boxes
    of each image as they were (weight 1), none of the partner's.

    Called as the training engine calls a mixer: ``mixer(images, targets, generator=g)`` returns
    ``(images, targets)``.
    """

    def __init__(self, recipe: Any, per: str = "pair") -> None:
        from detmix.torch import BatchMix

        self.batch_mix = BatchMix(recipe=recipe, per=per)

    @property
    def recipe(self) -> Any:
        return self.batch_mix.recipe

    def __repr__(self) -> str:
        return f"{type(self).__name__}(recipe={self.recipe.name!r}, per={self.batch_mix.per!r})"

    def __call__(self, images: Any, targets: Sequence[dict[str, Any]], generator: Any = None) -> tuple[Any, list]:
        import torch

        mixed, _ = self.batch_mix(images, targets, generator=generator)
        kept = []
        for target in targets:
            boxes = target["boxes"]
            out = {k: v for k, v in target.items() if k != "weights"}
            out["weights"] = torch.ones(boxes.shape[0], dtype=boxes.dtype, device=boxes.device)
            kept.append(out)
        return mixed, kept


def _arm_args(base: argparse.Namespace, arm: str) -> argparse.Namespace:
    args = copy.deepcopy(base)
    if arm == "none":
        args.recipe = "none"
    return args


def train_arm(base: argparse.Namespace, arm: str, log: bool = True) -> dict[str, Any]:
    """Train and score one arm (nothing is written: no checkpoint, no metrics file); returns its
    per-epoch history and final metrics."""
    from detmix import train as T
    from detmix.engine import COCO_STATS

    args = _arm_args(base, arm)
    setup = T.build(args)
    if arm == "classification":
        if setup.mixer is None:
            raise ValueError("the classification arm needs a --recipe other than 'none'")
        setup.mixer = ClassificationMix(setup.mixer.recipe, per=args.mix_per)
    history = []
    stats: dict[str, Any] = {}
    started = time.perf_counter()
    for epoch in range(args.epochs):
        record = setup.run_epoch(epoch)  # the training script's own epoch: train, then COCOeval
        stats = record.pop("eval")
        history.append(record)
        if log:
            print(f"  [{arm}] epoch {epoch}: loss {record['loss']:.4f}  mAP {stats['mAP']:.4f}  "
                  f"AP50 {stats['AP50']:.4f}  ({record['s_per_iter']:.2f} s/iter)", flush=True)
    return {
        "arm": arm,
        "mixer": repr(setup.mixer) if setup.mixer is not None else None,
        "box_weights": bool(setup.box_weights),
        "history": history,
        "final": {k: stats.get(k) for k in COCO_STATS} | {"images": stats.get("images"),
                                                            "detections": stats.get("detections")},
        "final_train_loss": history[-1]["loss"] if history else None,
        "seconds": round(time.perf_counter() - started, 1),
        "data": setup.data.name,
        "train_images": len(setup.train_dataset),
        "val_images": len(setup.val_dataset),
    }


def _versions() -> dict[str, Any]:
    return package_versions(("detmix", "torch", "torchvision", "numpy", "pycocotools"))


def _machine(device: str) -> dict[str, Any]:
    import torch

    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        usage="%(prog)s [--arms none,classification,detmix] [--out PATH] [-- detmix.train options]")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms to train, of " + ", ".join(ARMS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file of the figures")
    parser.add_argument("--no-smoke-defaults", action="store_true",
                        help="do not start from the CPU smoke schedule; use detmix.train's own defaults")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_argv: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, train_argv = argv[:cut], argv[cut + 1:]
    parser = get_args_parser()
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        parser.error(f"--arms must name some of {list(ARMS)}, got {args.arms!r}")

    from detmix import train as T

    full_argv = ([] if args.no_smoke_defaults else list(SMOKE)) + train_argv
    base = T.parse_args(full_argv, prog="detmix.train (bench/training_effect.py)")
    if str(base.recipe).lower() == "none" and any(a != "none" for a in arms):
        parser.error("the mixing arms need a recipe: drop --recipe none")
    command = "python bench/training_effect.py " + " ".join(shlex.quote(a) for a in argv)
    if train_argv:
        command += " -- " + " ".join(shlex.quote(a) for a in train_argv)

    started = time.perf_counter()
    results = []
    for arm in arms:
        print(f"arm {arm}: training ...", flush=True)
        results.append(train_arm(base, arm))
    import torch

    on_cuda = base.device.startswith("cuda") or (base.device == "auto" and torch.cuda.is_available())
    device = "cuda" if on_cuda else "cpu"
    doc = {
        "benchmark": "training-effect",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(device),
        "versions": _versions(),
        "command": command.strip(),
        "smoke": not args.no_smoke_defaults and device == "cpu",
        "train_options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(base).items()
                          if k not in ("config_values",)},
        "seconds": round(time.perf_counter() - started, 1),
        "arms": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"\n{'arm':<16} {'mAP':>7} {'AP50':>7} {'AP75':>7} {'train loss':>10} {'s':>6}")
    for r in results:
        f = r["final"]
        print(f"{r['arm']:<16} {f['mAP']:7.4f} {f['AP50']:7.4f} {f['AP75']:7.4f} {r['final_train_loss']:10.4f} "
              f"{r['seconds']:6.0f}")
    print(f"wrote {args.out}  (reproduce: {doc['command']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
