"""Train a torchvision detector on a COCO-format dataset, with detection-aware batch mixing.

The default run (no arguments) is the small CPU run of ``configs/train/synthetic-cpu.yaml`` on the
embedded synthetic COCO dataset::

    python -m detmix.train                                   # or: detmix train
    python -m detmix.train --config configs/train/synthetic-cpu.yaml --epochs 3

COCO 2017 (``--data-path`` holds ``annotations/instances_{train,val}2017.json`` and
``{train,val}2017/``), one GPU (the lr of the recipe is for 16 images per step, so scale it)::

    detmix train --config configs/train/coco-frcnn-r50.yaml --data-path /data/coco \\
        --lr 0.0025 --output-dir out/frcnn-r50

8 GPUs on one node (2 images per GPU, lr 0.02), then several nodes::

    torchrun --nproc_per_node 8 -m detmix.train --config configs/train/coco-frcnn-r50.yaml \\
        --data-path /data/coco --output-dir out/frcnn-r50
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m detmix.train --config configs/train/coco-frcnn-r50.yaml --data-path /data/coco ...

Resume with ``--resume out/frcnn-r50/checkpoint.pth``; score a checkpoint with
``--resume CKPT --eval-only``. A ``--config`` YAML holds any of the options below by their long
names (``lr-steps`` or ``lr_steps``); options on the command line override it; ``null`` keeps the
default.

What a run writes into ``--output-dir`` (rank 0 only): ``config.yaml`` (the resolved options),
``checkpoint.pth`` after every epoch (model, optimizer, lr_scheduler, scaler, epoch, args, config,
seed, label map), ``model_<epoch>.pth`` with ``--save-every``, ``metrics.jsonl`` and
``metrics.csv`` (one row per epoch: training losses, lr, s/iter, COCOeval bbox metrics), and
``eval.json`` for ``--eval-only``.

Randomness: the model is initialised from ``--seed``; the sample order and flips of epoch ``e``
depend on ``(seed, e)``, the global torch generator is re-seeded from ``(seed, e, rank)`` and the
mixer draws from its own ``torch.Generator`` seeded from ``(seed, e, rank)``. Switching mixing on
or off therefore changes neither the data order nor the model's initialisation, and a resumed run
sees the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DataPaths", "Setup", "build", "cli", "get_args_parser", "main", "parse_args", "resolve_data"]

#: Streams of :func:`detmix.detection.derive_seed`.
_STREAM_GLOBAL, _STREAM_MIX = 0, 1

_BOX_WEIGHTS = ("on", "off", "auto")


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors can name where the values came from (a config file)."""

    origin: str | None = None

    def error(self, message: str) -> Any:  # type: ignore[override]
        if self.origin:
            message = f"{self.origin}: {message}"
        return super().error(message)


def _number(text: str, kind: type, low: float, high: float, wanted: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
    if not (low <= value <= high) or (kind is float and not math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, 1, math.inf, "an int >= 1")


def _non_negative_int(text: str) -> int:
    return _number(text, int, 0, math.inf, "an int >= 0")


def _non_negative_float(text: str) -> float:
    return _number(text, float, 0.0, math.inf, "a finite number >= 0")


def _unit_float(text: str) -> float:
    return _number(text, float, 0.0, 1.0, "a number in [0, 1]")


def get_args_parser(add_help: bool = True, prog: str | None = None) -> argparse.ArgumentParser:
    """The options of ``detmix train``; the defaults are the small synthetic CPU run."""
    from detmix.detection import MODELS

    Bool = argparse.BooleanOptionalAction
    parser = _Parser(
        prog=prog or "python -m detmix.train",
        description="Train a torchvision detector on a COCO-format dataset with detection-aware CutMix/MixUp "
        "applied to each batch on the device. Defaults: the small CPU run on the embedded synthetic dataset.",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML file of options (long names); the command line overrides it")

    g = parser.add_argument_group("data (default: the embedded synthetic COCO dataset)")
    g.add_argument("--data-path", type=Path, help="COCO 2017 root: annotations/instances_{train,val}2017.json, "
                   "train2017/, val2017/")
    g.add_argument("--train-annotations", type=Path, help="training COCO instances JSON (overrides --data-path)")
    g.add_argument("--train-images", type=Path, help="image folder of --train-annotations")
    g.add_argument("--val-annotations", type=Path, help="validation COCO instances JSON (overrides --data-path)")
    g.add_argument("--val-images", type=Path, help="image folder of --val-annotations")
    g.add_argument("--train-subset", type=_non_negative_int, default=0,
                   help="train on the first N images by id (0: all)")
    g.add_argument("--val-subset", type=_non_negative_int, default=0,
                   help="evaluate on the first N images by id (0: all)")
    g.add_argument("--hflip", type=_unit_float, default=0.5, help="probability of a horizontal flip per training image")
    g.add_argument("-j", "--workers", type=_non_negative_int, default=2, help="data loading workers per process")

    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default="fasterrcnn_mobilenet_v3_large_320_fpn", metavar="NAME",
                   help=f"torchvision detector: {', '.join(MODELS)}")
    g.add_argument("--weights", help="torchvision weights of the whole detector, e.g. "
                   "FasterRCNN_ResNet50_FPN_Weights.COCO_V1 (its COCO head uses the raw category ids)")
    g.add_argument("--weights-backbone", help="torchvision backbone weights, e.g. ResNet50_Weights.IMAGENET1K_V1")
    g.add_argument("--min-size", type=_positive_int, default=160,
                   help="shorter image side inside the model (torchvision: 800; ignored by ssdlite320)")
    g.add_argument("--max-size", type=_positive_int, default=224,
                   help="longest image side inside the model (torchvision: 1333; ignored by ssdlite320)")
    g.add_argument("--trainable-backbone-layers", type=_non_negative_int,
                   help="backbone stages to train (default: torchvision's)")
    g.add_argument("--box-weights", choices=_BOX_WEIGHTS, default="auto",
                   help="weight the ROI-head losses of each box by its mixing weight (Faster R-CNN family); "
                   "auto: on where supported")
    g.add_argument("--sync-bn", action=Bool, default=False, help="SyncBatchNorm across GPUs (CUDA only)")

    g = parser.add_argument_group("mixing")
    g.add_argument("--recipe", default="deit", help="recipe name (see: detmix recipes), a YAML path, or 'none'")
    g.add_argument("--mix-per", choices=("batch", "pair"), default="pair",
                   help="draw the mixing parameters once per batch or once per pair")
    g.add_argument("--no-mix-epochs", type=_non_negative_int, default=1,
                   help="switch mixing off for the last N epochs; with the default, a 1-epoch run mixes "
                        "nothing: give 0 to mix in a short smoke run")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, default=12, help="number of epochs")
    g.add_argument("-b", "--batch-size", type=_positive_int, default=4, help="images per process and step")
    g.add_argument("--opt", choices=("sgd", "adamw"), default="sgd", help="optimizer")
    g.add_argument("--lr", type=_non_negative_float, default=0.02,
                   help="base learning rate (torchvision: 0.02 for 8 GPUs x 2 images)")
    g.add_argument("--momentum", type=_non_negative_float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", "--wd", type=_non_negative_float, default=1e-4, help="weight decay")
    g.add_argument("--lr-scheduler", choices=("multistep", "cosine", "constant"), default="multistep",
                   help="main schedule, stepped per iteration")
    g.add_argument("--lr-steps", type=_positive_int, nargs="*", default=[9, 11],
                   help="epochs at which multistep multiplies the lr by --lr-gamma")
    g.add_argument("--lr-gamma", type=_non_negative_float, default=0.1, help="multistep factor")
    g.add_argument("--warmup-iters", type=_non_negative_int, default=50, help="iterations of linear warm-up")
    g.add_argument("--warmup-factor", type=_unit_float, default=0.001, help="lr factor at the first iteration")
    g.add_argument("--clip-grad-norm", type=_non_negative_float, default=0.0,
                   help="clip the gradient norm to this (0: off)")
    g.add_argument("--amp", action=Bool, default=False,
                   help="automatic mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU)")
    g.add_argument("--max-iters", type=_non_negative_int, default=0,
                   help="stop each epoch after N iterations (0: the whole epoch); for smoke runs")

    g = parser.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--dist-backend", choices=("nccl", "gloo"), help="process group backend (default: nccl on "
                   "CUDA, else gloo)")
    g.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the model init, data order, flips "
                   "and mixing")
    g.add_argument("--output-dir", type=Path, default=Path("out/train"), help="checkpoints and metrics")
    g.add_argument("--resume", type=Path, help="checkpoint.pth (or model_N.pth) to continue from")
    g.add_argument("--save-every", type=_non_negative_int, default=0,
                   help="also keep model_<epoch>.pth every N epochs (0: only the latest, checkpoint.pth)")
    g.add_argument("--eval-only", "--test-only", dest="eval_only", action=Bool, default=False,
                   help="evaluate (--resume or --weights) and exit")
    g.add_argument("--progress", action=Bool, default=True, help="progress bars")
    return parser


def _config_tokens(parser: argparse.ArgumentParser, config: dict[str, Any], path: Path) -> list[str]:
    """Command-line tokens equivalent to a config mapping; unknown keys and wrong kinds refused."""
    actions = {
        a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")
    }
    tokens: list[str] = []
    for key, value in config.items():
        dest = str(key).replace("-", "_")
        action = actions.get(dest)
        if action is None:
            parser.error(f"unknown key {key!r}; the keys are the long options: {sorted(actions)}")
        flag = next(s for s in action.option_strings if s.startswith("--"))
        if value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                parser.error(f"{key} must be true or false, got {value!r}")
            tokens.append(flag if value else "--no-" + flag[2:])
        elif action.nargs in ("*", "+"):
            values = value if isinstance(value, list) else [value]
            tokens += [flag, *(str(v) for v in values)]
        elif isinstance(value, bool) and action.choices is not None and {"on", "off"} <= set(action.choices):
            tokens.append(f"{flag}={'on' if value else 'off'}")  # YAML 1.1 reads a bare on/off as a bool
        elif isinstance(value, (list, dict, bool)):
            parser.error(f"{key} must be a single value, got {value!r}")
        else:
            tokens.append(f"{flag}={value}")
    return tokens


def load_config(path: Path, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """The mapping of a ``--config`` YAML file."""
    import yaml

    parser = parser or get_args_parser()
    if not path.is_file():
        parser.error(f"argument --config: file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        parser.error(f"argument --config: {str(path)!r} is not valid YAML: {error}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        parser.error(f"argument --config: {str(path)!r} must hold a mapping of options, got {type(data).__name__}")
    return data


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parse ``argv`` over the ``--config`` file it names. The namespace also carries
    ``config_values`` (the file's mapping, {} without one)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = get_args_parser(prog=prog)
    first, _ = parser.parse_known_args(argv)
    config: dict[str, Any] = {}
    tokens: list[str] = []
    if first.config is not None:
        config = load_config(first.config, parser)
        parser.origin = f"config {str(first.config)!r}"
        tokens = _config_tokens(parser, config, first.config)
        parser.parse_args(tokens)  # errors in the file are reported as such
        parser.origin = None
    args = parser.parse_args(tokens + argv)
    args.config_values = config
    return args


def _args_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The options as plain, JSON-able values (paths as str)."""
    out = {}
    for key, value in vars(args).items():
        if key == "config_values":
            continue
        out[key] = str(value) if isinstance(value, Path) else value
    return out


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataPaths:
    """Annotation files and image folders of both splits, checked to exist."""

    name: str
    train_annotations: Path
    train_images: Path
    val_annotations: Path
    val_images: Path


_SPLITS = (
    ("train_annotations", "annotations/instances_train2017.json", "file"),
    ("train_images", "train2017", "dir"),
    ("val_annotations", "annotations/instances_val2017.json", "file"),
    ("val_images", "val2017", "dir"),
)


def _origin(args: argparse.Namespace, key: str) -> str:
    """The argument that gave the path ``key`` of :func:`resolve_data`, for error messages."""
    if getattr(args, key, None) is not None:
        return "--" + key.replace("_", "-")
    if args.data_path is not None:
        relative = next(r for k, r, _ in _SPLITS if k == key)
        return f"--data-path (COCO 2017 layout: {relative})"
    return "the embedded synthetic dataset"


def resolve_data(args: argparse.Namespace) -> DataPaths:
    """The dataset of ``args``: explicit files first, then ``--data-path`` (COCO 2017 layout), else
    the embedded synthetic dataset (:func:`detmix.synthetic.default_dataset`)."""
    explicit = {key: getattr(args, key) for key, _, _ in _SPLITS}
    if args.data_path is None and not any(v is not None for v in explicit.values()):
        from detmix.synthetic import default_dataset

        synthetic = default_dataset()
        return DataPaths("synthetic", synthetic.train_annotations, synthetic.train_images,
                         synthetic.val_annotations, synthetic.val_images)
    if args.data_path is not None and not args.data_path.is_dir():
        raise FileNotFoundError(f"--data-path must be a COCO root folder, got {str(args.data_path)!r}, which "
                                "does not exist")
    if args.data_path is None:
        missing = ["--" + k.replace("_", "-") for k, v in explicit.items() if v is None]
        if missing:
            given = ["--" + k.replace("_", "-") for k, v in explicit.items() if v is not None]
            raise ValueError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required when "
                             f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} given without --data-path")
    paths: dict[str, Path] = {}
    for key, relative, kind in _SPLITS:
        path, origin = explicit[key], "--" + key.replace("_", "-")
        if path is None:
            path, origin = args.data_path / relative, f"--data-path (COCO 2017 layout: {relative})"
        exists = path.is_file() if kind == "file" else path.is_dir()
        if not exists:
            what = "annotation file" if kind == "file" else "image folder"
            raise FileNotFoundError(f"{origin}: {what} {str(path)!r} does not exist")
        paths[key] = path
    name = args.data_path.name if args.data_path is not None else paths["train_annotations"].stem
    return DataPaths(name, **paths)


def _source(annotations: Path, images: Path, subset: int, origin: str) -> Any:
    from detmix.coco import CocoDetectionSource

    source = CocoDetectionSource(annotations, images, masks=False)
    if subset and subset < len(source):
        source = CocoDetectionSource(annotations, images, masks=False, image_ids=source.image_ids[:subset])
    _check_image_files(source, origin)
    return source


def _check_image_files(source: Any, origin: str, shown: int = 5) -> None:
    """Every image that ``source`` will load is a file: checked before the first step, since a
    missing one would stop a DataLoader worker mid-epoch with a long traceback. ``origin`` names
    the argument that gave the image folder."""
    missing = []
    for image_id in source.image_ids:
        file_name = source.coco.imgs[image_id].get("file_name")
        try:
            path = source.image_path(file_name)
        except ValueError as error:
            raise ValueError(f"{origin}: {error}") from None
        if not path.is_file():
            missing.append(file_name)
    if missing:
        names = ", ".join(repr(name) for name in missing[:shown])
        more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
        raise FileNotFoundError(
            f"{origin}: {len(missing)} of the {len(source)} images listed in {str(source.annotation_file)!r} are "
            f"missing from {str(source.image_dir)!r}: {names}{more}"
        )


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """Everything a run needs, built by :func:`build`."""

    args: argparse.Namespace
    dist: Any
    device: Any
    data: DataPaths
    label_map: Any
    model: Any
    model_without_ddp: Any
    box_weights: bool
    val_dataset: Any
    val_loader: Any
    coco_gt: Any
    train_dataset: Any = None
    train_sampler: Any = None
    train_loader: Any = None
    optimizer: Any = None
    lr_scheduler: Any = None
    scaler: Any = None
    mixer: Any = None
    iters_per_epoch: int = 0
    start_epoch: int = 0

    def mixing_on(self, epoch: int) -> bool:
        """Whether ``epoch`` is mixed: a mixer is configured and it is not in the last
        ``--no-mix-epochs``."""
        return self.mixer is not None and epoch < self.args.epochs - self.args.no_mix_epochs

    def mix_generator(self, epoch: int) -> Any:
        """The mixer's own generator for ``epoch`` on this rank: a CPU generator (BatchMix draws
        its few parameters on the generator's device and sends them to the images' device)."""
        import torch

        from detmix.detection import derive_seed

        generator = torch.Generator()
        generator.manual_seed(derive_seed(self.args.seed, epoch, self.dist.rank, _STREAM_MIX))
        return generator

    def begin_epoch(self, epoch: int) -> None:
        """Select the epoch of the sampler and the flips and re-seed the global generator."""
        import torch

        from detmix.detection import derive_seed

        self.train_sampler.set_epoch(epoch)
        self.train_dataset.set_epoch(epoch)
        torch.manual_seed(derive_seed(self.args.seed, epoch, self.dist.rank, _STREAM_GLOBAL))

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch (mixed unless it is one of the last ``--no-mix-epochs``), evaluate, and
        return the epoch's record: losses, lr, s/iter, whether it was mixed, COCO bbox metrics;
        the full evaluation is under ``"eval"``."""
        from detmix.engine import COCO_STATS, evaluate, train_one_epoch

        args = self.args
        self.begin_epoch(epoch)
        mixing = self.mixing_on(epoch)
        train_stats = train_one_epoch(
            self.model, self.optimizer, self.train_loader, self.device, epoch,
            lr_scheduler=self.lr_scheduler, scaler=self.scaler, amp=args.amp,
            mixer=self.mixer if mixing else None, mix_generator=self.mix_generator(epoch) if mixing else None,
            max_iters=args.max_iters or None, clip_grad_norm=args.clip_grad_norm or None, progress=args.progress,
        )
        stats = evaluate(self.model_without_ddp, self.val_loader, self.device, self.coco_gt, self.label_map,
                         amp=args.amp, progress=args.progress)
        record: dict[str, Any] = {"epoch": epoch, "mixed": bool(mixing)}
        record.update({k: v for k, v in train_stats.items() if k != "mixed"})
        record.update({f"bbox_{k}": stats[k] for k in COCO_STATS})
        record["eval"] = stats
        return record


def _device(spec: str, dist_info: Any) -> Any:
    import torch

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
        if dist_info.distributed or device.index is None:
            device = torch.device("cuda", dist_info.local_rank if dist_info.distributed else 0)
    elif device.type != "cpu":
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return device


def _label_map(args: argparse.Namespace, train_source: Any, val_source: Any, checkpoint: dict | None) -> Any:
    from detmix.detection import LabelMap

    categories = set(val_source.category_ids) | (set(train_source.category_ids) if train_source else set())
    if args.weights:
        from detmix.detection import get_weights

        weights = get_weights(args.weights, "--weights")
        label_map = LabelMap.identity(len(weights.meta["categories"]))
        outside = sorted(c for c in categories if not 1 <= c < label_map.num_classes)
        if outside:
            raise ValueError(
                f"--weights {args.weights}: its head predicts category ids 1..{label_map.num_classes - 1}, but the "
                f"dataset has category ids {outside[:10]}; fine-tune from --weights-backbone instead"
            )
    elif checkpoint is not None:
        label_map = LabelMap(tuple(checkpoint["label_map"]))
    else:
        label_map = LabelMap.from_categories(train_source.category_ids if train_source else categories)
    unknown = sorted(categories - set(label_map.category_ids))
    if unknown:
        raise ValueError(
            f"the dataset has category ids {unknown[:10]} that the model's label map does not know "
            f"(it knows {list(label_map.category_ids)[:10]}...); train and val must share their categories"
        )
    return label_map


def _load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"--resume: checkpoint {str(path)!r} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in ("model", "optimizer", "lr_scheduler", "epoch", "args", "label_map") if k not in checkpoint]
    if missing:
        raise ValueError(f"--resume: {str(path)!r} is not a detmix checkpoint (missing {missing})")
    return checkpoint


def _loader(dataset: Any, batch_size: int, sampler: Any, workers: int, seed: int, device: Any, drop_last: bool) -> Any:
    import torch

    from detmix.detection import collate

    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        generator=generator,
    )


def build(args: argparse.Namespace, dist_info: Any = None) -> Setup:
    """Data, model, optimizer, schedule and mixer of ``args`` (and the checkpoint of
    ``--resume``, loaded). ``dist_info`` is :class:`detmix.engine.DistInfo` (default: one process)."""
    import torch
    from torch.utils.data import DistributedSampler

    from detmix.detection import DetectionDataset, build_model, derive_seed, get_weights, supports_box_weights
    from detmix.engine import DistInfo, build_lr_scheduler

    dist_info = dist_info or DistInfo()
    device = _device(args.device, dist_info)
    if args.eval_only and args.resume is None and args.weights is None:
        raise ValueError("--eval-only needs a model to score: give --resume CHECKPOINT or --weights NAME")
    if args.box_weights == "on" and not supports_box_weights(args.model):
        raise ValueError(
            f"--box-weights on: per-box weights reach the loss of the Faster R-CNN family only (fasterrcnn_*), "
            f"got --model {args.model}; use --box-weights off or auto"
        )
    box_weights = args.box_weights == "on" or (args.box_weights == "auto" and supports_box_weights(args.model))
    for flag, name in (("--weights", args.weights), ("--weights-backbone", args.weights_backbone)):
        if name:
            get_weights(name, flag)
    if args.sync_bn and device.type != "cuda":
        raise ValueError(f"--sync-bn needs CUDA devices, got --device {device}")
    mixer = None
    if str(args.recipe).lower() != "none" and not args.eval_only:
        from detmix.recipes import load_recipe
        from detmix.torch import BatchMix

        try:
            recipe = load_recipe(args.recipe)
        except ValueError as error:
            raise ValueError(f"--recipe: {error}") from None
        mixer = BatchMix(recipe=recipe, per=args.mix_per)
    if not args.eval_only and args.no_mix_epochs > args.epochs:
        raise ValueError(f"--no-mix-epochs must be <= --epochs ({args.epochs}), got {args.no_mix_epochs}")

    checkpoint = _load_checkpoint(args.resume) if args.resume is not None else None
    if checkpoint is not None and checkpoint["args"].get("model") != args.model:
        raise ValueError(
            f"--resume: {str(args.resume)!r} holds a {checkpoint['args'].get('model')} but --model is {args.model}"
        )

    data = resolve_data(args)
    val_source = _source(data.val_annotations, data.val_images, args.val_subset, _origin(args, "val_images"))
    train_source = None if args.eval_only else _source(data.train_annotations, data.train_images, args.train_subset,
                                                       _origin(args, "train_images"))
    label_map = _label_map(args, train_source, val_source, checkpoint)
    if checkpoint is not None and tuple(checkpoint["label_map"]) != label_map.category_ids:
        raise ValueError(f"--resume: the checkpoint's categories {list(checkpoint['label_map'])[:10]}... differ from "
                         f"the dataset's {list(label_map.category_ids)[:10]}...")

    world, rank = dist_info.world_size, dist_info.rank
    val_dataset = DetectionDataset(val_source, label_map)
    val_sampler = DistributedSampler(val_dataset, num_replicas=world, rank=rank, shuffle=False)
    val_loader = _loader(val_dataset, args.batch_size, val_sampler, args.workers, args.seed, device, False)

    torch.manual_seed(args.seed)  # the model's initialisation depends on the seed only
    model = build_model(
        args.model,
        None if args.weights else label_map.num_classes,
        weights=args.weights,
        weights_backbone=args.weights_backbone,
        min_size=args.min_size,
        max_size=args.max_size,
        trainable_backbone_layers=args.trainable_backbone_layers,
        box_weights=box_weights,
    )
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    if args.sync_bn and dist_info.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    model_without_ddp = model
    if dist_info.distributed and not args.eval_only:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    setup = Setup(args, dist_info, device, data, label_map, model, model_without_ddp, box_weights,
                  val_dataset, val_loader, val_source.coco, mixer=mixer)
    if args.eval_only:
        return setup

    train_dataset = DetectionDataset(train_source, label_map, hflip_prob=args.hflip, seed=args.seed)
    if len(train_dataset) < args.batch_size * world:
        raise ValueError(
            f"--batch-size {args.batch_size} x {world} process(es) needs at least {args.batch_size * world} "
            f"training images, got {len(train_dataset)}"
        )
    train_sampler = DistributedSampler(train_dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    train_loader = _loader(train_dataset, args.batch_size, train_sampler, args.workers,
                           derive_seed(args.seed, rank, 2), device, True)
    iters_per_epoch = len(train_loader) if not args.max_iters else min(len(train_loader), args.max_iters)

    params = [p for p in model_without_ddp.parameters() if p.requires_grad]
    if args.opt == "sgd":
        optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    lr_scheduler = build_lr_scheduler(
        optimizer, iters_per_epoch=iters_per_epoch, epochs=args.epochs, schedule=args.lr_scheduler,
        milestones=tuple(args.lr_steps), gamma=args.lr_gamma, warmup_iters=args.warmup_iters,
        warmup_factor=args.warmup_factor,
    )
    scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None
    start_epoch = 0
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if scaler is not None and checkpoint.get("scaler") is not None:
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = int(checkpoint["epoch"]) + 1
        del checkpoint  # the tensors now live in the model and the optimizer

    setup.train_dataset, setup.train_sampler, setup.train_loader = train_dataset, train_sampler, train_loader
    setup.optimizer, setup.lr_scheduler, setup.scaler = optimizer, lr_scheduler, scaler
    setup.iters_per_epoch, setup.start_epoch = iters_per_epoch, start_epoch
    return setup


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------


def _log(main_rank: bool, message: str) -> None:
    if main_rank:
        print(message, flush=True)


def _save_checkpoint(setup: Setup, epoch: int, record: dict[str, Any]) -> Path:
    import torch

    from detmix import __version__

    checkpoint = {
        "model": setup.model_without_ddp.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "lr_scheduler": setup.lr_scheduler.state_dict(),
        "scaler": setup.scaler.state_dict() if setup.scaler is not None else None,
        "epoch": epoch,
        "args": _args_dict(setup.args),
        "config": dict(setup.args.config_values) if hasattr(setup.args, "config_values") else {},
        "seed": setup.args.seed,
        "label_map": list(setup.label_map.category_ids),
        "world_size": setup.dist.world_size,
        "metrics": {k: v for k, v in record.items() if isinstance(v, (int, float, str, bool))},
        "detmix_version": __version__,
    }
    path = setup.args.output_dir / "checkpoint.pth"
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    if setup.args.save_every and (epoch + 1) % setup.args.save_every == 0:
        shutil.copyfile(partial, path.with_name(f"model_{epoch}.pth"))
    os.replace(partial, path)  # a crash while saving never leaves half a checkpoint
    return path


def _append_metrics(output_dir: Path, record: dict[str, Any]) -> None:
    with open(output_dir / "metrics.jsonl", "a", encoding="utf-8") as file:
        file.write(json.dumps(record, sort_keys=False) + "\n")
    path = output_dir / "metrics.csv"
    if path.is_file() and path.stat().st_size:
        with open(path, encoding="utf-8", newline="") as file:
            columns = next(csv.reader(file))
        new = False
    else:
        columns, new = list(record), True
    with open(path, "a", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(record)


def _eval_line(stats: dict[str, Any]) -> str:
    return (f"bbox mAP {stats['mAP']:.4f}  AP50 {stats['AP50']:.4f}  AP75 {stats['AP75']:.4f}  "
            f"APs {stats['AP_small']:.4f}  APm {stats['AP_medium']:.4f}  APl {stats['AP_large']:.4f}  "
            f"({stats['images']} images, {stats['detections']} detections)")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run training (or ``--eval-only``) as ``args`` say. Returns ``{"history": [per-epoch
    records], "eval": last COCO metrics, "output_dir": str}`` on every rank."""
    import torch
    import torch.distributed as dist
    import yaml

    from detmix.engine import evaluate, init_distributed

    if not hasattr(args, "config_values"):
        args.config_values = {}
    wants_cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    dist_info = init_distributed(args.dist_backend or ("nccl" if wants_cuda else "gloo"))
    owns_group = dist_info.distributed
    try:
        setup = build(args, dist_info)
        main_rank = dist_info.is_main
        if main_rank:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            (args.output_dir / "config.yaml").write_text(yaml.safe_dump(_args_dict(args), sort_keys=False),
                                                         encoding="utf-8")
        _log(main_rank, f"detmix train: {args.model} on {setup.data.name} "
             f"({len(setup.train_dataset) if setup.train_dataset else 0} train / {len(setup.val_dataset)} val images, "
             f"{setup.label_map.num_classes - 1} classes), device {setup.device}, {dist_info.world_size} process(es), "
             f"box weights {'on' if setup.box_weights else 'off'}")
        if setup.mixer is not None:
            mixed = max(args.epochs - args.no_mix_epochs, 0)
            _log(main_rank, f"mixing: {setup.mixer!r} on the device for epochs 0..{mixed - 1}, clean for the last "
                 f"{args.epochs - mixed}" if mixed else f"mixing: none (--no-mix-epochs {args.no_mix_epochs} covers "
                 f"all {args.epochs} epochs)")

        if args.eval_only:
            scored = evaluate(setup.model_without_ddp, setup.val_loader, setup.device, setup.coco_gt,
                              setup.label_map, amp=args.amp, progress=args.progress)
            _log(main_rank, scored["summary"].rstrip() + "\n" + _eval_line(scored))
            if main_rank:
                (args.output_dir / "eval.json").write_text(
                    json.dumps({k: v for k, v in scored.items() if k != "summary"}, indent=1), encoding="utf-8")
            return {"history": [], "eval": scored, "output_dir": str(args.output_dir)}

        history: list[dict[str, Any]] = []
        stats: dict[str, Any] | None = None
        if setup.start_epoch >= args.epochs:
            _log(main_rank, f"checkpoint is at epoch {setup.start_epoch - 1}; --epochs {args.epochs}: nothing to train")
        for epoch in range(setup.start_epoch, args.epochs):
            epoch_record = setup.run_epoch(epoch)
            stats = epoch_record.pop("eval")
            record: dict[str, Any] = {"epoch": epoch, "mixed": epoch_record["mixed"],
                                      "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            record.update(epoch_record)
            record.update(eval_images=stats["images"], world_size=dist_info.world_size, seed=args.seed)
            history.append(record)
            _log(main_rank, f"epoch {epoch}: loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                 f"{record['s_per_iter']:.2f} s/iter  mixed {record['mixed']}  |  {_eval_line(stats)}")
            if main_rank:
                _append_metrics(args.output_dir, record)
                _save_checkpoint(setup, epoch, record)
        if dist_info.distributed:
            dist.barrier()  # every rank leaves after rank 0 has written its last checkpoint
        return {"history": history, "eval": stats, "output_dir": str(args.output_dir)}
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry: parse, run, and turn errors into messages and exit codes (2: bad
    arguments or data, 1: training stopped on a non-finite loss)."""
    from detmix.engine import NonFiniteLossError

    prog = prog or "python -m detmix.train"
    args = parse_args(argv, prog=prog)
    try:
        main(args)
    except NonFiniteLossError as error:
        print(f"{prog}: stopped: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
