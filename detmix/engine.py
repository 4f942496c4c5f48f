"""Training and evaluation loops of :mod:`detmix.train`, after torchvision's ``references/detection``.

* :func:`train_one_epoch`: moves each batch to the device, mixes it there (never on the data
  loader's workers, never on validation), runs the model under optional autocast, stops with
  :class:`NonFiniteLossError` when the loss (averaged over ranks, so every rank stops together) is
  not finite, and steps a per-iteration learning-rate schedule (:func:`build_lr_scheduler`: linear
  warm-up, then multi-step or cosine);
* :func:`evaluate`: bbox detections of every validation image, gathered from all ranks, scored by
  pycocotools ``COCOeval`` (:func:`coco_bbox_stats`);
* small distributed helpers (:func:`init_distributed`, :func:`reduce_dict`...) that degrade to
  no-ops in a single process.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detmix.detection import LabelMap

__all__ = [
    "COCO_STATS",
    "DistInfo",
    "NonFiniteLossError",
    "build_lr_scheduler",
    "coco_bbox_stats",
    "evaluate",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "lr_multiplier",
    "prepare_batch",
    "reduce_dict",
    "train_one_epoch",
]

#: Names of ``COCOeval.stats`` for bbox, in order (AP over IoU .50:.95 unless named).
COCO_STATS: tuple[str, ...] = (
    "mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)

#: Target keys handed to the model; the mixer's bookkeeping (mix_source, mix_partner) stays out.
_MODEL_KEYS = ("boxes", "labels", "masks", "weights")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stops."""


class _NoBar:
    """What :func:`_progress` returns when bars are off: the iterable, and no-op bar methods."""

    def __init__(self, iterable: Iterable[Any]) -> None:
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(iterable: Iterable[Any], enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` on rank 0 when ``enabled``; tqdm is needed only then."""
    if not (enabled and is_main_process()):
        return _NoBar(iterable)
    try:
        from tqdm import tqdm
    except ImportError as error:
        raise ImportError('progress bars need tqdm: pip install "detmix[train]", or pass --no-progress') from error
    return tqdm(iterable, dynamic_ncols=True, **kwargs)


# --------------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); a plain single process when
    those are absent or ``WORLD_SIZE`` is 1. ``backend`` defaults to nccl with CUDA, else gloo."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    try:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them), got "
            f"{os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}, {os.environ.get('LOCAL_RANK')!r}"
        ) from None
    if world_size <= 1:
        return DistInfo(0, 1, local_rank)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank)


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def reduce_dict(values: dict[str, Tensor], average: bool = True) -> dict[str, Tensor]:
    """The mean (or sum) of each scalar tensor over all ranks; unchanged in one process."""
    world_size = get_world_size()
    if world_size < 2 or not values:
        return values
    with torch.no_grad():
        names = sorted(values)
        stacked = torch.stack([values[k].detach().float() for k in names])
        dist.all_reduce(stacked)
        if average:
            stacked /= world_size
    return dict(zip(names, stacked))


def _all_gather(obj: Any) -> list[Any]:
    if get_world_size() < 2:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any) -> Any:
    if get_world_size() < 2:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------------------------
# Learning rate
# --------------------------------------------------------------------------------------------


def lr_multiplier(
    iteration: int,
    *,
    iters_per_epoch: int,
    epochs: int,
    schedule: str = "multistep",
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
) -> float:
    """Factor of the base learning rate after ``iteration`` optimizer steps.

    Linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters`` steps (torchvision's
    ``LinearLR`` warm-up), times the main schedule measured in fractional epochs
    (``iteration / iters_per_epoch``): ``"multistep"`` multiplies by ``gamma`` at each milestone
    epoch (torchvision's ``MultiStepLR``), ``"cosine"`` anneals to 0 at ``epochs``,
    ``"constant"`` keeps 1.
    """
    warm = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        warm = warmup_factor * (1.0 - alpha) + alpha
    epoch = iteration / max(iters_per_epoch, 1)
    if schedule == "multistep":
        main = gamma ** sum(epoch >= m for m in milestones)
    elif schedule == "cosine":
        main = 0.5 * (1.0 + math.cos(math.pi * min(epoch / max(epochs, 1), 1.0)))
    elif schedule == "constant":
        main = 1.0
    else:
        raise ValueError(f"schedule must be 'multistep', 'cosine' or 'constant', got {schedule!r}")
    return warm * main


def build_lr_scheduler(optimizer: torch.optim.Optimizer, **kwargs: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR`` of :func:`lr_multiplier` (``kwargs`` are its keywords). The
    schedule is a plain function, so a checkpoint's ``state_dict`` holds only the step count and
    a resumed run follows the schedule of its own arguments."""
    lr_multiplier(0, **kwargs)  # validate now, not at the first step

    def factor(iteration: int) -> float:
        return lr_multiplier(iteration, **kwargs)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def prepare_batch(
    images: Sequence[Tensor],
    targets: Sequence[dict[str, Any]],
    device: torch.device,
    *,
    mixer: Callable[..., tuple[Any, Any]] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Move a collated batch to ``device``, scale uint8 images to float ``[0, 1]`` and, when a
    ``mixer`` (:class:`detmix.torch.BatchMix`) is given, mix it there with ``generator``.

    Returns the images and the targets the model sees: ``boxes``, ``labels`` (and ``masks``,
    ``weights`` when present)."""
    moved = []
    for image in images:
        image = image.to(device, non_blocking=True)
        moved.append(image.float().div_(255.0) if image.dtype == torch.uint8 else image.float())
    model_targets = [
        {k: t[k].to(device, non_blocking=True) for k in _MODEL_KEYS if k in t and isinstance(t[k], Tensor)}
        for t in targets
    ]
    if mixer is not None:
        if generator is None:
            raise ValueError("generator must be given with a mixer (a torch.Generator of its own)")
        mixed_images, mixed_targets = mixer(moved, model_targets, generator=generator)
        moved = list(mixed_images)
        model_targets = [{k: t[k] for k in _MODEL_KEYS if k in t} for t in mixed_targets]
    return moved, model_targets


def _format_losses(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: Iterable[Any],
    device: torch.device,
    epoch: int,
    *,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    mixer: Callable[..., tuple[Any, Any]] | None = None,
    mix_generator: torch.Generator | None = None,
    max_iters: int | None = None,
    clip_grad_norm: float | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``data_loader`` (at most ``max_iters`` batches).

    Returns the losses averaged over iterations and ranks (``loss`` and each component), the
    last ``lr``, ``iters``, ``time_s``, ``s_per_iter`` and ``mixed`` (1.0 when a mixer ran).

    Raises:
        NonFiniteLossError: the loss summed over components and averaged over ranks is not
            finite; the message names the epoch, the iteration, the components and the lr.
    """
    model.train()
    total = len(data_loader) if hasattr(data_loader, "__len__") else None
    if max_iters is not None and max_iters > 0:
        total = max_iters if total is None else min(total, max_iters)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    sums: dict[str, float] = {}
    iters = 0
    start = time.perf_counter()
    bar = _progress(data_loader, progress, total=total, desc=f"epoch {epoch}", leave=True)
    try:
        for images, targets in bar:
            images, targets = prepare_batch(images, targets, device, mixer=mixer, generator=mix_generator)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
                loss_dict = model(images, targets)
            losses = sum(loss.float() for loss in loss_dict.values())
            reduced = {k: float(v) for k, v in reduce_dict({k: v.detach() for k, v in loss_dict.items()}).items()}
            loss_value = sum(reduced.values())
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"loss is {loss_value} at epoch {epoch}, iteration {iters} ({_format_losses(reduced)}, "
                    f"lr={optimizer.param_groups[0]['lr']:.3g}); stopping. Lower --lr, lengthen --warmup-iters, "
                    "set --clip-grad-norm or turn --amp off"
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(losses).backward()
                if clip_grad_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            else:
                losses.backward()
                if clip_grad_norm:
                    nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            if lr_scheduler is not None:
                lr_scheduler.step()
            for k, v in reduced.items():
                sums[k] = sums.get(k, 0.0) + v
            sums["loss"] = sums.get("loss", 0.0) + loss_value
            iters += 1
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", refresh=False)
            if total is not None and iters >= total:
                break
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    out = {k: v / max(iters, 1) for k, v in sums.items()}
    out.update(
        lr=optimizer.param_groups[0]["lr"],
        iters=float(iters),
        time_s=elapsed,
        s_per_iter=elapsed / max(iters, 1),
        mixed=1.0 if mixer is not None else 0.0,
    )
    return out


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def coco_bbox_stats(coco_gt: Any, detections: list[dict[str, Any]], image_ids: Iterable[int]) -> tuple[dict[str, float], str]:
    """Score ``detections`` (COCO results: ``image_id``, ``category_id``, ``bbox`` xywh,
    ``score``) on ``image_ids`` of ``coco_gt`` with ``COCOeval(iouType="bbox")``.

    Returns ``(stats, summary)``: :data:`COCO_STATS` -> value (COCO's -1 where no ground truth
    falls in a bucket) and the text that ``COCOeval.summarize`` prints."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = sorted(set(int(i) for i in image_ids))
    if not ids:
        raise ValueError("image_ids must name at least one image to evaluate, got none")
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        if detections:
            coco_dt = coco_gt.loadRes(list(detections))
        else:  # loadRes refuses an empty list: an empty result set scores 0
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                               "categories": list(coco_gt.dataset["categories"]), "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    return {name: float(v) for name, v in zip(COCO_STATS, evaluator.stats)}, summary.getvalue()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data_loader: Iterable[Any],
    device: torch.device,
    coco_gt: Any,
    label_map: LabelMap,
    *,
    amp: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """COCO bbox metrics of ``model`` on ``data_loader`` (never mixed).

    Each rank predicts its shard; detections and image ids are gathered, duplicates that a
    distributed sampler pads with are removed, rank 0 runs ``COCOeval`` and every rank gets the
    result: :data:`COCO_STATS`, ``images`` (number scored), ``detections`` and ``summary``."""
    model.eval()
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    detections: dict[int, list[dict[str, Any]]] = {}
    bar = _progress(data_loader, progress, desc="eval", leave=False)
    for images, targets in bar:
        images = [img.to(device, non_blocking=True) for img in images]
        images = [img.float().div_(255.0) if img.dtype == torch.uint8 else img.float() for img in images]
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
            outputs = model(images)
        for target, output in zip(targets, outputs):
            boxes = output["boxes"].float().cpu()
            boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
            categories = label_map.to_category_ids(output["labels"].cpu())
            detections[int(target["image_id"])] = [
                {"image_id": int(target["image_id"]), "category_id": c, "bbox": [round(float(v), 3) for v in b],
                 "score": round(float(s), 5)}
                for c, b, s in zip(categories, boxes.tolist(), output["scores"].float().cpu().tolist())
            ]
    merged: dict[int, list[dict[str, Any]]] = {}
    for part in _all_gather(detections):
        merged.update(part)  # the padded duplicates of a DistributedSampler collapse here
    result: dict[str, Any] | None = None
    if is_main_process():
        flat = [d for image_id in sorted(merged) for d in merged[image_id]]
        stats, summary = coco_bbox_stats(coco_gt, flat, merged.keys())
        result = {**stats, "images": len(merged), "detections": len(flat), "summary": summary}
    return _broadcast(result)
