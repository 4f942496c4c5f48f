"""The box-weighted ROI-heads loss of detmix.detection against torchvision's own."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import box_iou

from detmix.detection import (
    LabelMap,
    WeightedRoIHeads,
    build_model,
    supports_box_weights,
    weighted_fastrcnn_loss,
)

NUM_CLASSES = 5


def _head_outputs(seed: int = 0, sizes: tuple[int, ...] = (7, 5)):
    """Random logits/regressions for two images' sampled proposals, with background and
    foreground labels in each image."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    class_logits = torch.randn(n, NUM_CLASSES, generator=g, dtype=torch.float64)
    box_regression = torch.randn(n, NUM_CLASSES * 4, generator=g, dtype=torch.float64)
    labels = [torch.randint(0, NUM_CLASSES, (k,), generator=g) for k in sizes]
    labels[0][:2] = 0  # sure to have background and foreground in each image
    labels[0][2] = 3
    labels[1][0] = 0
    labels[1][1] = 1
    targets = [torch.randn(k, 4, generator=g, dtype=torch.float64) for k in sizes]
    return class_logits, box_regression, labels, targets


def _reference(class_logits, box_regression, labels, targets, weights):
    """The weighted loss one proposal at a time, in plain Python sums."""
    labels, targets, weights = torch.cat(labels), torch.cat(targets), torch.cat(weights)
    n = len(labels)
    cls, box = 0.0, 0.0
    for i in range(n):
        ce = -torch.log_softmax(class_logits[i], dim=0)[labels[i]]
        cls += float(weights[i]) * float(ce)
        if labels[i] > 0:
            k = int(labels[i])
            pred = box_regression[i, 4 * k : 4 * k + 4]
            box += float(weights[i]) * float(F.smooth_l1_loss(pred, targets[i], beta=1 / 9, reduction="sum"))
    return cls / n, box / n


# --------------------------------------------------------------------------------------------
# The loss function
# --------------------------------------------------------------------------------------------


def test_weighted_loss_with_unit_weights_equals_torchvision() -> None:
    logits, regression, labels, targets = _head_outputs()
    expected = fastrcnn_loss(logits, regression, labels, targets)
    ones = [torch.ones(len(lab), dtype=torch.float64) for lab in labels]
    for weights in (None, ones):
        got = weighted_fastrcnn_loss(logits, regression, labels, targets, weights)
        torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=0)


def test_weighted_loss_matches_per_proposal_reference_and_differs_from_unweighted() -> None:
    logits, regression, labels, targets = _head_outputs(seed=3)
    g = torch.Generator().manual_seed(7)
    weights = [torch.rand(len(lab), generator=g, dtype=torch.float64) for lab in labels]
    cls, box = weighted_fastrcnn_loss(logits, regression, labels, targets, weights)
    ref_cls, ref_box = _reference(logits, regression, labels, targets, weights)
    assert float(cls) == pytest.approx(ref_cls, rel=1e-10)
    assert float(box) == pytest.approx(ref_box, rel=1e-10)
    plain = fastrcnn_loss(logits, regression, labels, targets)
    assert abs(float(cls) - float(plain[0])) > 1e-3
    assert abs(float(box) - float(plain[1])) > 1e-3


def test_weighted_loss_is_normalised_by_the_number_of_proposals_not_the_weights() -> None:
    logits, regression, labels, targets = _head_outputs(seed=5)
    half = [torch.full((len(lab),), 0.5, dtype=torch.float64) for lab in labels]
    cls, box = weighted_fastrcnn_loss(logits, regression, labels, targets, half)
    plain = fastrcnn_loss(logits, regression, labels, targets)
    torch.testing.assert_close(cls, 0.5 * plain[0])
    torch.testing.assert_close(box, 0.5 * plain[1])


def test_weighted_loss_refuses_weights_of_the_wrong_length() -> None:
    logits, regression, labels, targets = _head_outputs()
    short = [torch.ones(len(lab) - 1, dtype=torch.float64) for lab in labels]
    with pytest.raises(ValueError, match=r"weights must hold one value per sampled proposal \(12\), got shape \(10,\)"):
        weighted_fastrcnn_loss(logits, regression, labels, targets, short)


# --------------------------------------------------------------------------------------------
# The ROI heads: which weight each sampled proposal gets
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("fasterrcnn_mobilenet_v3_large_320_fpn", NUM_CLASSES, min_size=64, max_size=64)


def _batch(weights: list[list[float]] | None = None):
    g = torch.Generator().manual_seed(11)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 112, 112, generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[5.0, 5.0, 50.0, 40.0], [30.0, 40.0, 100.0, 110.0], [60.0, 0.0, 90.0, 30.0]]),
         "labels": torch.tensor([2, 4, 1])},
    ]
    if weights is not None:
        for target, w in zip(targets, weights):
            target["weights"] = torch.tensor(w)
    return images, targets


def _losses(model: torch.nn.Module, images, targets, seed: int = 0) -> dict[str, torch.Tensor]:
    model.train()
    torch.manual_seed(seed)  # the proposal samplers draw from the global generator
    return model(images, copy.deepcopy(targets))


def test_proposals_take_the_weight_of_their_matched_box_and_background_weighs_one() -> None:
    heads = WeightedRoIHeads.from_roi_heads(
        RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100)
    )
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    # proposals: near box 0, near box 1, far from both (background)
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 9.0], [21.0, 20.0, 40.0, 40.0], [60.0, 60.0, 70.0, 70.0]])]
    targets = [{"boxes": gt, "labels": torch.tensor([2, 3]), "weights": torch.tensor([0.25, 0.75])}]
    torch.manual_seed(0)
    sampled, matched, labels, _ = heads.select_training_samples([p.clone() for p in proposals], targets)
    weights = heads.proposal_weights(targets, matched, labels)[0]
    assert len(weights) == len(labels[0]) == 5  # 3 proposals + the 2 ground-truth boxes
    for box, label, w in zip(sampled[0], labels[0], weights):
        if label == 0:
            assert w == 1.0
        else:
            k = int(torch.argmax(box_iou(box[None], gt)[0]))
            assert int(label) == int(targets[0]["labels"][k])
            assert w == targets[0]["weights"][k]
    assert (labels[0] == 0).sum() == 1 and set(weights.tolist()) == {0.25, 0.75, 1.0}


def test_model_loss_with_unit_weights_equals_the_unweighted_model(small_model: torch.nn.Module) -> None:
    plain = small_model
    weighted = copy.deepcopy(plain)
    weighted.roi_heads = WeightedRoIHeads.from_roi_heads(weighted.roi_heads)
    images, targets = _batch(weights=[[1.0, 1.0], [1.0, 1.0, 1.0]])
    expected = _losses(plain, images, _batch()[1])
    got = _losses(weighted, images, targets)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7)


def test_model_loss_with_other_weights_differs_in_the_roi_heads_only(small_model: torch.nn.Module) -> None:
    weighted = copy.deepcopy(small_model)
    weighted.roi_heads = WeightedRoIHeads.from_roi_heads(weighted.roi_heads)
    images, ones = _batch(weights=[[1.0, 1.0], [1.0, 1.0, 1.0]])
    _, some = _batch(weights=[[0.2, 0.9], [0.5, 0.0, 0.3]])
    a, b = _losses(weighted, images, ones), _losses(weighted, images, some)
    assert b["loss_classifier"].detach() < a["loss_classifier"].detach()  # weights <= 1 only shrink terms
    assert b["loss_box_reg"].detach() < a["loss_box_reg"].detach()
    torch.testing.assert_close(b["loss_objectness"], a["loss_objectness"])
    torch.testing.assert_close(b["loss_rpn_box_reg"], a["loss_rpn_box_reg"])


def test_box_weights_off_ignores_the_weights(small_model: torch.nn.Module) -> None:
    off = copy.deepcopy(small_model)
    off.roi_heads = WeightedRoIHeads.from_roi_heads(off.roi_heads, box_weights=False)
    images, some = _batch(weights=[[0.2, 0.9], [0.5, 0.0, 0.3]])
    expected = _losses(small_model, images, _batch()[1])
    got = _losses(off, images, some)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7)


def test_zero_weights_silence_the_box_regression_gradient(small_model: torch.nn.Module) -> None:
    weighted = copy.deepcopy(small_model)
    weighted.roi_heads = WeightedRoIHeads.from_roi_heads(weighted.roi_heads)
    images, zeros = _batch(weights=[[0.0, 0.0], [0.0, 0.0, 0.0]])
    losses = _losses(weighted, images, zeros)
    assert losses["loss_box_reg"].detach() == 0.0
    losses["loss_box_reg"].backward()
    grad = weighted.roi_heads.box_predictor.bbox_pred.weight.grad
    assert grad is None or float(grad.abs().max()) == 0.0


def test_targets_without_weights_and_images_without_boxes_weigh_one(small_model: torch.nn.Module) -> None:
    weighted = copy.deepcopy(small_model)
    weighted.roi_heads = WeightedRoIHeads.from_roi_heads(weighted.roi_heads)
    images, targets = _batch()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "weights": torch.zeros(0)}
    plain_targets = [dict(targets[0]), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    expected = _losses(small_model, images, plain_targets)
    got = _losses(weighted, images, targets)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([[1.0], [1.0, 1.0, 1.0]], r"targets\[0\]\['weights'\] must be a tensor of shape \(2,\), got \(1,\)"),
        ([[1.0, -0.5], [1.0, 1.0, 1.0]], r"targets\[0\]\['weights'\] must be finite and >= 0, got \[1.0, -0.5\]"),
        ([[1.0, 1.0], [1.0, float("nan"), 1.0]], r"targets\[1\]\['weights'\] must be finite and >= 0"),
    ],
)
def test_bad_weights_are_refused_with_the_target_named(small_model, weights, message) -> None:
    weighted = copy.deepcopy(small_model)
    weighted.roi_heads = WeightedRoIHeads.from_roi_heads(weighted.roi_heads)
    images, targets = _batch(weights=weights)
    with pytest.raises(ValueError, match=message):
        _losses(weighted, images, targets)


# --------------------------------------------------------------------------------------------
# Model factory and label map
# --------------------------------------------------------------------------------------------


def test_build_model_installs_the_weighted_heads_only_when_asked() -> None:
    on = build_model("fasterrcnn_mobilenet_v3_large_320_fpn", 3, box_weights=True)
    off = build_model("fasterrcnn_mobilenet_v3_large_320_fpn", 3, box_weights=False)
    assert type(on.roi_heads) is WeightedRoIHeads and on.roi_heads.box_weights
    assert type(off.roi_heads) is RoIHeads
    assert on.roi_heads.box_predictor.cls_score.out_features == 3
    assert on.transform.min_size == (320,)  # torchvision's default kept when not given
    assert supports_box_weights("fasterrcnn_resnet50_fpn") and not supports_box_weights("retinanet_resnet50_fpn")


def test_build_model_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"model must be one of \[.*'fcos_resnet50_fpn'.*\], got 'yolo'"):
        build_model("yolo", 3)
    with pytest.raises(ValueError, match=r"box_weights is supported for the Faster R-CNN family only .*'retinanet_resnet50_fpn'"):
        build_model("retinanet_resnet50_fpn", 3, box_weights=True)
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 2 \(background included\), got 1"):
        build_model("fasterrcnn_mobilenet_v3_large_320_fpn", 1)
    with pytest.raises(TypeError, match=r"heads must be a torchvision RoIHeads, got Linear"):
        WeightedRoIHeads.from_roi_heads(torch.nn.Linear(2, 2))


def test_label_map_round_trips_coco_ids_with_gaps() -> None:
    label_map = LabelMap.from_categories([90, 1, 13, 2])
    assert label_map.category_ids == (1, 2, 13, 90) and label_map.num_classes == 5
    assert label_map.to_labels([13, 90, 1]).tolist() == [3, 4, 1]
    assert label_map.to_category_ids(torch.tensor([3, 4, 1])) == [13, 90, 1]
    with pytest.raises(ValueError, match=r"category id 12 is not in the label map \(known ids: \[1, 2, 13, 90\]\)"):
        label_map.to_labels([12])
    with pytest.raises(ValueError, match=r"label must be in \[1, 4\], got 0"):
        label_map.to_category_ids([0])
    assert LabelMap.identity(91).to_category_ids([1, 90]) == [1, 90]
