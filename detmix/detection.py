"""torchvision detection models fed by detmix: dataset adapter, label map, box-weighted ROI heads.

Three pieces sit between :class:`detmix.coco.CocoDetectionSource` (numpy samples) and a
torchvision detector (``list[Tensor(C, H, W)]`` images in ``[0, 1]`` and ``list[dict]`` targets):

* :class:`LabelMap`: COCO category ids (1..90 with gaps in COCO 2017) to the contiguous labels
  ``1..K`` a model is built for (0 is the background), and back for ``COCOeval``;
* :class:`DetectionDataset`: a map-style dataset of ``(image uint8 (3, H, W), target)`` pairs with
  an optional horizontal flip whose randomness is a pure function of ``(seed, epoch, index)``, so
  the data a seed produces does not depend on the number of workers, on mixing, or on resuming;
* :class:`WeightedRoIHeads` and :func:`weighted_fastrcnn_loss`: the Faster R-CNN box head whose
  classification and box-regression losses weight each sampled proposal by the per-box weight of
  the ground-truth box it was matched to (``targets[i]["weights"]``, written by the mixer);
  background proposals weigh 1. The sums are divided by the number of sampled proposals, as in
  torchvision's :func:`~torchvision.models.detection.roi_heads.fastrcnn_loss`, so with every weight
  1 the loss is torchvision's and a half-visible box contributes half of its loss (the per-box loss
  weights of "Bag of Freebies for Training Object Detection Neural Networks").

:func:`build_model` makes one of :data:`MODELS` with ``weights=None`` unless told otherwise (no
download happens unless weights are named) and installs the weighted head where supported.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads

__all__ = [
    "MODELS",
    "DetectionDataset",
    "LabelMap",
    "WeightedRoIHeads",
    "build_model",
    "collate",
    "derive_seed",
    "get_weights",
    "supports_box_weights",
    "weighted_fastrcnn_loss",
]

#: The detectors :func:`build_model` knows, by torchvision builder name.
MODELS: tuple[str, ...] = (
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
)

#: Models built at a fixed input size, which take no ``min_size`` / ``max_size``.
_FIXED_SIZE = ("ssdlite320_mobilenet_v3_large",)


def supports_box_weights(model_name: str) -> bool:
    """Whether per-box weights can reach the loss of ``model_name`` (the Faster R-CNN family)."""
    return model_name.startswith("fasterrcnn_")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (``seed, epoch, rank, stream``...), through numpy's
    ``SeedSequence`` so that neighbouring inputs give unrelated streams."""
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (int, np.integer)) or part < 0:
            raise ValueError(f"seed parts must be ints >= 0, got {parts!r}")
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelMap:
    """COCO category ids <-> contiguous model labels.

    Label ``k`` (``1 <= k <= K``) is category ``category_ids[k - 1]``; label 0 is the background,
    so a model is built with ``num_classes = K + 1``.
    """

    category_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        ids = tuple(int(i) for i in self.category_ids)
        if not ids:
            raise ValueError("category_ids must name at least one category, got none")
        if len(set(ids)) != len(ids):
            raise ValueError(f"category_ids must be unique, got {list(ids)}")
        object.__setattr__(self, "category_ids", ids)
        object.__setattr__(self, "_label_of", {c: k + 1 for k, c in enumerate(ids)})

    @classmethod
    def from_categories(cls, categories: Iterable[int]) -> LabelMap:
        """Labels 1..K for the sorted category ids."""
        return cls(tuple(sorted(int(c) for c in categories)))

    @classmethod
    def identity(cls, num_classes: int) -> LabelMap:
        """Label ``k`` is category ``k`` (1..num_classes-1): the convention of torchvision's COCO
        weights, which are built for the raw COCO ids (91 classes)."""
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background and one class), got {num_classes}")
        return cls(tuple(range(1, num_classes)))

    @property
    def num_classes(self) -> int:
        """Number of model classes, background included."""
        return len(self.category_ids) + 1

    def to_labels(self, category_ids: Any) -> np.ndarray:
        """int64 labels of an array of category ids; an unknown id is a ``ValueError``."""
        ids = np.asarray(category_ids, dtype=np.int64).reshape(-1)
        lookup = self._label_of  # type: ignore[attr-defined]
        try:
            return np.array([lookup[int(c)] for c in ids], dtype=np.int64)
        except KeyError as error:
            raise ValueError(
                f"category id {error.args[0]} is not in the label map (known ids: {list(self.category_ids)})"
            ) from None

    def to_category_ids(self, labels: Tensor | np.ndarray | Sequence[int]) -> list[int]:
        """Category ids of model labels (1..K)."""
        values = labels.tolist() if isinstance(labels, (Tensor, np.ndarray)) else list(labels)
        out = []
        for label in values:
            if not 1 <= int(label) <= len(self.category_ids):
                raise ValueError(f"label must be in [1, {len(self.category_ids)}], got {label}")
            out.append(self.category_ids[int(label) - 1])
        return out


# --------------------------------------------------------------------------------------------
# Dataset adapter
# --------------------------------------------------------------------------------------------


class DetectionDataset(torch.utils.data.Dataset):
    """A detmix sample source as torchvision detection pairs.

    Args:
        source: a map-style source of detmix numpy samples (``image`` (H, W, 3) uint8,
            ``boxes`` xyxy, ``labels`` = COCO category ids, ``image_id``), such as
            :class:`detmix.coco.CocoDetectionSource`.
        label_map: the category id -> label map of the model.
        hflip_prob: probability of a horizontal flip of each sample (0 for validation).
        seed: seed of the flips; the flip of item ``i`` in epoch ``e`` depends on
            ``(seed, e, i)`` only (:meth:`set_epoch`).

    Items are ``(image, target)``: ``image`` a ``(3, H, W)`` uint8 tensor (converted to float on
    the device, after the batch has been moved there) and ``target`` a dict with ``boxes``
    (N, 4) float32 xyxy, ``labels`` (N,) int64 model labels and ``image_id`` (int).
    """

    def __init__(self, source: Any, label_map: LabelMap, *, hflip_prob: float = 0.0, seed: int = 0) -> None:
        if not isinstance(label_map, LabelMap):
            raise TypeError(f"label_map must be a LabelMap, got {type(label_map).__name__}")
        if isinstance(hflip_prob, bool) or not isinstance(hflip_prob, (int, float)) or not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be a number in [0, 1], got {hflip_prob!r}")
        self.source = source
        self.label_map = label_map
        self.hflip_prob = float(hflip_prob)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose flips :meth:`__getitem__` draws (call before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def image_ids(self) -> tuple[int, ...]:
        return tuple(self.source.image_ids)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        index = operator.index(index)
        sample = self.source[index]
        image = np.ascontiguousarray(sample["image"])
        boxes = np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4)
        labels = self.label_map.to_labels(sample["labels"])
        if self.hflip_prob > 0.0:
            rng = np.random.default_rng(derive_seed(self.seed, self.epoch, index % len(self)))
            if rng.random() < self.hflip_prob:
                width = image.shape[1]
                image = np.ascontiguousarray(image[:, ::-1])
                boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
        target = {
            "boxes": torch.from_numpy(boxes.astype(np.float32, copy=False)).reshape(-1, 4),
            "labels": torch.from_numpy(labels),
            "image_id": int(sample["image_id"]),
        }
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), target


def collate(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """``[(image, target), ...]`` -> ``(images, targets)`` lists: the images keep their sizes."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


# --------------------------------------------------------------------------------------------
# Box-weighted Faster R-CNN loss
# --------------------------------------------------------------------------------------------


def weighted_fastrcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Sequence[Tensor],
    regression_targets: Sequence[Tensor],
    weights: Sequence[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """torchvision's ``fastrcnn_loss`` with one weight per sampled proposal.

    Args:
        class_logits: ``(N, num_classes)`` over all sampled proposals of the batch.
        box_regression: ``(N, num_classes * 4)``.
        labels: per image, ``(n_i,)`` int64 labels of the sampled proposals (0 = background).
        regression_targets: per image, ``(n_i, 4)`` encoded targets.
        weights: per image, ``(n_i,)`` non-negative weights; None means all 1.

    Returns:
        ``(classification_loss, box_loss)``: ``sum_i w_i * CE_i / N`` and
        ``sum_{i positive} w_i * smoothL1_i / N`` (beta 1/9), ``N`` the number of sampled
        proposals. With every weight 1 these are torchvision's losses.
    """
    labels_all = torch.cat(list(labels), dim=0)
    targets_all = torch.cat(list(regression_targets), dim=0)
    n = labels_all.numel()
    if weights is None:
        weights_all = torch.ones(n, dtype=class_logits.dtype, device=class_logits.device)
    else:
        weights_all = torch.cat([w.to(class_logits.dtype) for w in weights], dim=0)
        if weights_all.shape != labels_all.shape:
            raise ValueError(
                f"weights must hold one value per sampled proposal ({n}), got shape {tuple(weights_all.shape)}"
            )
    cross_entropy = F.cross_entropy(class_logits, labels_all, reduction="none")
    classification_loss = (cross_entropy * weights_all).sum() / n

    positive = torch.where(labels_all > 0)[0]
    labels_pos = labels_all[positive]
    num_rows, _ = class_logits.shape
    box_regression = box_regression.reshape(num_rows, box_regression.size(-1) // 4, 4)
    smooth_l1 = F.smooth_l1_loss(
        box_regression[positive, labels_pos], targets_all[positive], beta=1 / 9, reduction="none"
    ).sum(dim=1)
    box_loss = (smooth_l1 * weights_all[positive]).sum() / n
    return classification_loss, box_loss


def _target_weights(target: dict[str, Tensor], index: int, dtype: torch.dtype) -> Tensor | None:
    """The checked per-box weights of ``targets[index]``, or None when it has none."""
    weights = target.get("weights")
    if weights is None:
        return None
    num_boxes = target["boxes"].shape[0]
    if not isinstance(weights, Tensor) or weights.shape != (num_boxes,):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"targets[{index}]['weights'] must be a tensor of shape ({num_boxes},), got {shape}")
    weights = weights.detach().to(dtype)
    if num_boxes and not bool(torch.all(torch.isfinite(weights) & (weights >= 0))):
        raise ValueError(f"targets[{index}]['weights'] must be finite and >= 0, got {weights.tolist()}")
    return weights


class WeightedRoIHeads(RoIHeads):
    """torchvision's :class:`~torchvision.models.detection.roi_heads.RoIHeads` whose training loss
    is :func:`weighted_fastrcnn_loss`: each sampled proposal matched to a ground-truth box (label
    > 0) weighs that box's ``targets[i]["weights"]`` (1 where a target has no weights); background
    proposals weigh 1.

    Only the box head is supported (Faster R-CNN); inference and ``box_weights=False`` are the
    parent's code path unchanged. Build one from an existing head with :meth:`from_roi_heads`.
    """

    def __init__(self, *args: Any, box_weights: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.has_mask() or self.has_keypoint():
            raise ValueError("WeightedRoIHeads supports the box head only (Faster R-CNN), got mask or keypoint heads")
        self.box_weights = bool(box_weights)

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, *, box_weights: bool = True) -> WeightedRoIHeads:
        """The same head (shared submodules, same thresholds) with weighted training loss."""
        if not isinstance(heads, RoIHeads):
            raise TypeError(f"heads must be a torchvision RoIHeads, got {type(heads).__name__}")
        return cls(
            heads.box_roi_pool,
            heads.box_head,
            heads.box_predictor,
            heads.proposal_matcher.high_threshold,
            heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image,
            heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights,
            heads.score_thresh,
            heads.nms_thresh,
            heads.detections_per_img,
            mask_roi_pool=heads.mask_roi_pool,
            mask_head=heads.mask_head,
            mask_predictor=heads.mask_predictor,
            keypoint_roi_pool=heads.keypoint_roi_pool,
            keypoint_head=heads.keypoint_head,
            keypoint_predictor=heads.keypoint_predictor,
            box_weights=box_weights,
        )

    def extra_repr(self) -> str:
        return f"box_weights={self.box_weights}"

    def proposal_weights(
        self, targets: Sequence[dict[str, Tensor]], matched_idxs: Sequence[Tensor], labels: Sequence[Tensor]
    ) -> list[Tensor]:
        """Per image, the weight of each sampled proposal: its matched box's weight where its
        label is > 0, else 1."""
        out = []
        for index, (target, matched, labels_in_image) in enumerate(zip(targets, matched_idxs, labels)):
            dtype = target["boxes"].dtype if target["boxes"].is_floating_point() else torch.float32
            ones = torch.ones(labels_in_image.shape, dtype=dtype, device=labels_in_image.device)
            weights = _target_weights(target, index, dtype)
            if weights is None or weights.numel() == 0:
                out.append(ones)
                continue
            out.append(torch.where(labels_in_image > 0, weights.to(ones.device)[matched], ones))
        return out

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not (self.training and self.box_weights):
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets must be given in training mode")
        for index, target in enumerate(targets):
            if not target["boxes"].is_floating_point():
                raise TypeError(f"targets[{index}]['boxes'] must be a float tensor, got {target['boxes'].dtype}")
            if target["labels"].dtype != torch.int64:
                raise TypeError(f"targets[{index}]['labels'] must be int64, got {target['labels'].dtype}")
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        weights = self.proposal_weights(targets, matched_idxs, labels)
        box_features = self.box_roi_pool(features, proposals, image_shapes)
        box_features = self.box_head(box_features)
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = weighted_fastrcnn_loss(
            class_logits, box_regression, labels, regression_targets, weights
        )
        return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}


# --------------------------------------------------------------------------------------------
# Model factory
# --------------------------------------------------------------------------------------------


def _builder(name: str) -> Any:
    import torchvision.models.detection as detection

    if name not in MODELS:
        raise ValueError(f"model must be one of {list(MODELS)}, got {name!r}")
    return getattr(detection, name)


def get_weights(name: str, argument: str = "weights") -> Any:
    """The torchvision weights enum member called ``name`` (``"ResNet50_Weights.IMAGENET1K_V1"``);
    an unknown name is a ``ValueError`` naming ``argument``. Nothing is downloaded here."""
    import torchvision

    try:
        return torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(
            f"{argument} must name torchvision weights as Enum.MEMBER, e.g. ResNet50_Weights.IMAGENET1K_V1 or "
            f"FasterRCNN_ResNet50_FPN_Weights.COCO_V1, got {name!r}"
        ) from None


def build_model(
    name: str,
    num_classes: int | None,
    *,
    weights: str | None = None,
    weights_backbone: str | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    trainable_backbone_layers: int | None = None,
    box_weights: bool = False,
) -> nn.Module:
    """One of :data:`MODELS`, randomly initialised unless weights are named.

    Args:
        name: torchvision builder name.
        num_classes: classes including the background; None with ``weights`` (the weights' own).
        weights: torchvision weights enum name of the whole detector (e.g.
            ``"FasterRCNN_ResNet50_FPN_Weights.COCO_V1"``); downloaded by torchvision if not cached.
        weights_backbone: weights enum name of the backbone (e.g. ``"ResNet50_Weights.IMAGENET1K_V1"``).
        min_size, max_size: the resize of the model's transform (not for ssdlite320, fixed 320x320).
        trainable_backbone_layers: as in torchvision (default: its own).
        box_weights: install :class:`WeightedRoIHeads` (Faster R-CNN family only).
    """
    builder = _builder(name)
    if box_weights and not supports_box_weights(name):
        raise ValueError(
            f"box_weights is supported for the Faster R-CNN family only (fasterrcnn_*), got model {name!r}"
        )
    kwargs: dict[str, Any] = {
        "weights": get_weights(weights, "weights") if weights else None,
        "weights_backbone": get_weights(weights_backbone, "weights_backbone") if weights_backbone else None,
    }
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}")
        kwargs["num_classes"] = num_classes
    elif weights is None:
        raise ValueError("num_classes must be given when no weights are named")
    if trainable_backbone_layers is not None:
        kwargs["trainable_backbone_layers"] = trainable_backbone_layers
    if name not in _FIXED_SIZE:
        if min_size is not None:
            kwargs["min_size"] = int(min_size)
        if max_size is not None:
            kwargs["max_size"] = int(max_size)
    model = builder(**kwargs)
    if box_weights:
        model.roi_heads = WeightedRoIHeads.from_roi_heads(model.roi_heads, box_weights=True)
    return model

