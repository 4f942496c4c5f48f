"""detmix.albumentations inside real A.Compose pipelines: the core's rules, alignment of boxes,
masks and weights through later transforms, randomness, replay, serialization, and errors."""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

A = pytest.importorskip("albumentations", reason="the Albumentations adapter needs albumentations==2.0.8")

from conftest import COCO_MINI, make_sample  # noqa: E402
from detmix.align import align_pair  # noqa: E402
from detmix.albumentations import (  # noqa: E402
    WEIGHTS_KEY,
    BoxCutMix,
    BoxMixUp,
    MixBboxProcessor,
    OneOfMix,
    from_recipe,
)
from detmix.datasets import from_bbox_format, to_albumentations_item  # noqa: E402
from detmix.mix import apply_params  # noqa: E402
from detmix.sampling import MixParams, sample_params  # noqa: E402

FORMATS = ["coco", "pascal_voc", "albumentations", "yolo"]
VAL_JSON = COCO_MINI / "annotations" / "instances_val2017.json"


def test_pinned_albumentations_version():
    assert A.__version__ == "2.0.8"


# ------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def photos() -> list[dict[str, Any]]:
    """Four coco-mini photographs (detmix samples, with masks) of 2 to 8 objects, of several sizes."""
    if not VAL_JSON.is_file():
        pytest.skip(f"real photographs not found at {COCO_MINI} (the shared coco-mini slice)")
    from detmix.coco import CocoDetectionSource

    raw = json.loads(VAL_JSON.read_text())
    counts: dict[int, int] = {}
    for ann in raw["annotations"]:
        counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + (0 if ann["iscrowd"] else 1)
    sizes = {image["id"]: (image["height"], image["width"]) for image in raw["images"]}
    chosen, seen_sizes = [], set()
    for image_id in sorted(counts):
        if 2 <= counts[image_id] <= 8 and (len(chosen) < 2 or sizes[image_id] not in seen_sizes):
            chosen.append(image_id)
            seen_sizes.add(sizes[image_id])
        if len(chosen) == 4:
            break
    source = CocoDetectionSource(VAL_JSON, COCO_MINI / "val2017", image_ids=chosen)
    samples = [source[i] for i in range(len(source))]
    assert len({s["image"].shape for s in samples}) > 1, "want pairs of different sizes"
    return samples


def item_of(sample: dict[str, Any], fmt: str, *, masks: bool = True, labels: str = "int", id_offset: int = 0):
    """An Albumentations item with per-instance ids (a label field) to follow each object."""
    item = to_albumentations_item(sample, bbox_format=fmt, masks=masks)
    n = len(item["bboxes"])
    if labels == "str":
        item["labels"] = [f"cat{int(v)}" for v in item["labels"]]
    item["ids"] = np.arange(n, dtype=np.int64) + id_offset
    item["xyxy"] = sample["boxes"]  # exact pixels for the reference (Albumentations rounds to float32)
    return item


def compose(transforms: list, fmt: str, *, seed: int | None = 0, **bbox: Any) -> A.Compose:
    return A.Compose(transforms, bbox_params=A.BboxParams(format=fmt, label_fields=["labels", "ids"], **bbox),
                     additional_targets={"crowd_mask": "mask"}, seed=seed)


def call(tf: A.Compose, item: dict[str, Any], partner: dict[str, Any]) -> dict[str, Any]:
    return tf(**item, mix_metadata=[partner])


def core_sample(item: dict[str, Any], fmt: str, *, flip: bool = False) -> dict[str, Any]:
    """The same data as a detmix sample (xyxy pixels), optionally flipped left-right."""
    image = item["image"]
    height, width = image.shape[:2]
    boxes = np.asarray(item["xyxy"], np.float64) if "xyxy" in item else from_bbox_format(item["bboxes"], fmt, height,
                                                                                           width)
    sample = {"image": image, "boxes": boxes, "labels": np.arange(len(boxes))}
    if "masks" in item:
        sample["masks"] = item["masks"]
    if flip:
        sample["image"] = image[:, ::-1]
        sample["boxes"] = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
        if "masks" in sample:
            sample["masks"] = sample["masks"][:, :, ::-1]
    return sample


def reference(tf_mix, item, partner, fmt, *, flip=False):
    """What the core gives for the parameters the transform drew."""
    a, b = align_pair(core_sample(item, fmt, flip=flip), core_sample(partner, fmt), tf_mix.align, fill=tf_mix.fill)
    return apply_params(a, b, MixParams.from_dict(tf_mix.params["mix"]), tf_mix.recipe)


def by_source(ref, first, second):
    """Per output box, the value of ``first`` (rows of the image) or ``second`` (of the partner)."""
    first, second = list(first), list(second)
    return [first[i] if s == 0 else second[i] for s, i in zip(ref["source"].tolist(), ref["index"].tolist())]


def mask_inside_box(mask: np.ndarray, box: np.ndarray, tol: float) -> bool:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return True
    return xs.min() >= box[0] - tol and xs.max() + 1 <= box[2] + tol and ys.min() >= box[1] - tol and \
        ys.max() + 1 <= box[3] + tol


# ------------------------------------------------------------------ the core's rules, every format


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["cutmix", "mixup"])
@pytest.mark.parametrize("masks", [True, False], ids=["masks", "boxes"])
@pytest.mark.parametrize("labels", ["int", "str"])
def test_pipeline_output_equals_the_core(photos, fmt, mode, masks, labels):
    """HorizontalFlip then the mix, on photographs of different sizes: pixels, boxes (in the
    format), labels, ids, weights and masks are those of detmix.apply_params for the drawn params."""
    mix = BoxCutMix(p=1.0, min_visibility=0.2) if mode == "cutmix" else BoxMixUp(p=1.0, min_weight=0.3)
    tf = compose([A.HorizontalFlip(p=1.0), mix], fmt, seed=11)
    seen_dropped = False
    for k in range(len(photos)):
        item = item_of(photos[k], fmt, masks=masks, labels=labels)
        partner = item_of(photos[(k + 1) % len(photos)], fmt, masks=masks, labels=labels, id_offset=1000)
        out = call(tf, item, partner)
        assert mix.params["mix"]["mode"] == mode
        ref = reference(mix, item, partner, fmt, flip=True)
        height, width = out["image"].shape[:2]

        np.testing.assert_array_equal(out["image"], ref["image"])
        np.testing.assert_allclose(from_bbox_format(out["bboxes"], fmt, height, width), ref["boxes"], atol=2e-3)
        assert list(out["ids"]) == by_source(ref, item["ids"], partner["ids"])
        assert list(out["labels"]) == by_source(ref, item["labels"], partner["labels"])
        np.testing.assert_allclose(out[WEIGHTS_KEY], ref["weights"], atol=1e-4)
        assert out[WEIGHTS_KEY].dtype == np.float32
        if masks:
            np.testing.assert_array_equal(out["masks"], ref["masks"])
        else:
            assert "masks" not in out
        seen_dropped |= len(ref["dropped"]["index"]) > 0
    assert seen_dropped, "the thresholds should drop some boxes, or the test proves little"


@pytest.mark.parametrize("weight", ["visibility", "lam", "hard"])
@pytest.mark.parametrize("cls", [BoxCutMix, BoxMixUp])
def test_weight_modes_are_the_cores(cls, weight):
    mix = cls(p=1.0, weight=weight)
    tf = compose([mix], "pascal_voc", seed=2)
    item = small(10, [[1, 1, 20, 20], [25, 5, 59, 39]], [1, 2])
    partner = small(200, [[30, 10, 50, 30], [0, 0, 60, 40]], [3, 4])
    item["xyxy"], partner["xyxy"] = item["bboxes"], partner["bboxes"]
    for _ in range(4):
        out = call(tf, item, partner)
        ref = reference(mix, item, partner, "pascal_voc")
        np.testing.assert_allclose(out[WEIGHTS_KEY], ref["weights"], atol=1e-6)
        lam = mix.params["mix"]["lam"]
        if weight == "hard":
            assert set(out[WEIGHTS_KEY].tolist()) == {1.0}
        elif weight == "lam" or cls is BoxMixUp:  # the share of the box's image
            expected = by_source(ref, [lam] * 2, [1 - lam] * 2)
            np.testing.assert_allclose(out[WEIGHTS_KEY], expected, atol=1e-6)


def test_pad_alignment_grows_the_canvas_and_keeps_geometry(photos):
    item, partner = item_of(photos[0], "pascal_voc"), item_of(photos[2], "pascal_voc", id_offset=1000)
    mix = BoxMixUp(p=1.0, align="pad")
    out = call(compose([mix], "pascal_voc"), item, partner)
    (h1, w1), (h2, w2) = item["image"].shape[:2], partner["image"].shape[:2]
    assert (h1, w1) != (h2, w2)
    assert out["image"].shape[:2] == (max(h1, h2), max(w1, w2)) == out["masks"].shape[1:]
    ref = reference(mix, item, partner, "pascal_voc")
    np.testing.assert_allclose(np.asarray(out["bboxes"], float), ref["boxes"], atol=2e-3)
    # padding moves nothing: every box keeps its input pixels
    expected = by_source(ref, np.asarray(item["bboxes"]), np.asarray(partner["bboxes"]))
    np.testing.assert_allclose(np.asarray(out["bboxes"], float), np.asarray(expected), atol=2e-3)


def test_box_edge_on_a_cut_edge_survives_float32_rounding(monkeypatch):
    """Albumentations stores boxes as float32 fractions: 3/426 comes back as 2.99999994 px. The
    box edge at y=3 lies on the cut edge at y=3, so the core shrinks the box; so must the adapter."""
    import detmix.albumentations as adapter

    assert np.float64(np.float32(3 / 426)) * 426 < 3
    cut = MixParams("cutmix", 1 - 640 * 7 / (426 * 640), (0, 3, 640, 10), (426, 640))
    monkeypatch.setattr(adapter, "draw_params", lambda *args: cut)
    mix = BoxCutMix(p=1.0)
    item = {"image": np.zeros((426, 640, 3), np.uint8), "bboxes": [[0, 3, 640, 50]], "labels": [1], "ids": [0]}
    partner = {"image": np.ones((426, 640, 3), np.uint8), "bboxes": [[0, 20, 5, 25]], "labels": [2], "ids": [1]}
    item["xyxy"], partner["xyxy"] = item["bboxes"], partner["bboxes"]
    out = call(compose([mix], "pascal_voc"), item, partner)
    ref = reference(mix, item, partner, "pascal_voc")
    assert ref["boxes"].tolist() == [[0, 10, 640, 50]]
    np.testing.assert_allclose(out["bboxes"], [[0, 10, 640, 50]], atol=1e-3)


def test_a_sub_millipixel_coordinate_of_an_untouched_box_is_kept():
    """Only a stored float32 fraction that is exactly an integer pixel's is put back on that pixel:
    x1 = 381.0004 is a real coordinate, and a MixUp keeps an untouched box as it came (as A.NoOp)."""
    item = {"image": np.zeros((426, 640, 3), np.uint8), "bboxes": [[381.0004, 10.0, 400.0, 50.0]], "labels": [1],
            "ids": [0]}
    partner = {"image": np.ones((426, 640, 3), np.uint8), "bboxes": [[0.0, 20.0, 5.0, 25.0]], "labels": [2],
               "ids": [1]}
    untouched = call(compose([A.NoOp()], "pascal_voc"), item, partner)["bboxes"]
    assert abs(untouched[0][0] - 381.0004) < 1e-4
    mixed = call(compose([BoxMixUp(p=1.0, lam_clamp=(0.5, 0.5))], "pascal_voc"), item, partner)["bboxes"]
    assert len(mixed) == 2
    np.testing.assert_allclose(mixed[0], untouched[0], rtol=0, atol=1e-5)


# ------------------------------------------------------------------ alignment through later transforms


@pytest.mark.parametrize("fmt", FORMATS)
def test_boxes_masks_weights_stay_aligned_when_later_transforms_drop_boxes(photos, fmt):
    """The mix, then crop, flip and affine with min_visibility filtering: every surviving box keeps
    its mask (mask inside box, one per box), its label and the weight the mix gave it."""
    mix = BoxCutMix(p=1.0, min_visibility=0.1)
    later = [A.RandomCrop(256, 256, pad_if_needed=True, p=1.0), A.HorizontalFlip(p=0.5),
             A.Affine(scale=(0.8, 1.2), translate_percent=(-0.1, 0.1), p=1.0)]
    tf = compose([mix, *later], fmt, seed=5, min_visibility=0.4, min_area=64)
    dropped_later = 0
    for k in range(2 * len(photos)):
        item = item_of(photos[k % len(photos)], fmt, labels="str")
        partner = item_of(photos[(k + 1) % len(photos)], fmt, labels="str", id_offset=1000)
        out = call(tf, item, partner)
        ref = reference(mix, item, partner, fmt)
        weight_of = dict(zip(by_source(ref, item["ids"], partner["ids"]), ref["weights"].tolist()))
        label_of = dict(zip(list(item["ids"]) + list(partner["ids"]), list(item["labels"]) + list(partner["labels"])))

        n = len(out["bboxes"])
        assert len(out["labels"]) == len(out["ids"]) == len(out[WEIGHTS_KEY]) == len(out["masks"]) == n
        assert out["masks"].shape[1:] == out["image"].shape[:2] == (256, 256)
        assert set(out["ids"]) <= set(weight_of)
        for box, mask, ident, label, weight in zip(
            from_bbox_format(out["bboxes"], fmt, 256, 256), out["masks"], out["ids"], out["labels"], out[WEIGHTS_KEY]
        ):
            assert weight == pytest.approx(weight_of[ident], abs=1e-4)
            assert label == label_of[ident]
            assert mask.any() and mask_inside_box(mask, box, tol=2.0)
        dropped_later += len(weight_of) - n
    assert dropped_later > 0, "later transforms should drop some boxes, or the test proves little"


def test_dropped_instances_masks_are_removed_not_zeroed():
    """A crop that removes a box removes its mask: masks[i] stays the mask of bboxes[i]."""
    a = to_albumentations_item(make_sample(60, 80, [[2, 2, 12, 12], [50, 30, 70, 50]], masks=True),
                               bbox_format="pascal_voc")
    a["ids"] = np.array([0, 1])
    # No mix happens (p=0); the detmix transform in the pipeline is what ties masks to boxes.
    tf = compose([A.Crop(x_min=40, y_min=20, x_max=80, y_max=60, p=1.0), BoxCutMix(p=0.0)], "pascal_voc")
    out = tf(**a)
    assert list(out["ids"]) == [1] and out["masks"].shape == (1, 40, 40)
    assert out["masks"][0].sum() == 20 * 20 and out[WEIGHTS_KEY].tolist() == [1.0]


# ------------------------------------------------------------------ randomness, p, partners


def small(fill: int, boxes, labels, masks=True, size=(40, 60)):
    item = to_albumentations_item(make_sample(*size, boxes, labels, fill=fill, masks=masks),
                                  bbox_format="pascal_voc")
    item["ids"] = np.arange(len(item["bboxes"]))
    return item


def test_draws_come_only_from_the_transforms_generator():
    mix = OneOfMix.from_recipe("deit", p=1.0)
    tf = compose([mix], "pascal_voc", seed=3)
    item, partner = small(10, [[1, 1, 20, 20]], [1]), small(200, [[30, 10, 50, 30]], [2])
    for _ in range(6):
        expected = sample_params(copy.deepcopy(mix.random_generator), mix.recipe, 40, 60)
        call(tf, item, partner)
        assert mix.params["mix"] == expected.to_dict()


def test_several_partners_one_is_drawn_then_the_mix():
    mix = BoxMixUp(p=1.0)
    tf = compose([mix], "pascal_voc", seed=1)
    item = small(10, [[1, 1, 20, 20]], [1])
    partners = [small(50 * (k + 1), [[30, 10, 50, 30]], [k + 2]) for k in range(3)]
    chosen = set()
    for _ in range(30):
        rng = copy.deepcopy(mix.random_generator)
        index = int(rng.integers(3))
        expected = sample_params(rng, mix.recipe, 40, 60)
        out = tf(**item, mix_metadata=partners)
        assert mix.params["partner_index"] == index and mix.params["mix"] == expected.to_dict()
        assert out["labels"][-1] == index + 2
        chosen.add(index)
    assert chosen == {0, 1, 2}


def test_same_seed_same_output_and_p_zero_is_identity():
    item, partner = small(10, [[1, 1, 20, 20], [25, 5, 59, 39]], [1, 2]), small(200, [[30, 10, 50, 30]], [3])
    runs = []
    for _ in range(2):
        tf = compose([OneOfMix.from_recipe("deit", p=0.7)], "pascal_voc", seed=42)
        runs.append([call(tf, item, partner) for _ in range(5)])
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first["image"], second["image"])
        np.testing.assert_array_equal(first[WEIGHTS_KEY], second[WEIGHTS_KEY])
    off = call(compose([BoxCutMix(p=0.0)], "pascal_voc"), item, partner)
    np.testing.assert_array_equal(off["image"], item["image"])
    np.testing.assert_allclose(off["bboxes"], item["bboxes"], atol=1e-4)
    assert off[WEIGHTS_KEY].tolist() == [1.0, 1.0] and np.array_equal(off["masks"], item["masks"])


def test_no_partner_is_a_noop_with_one_warning():
    tf = compose([BoxCutMix(p=1.0)], "pascal_voc")
    item = small(10, [[1, 1, 20, 20]], [1])
    with pytest.warns(UserWarning, match=r"BoxCutMix: no partner sample under 'mix_metadata', so nothing is mixed"):
        first = tf(**item)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = tf(**item, mix_metadata=[])
    for out in (first, second):
        np.testing.assert_array_equal(out["image"], item["image"])
        assert out[WEIGHTS_KEY].tolist() == [1.0] and out["labels"].tolist() == [1]


def test_partner_labels_new_strings_and_list_inputs_keep_their_types():
    tf = compose([BoxCutMix(p=1.0, alpha=100.0)], "coco", seed=0)  # lam ~ 0.5: both images show
    item = {"image": np.full((40, 60, 3), 10, np.uint8), "bboxes": [[0, 0, 60, 40]], "labels": ["dog"], "ids": [0]}
    # The partner's boxes as an array must not turn the sample's list output into an array.
    partner = {"image": np.full((40, 60, 3), 200, np.uint8), "bboxes": np.array([[0.0, 0, 60, 40]]),
               "labels": ["zebra"], "ids": [7]}
    out = call(tf, item, partner)
    assert out["labels"] == ["dog", "zebra"] and out["ids"] == [0, 7]
    assert isinstance(out["bboxes"], list) and all(len(b) == 4 for b in out["bboxes"])
    assert item["bboxes"] == [[0, 0, 60, 40]] and "mix_weights" not in item  # inputs untouched


def test_extra_bbox_columns_ride_along():
    tf = A.Compose([BoxMixUp(p=1.0)], bbox_params=A.BboxParams(format="pascal_voc"), seed=0)
    out = tf(image=np.zeros((40, 60, 3), np.uint8), bboxes=np.array([[1, 1, 20, 20, 5.0]]),
             mix_metadata=[{"image": np.ones((40, 60, 3), np.uint8), "bboxes": np.array([[30, 10, 50, 30, 9.0]])}])
    np.testing.assert_allclose(out["bboxes"], [[1, 1, 20, 20, 5], [30, 10, 50, 30, 9]], atol=1e-4)


def test_empty_sides():
    tf = compose([BoxCutMix(p=1.0, alpha=100.0)], "pascal_voc", seed=0)
    empty = {"image": np.zeros((40, 60, 3), np.uint8), "bboxes": [], "labels": [], "ids": [],
             "masks": np.zeros((0, 40, 60), np.uint8)}
    full = small(200, [[0, 0, 60, 40]], [4])
    out = call(tf, empty, full)
    assert out["labels"] == [4] and out["masks"].shape == (1, 40, 60) and len(out[WEIGHTS_KEY]) == 1
    out = call(tf, empty, dict(empty))
    assert out["bboxes"] == [] and out["labels"] == [] and out["masks"].shape == (0, 40, 60)
    assert out[WEIGHTS_KEY].shape == (0,)


# ------------------------------------------------------------------ compositions, replay, serialization


def pipeline(fmt: str = "pascal_voc", seed: int | None = 7) -> A.Compose:
    return compose([A.HorizontalFlip(), OneOfMix.from_recipe("deit", p=0.8), A.RandomBrightnessContrast(),
                    A.Affine(scale=(0.9, 1.1), p=0.5)], fmt, seed=seed)


def outputs(tf, item, partner, n=6):
    return [call(tf, item, partner) for _ in range(n)]


def assert_same(first: list[dict], second: list[dict]):
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(np.asarray(x["bboxes"]), np.asarray(y["bboxes"]))
        np.testing.assert_array_equal(x[WEIGHTS_KEY], y[WEIGHTS_KEY])
        np.testing.assert_array_equal(x["masks"], y["masks"])
        assert list(x["labels"]) == list(y["labels"])


@pytest.mark.parametrize("how", ["dict", "json", "yaml"])
def test_serialization_round_trip_gives_identical_output(photos, how):
    item, partner = item_of(photos[0], "yolo"), item_of(photos[1], "yolo", id_offset=1000)
    original = pipeline("yolo")
    if how == "dict":
        data = A.to_dict(original)
        loaded = A.from_dict(json.loads(json.dumps(data)))
        assert json.loads(json.dumps(A.to_dict(loaded))) == json.loads(json.dumps(data))
    else:
        buffer = io.StringIO()
        A.save(original, buffer, data_format=how)
        buffer.seek(0)
        loaded = A.load(buffer, data_format=how)
    mixes = [t for t in loaded.transforms if isinstance(t, OneOfMix)]
    assert len(mixes) == 1 and mixes[0].cutmix == OneOfMix.from_recipe("deit").cutmix and mixes[0].p == 0.8
    loaded.set_random_seed(7)
    assert_same(outputs(original, item, partner), outputs(loaded, item, partner))


def test_pickled_pipeline_gives_identical_output():
    """DataLoader workers started with spawn/forkserver receive the pipeline pickled."""
    import pickle

    item, partner = small(10, [[1, 1, 20, 20], [25, 5, 59, 39]], [1, 2]), small(200, [[30, 10, 50, 30]], [3])
    original = pipeline()
    copied = pickle.loads(pickle.dumps(original))
    assert isinstance(copied.processors["bboxes"], MixBboxProcessor)
    assert_same(outputs(original, item, partner), outputs(copied, item, partner))


def test_replay_compose_repeats_the_mix_exactly(photos):
    # String labels: the replayed Compose has fresh label encoders, the partner is encoded again.
    item, partner = item_of(photos[0], "coco", labels="str"), item_of(photos[2], "coco", labels="str", id_offset=1000)
    partner["labels"] = [f"partner-{label}" for label in partner["labels"]]
    tf = A.ReplayCompose([A.HorizontalFlip(p=1.0), BoxCutMix(p=1.0, lam_clamp=(0.2, 0.4), min_visibility=0.3)],
                         bbox_params=A.BboxParams(format="coco", label_fields=["labels", "ids"]),
                         additional_targets={"crowd_mask": "mask"})
    tf.set_random_seed(0)  # ReplayCompose takes no seed argument
    out = call(tf, item, partner)
    assert set(out["labels"]) - set(item["labels"]), "want a partner label the sample does not have"
    record = out["replay"]["transforms"][1]
    assert record["applied"] and record["params"]["mix"]["mode"] == "cutmix"
    assert record["params"]["partner_index"] == 0
    again = A.ReplayCompose.replay(out["replay"], **item)  # no mix_metadata: the record has the partner
    assert_same([out], [again])
    # on other data, the same cut of the same partner
    x1, y1, x2, y2 = record["params"]["mix"]["cut_box"]
    black = dict(item, image=np.zeros_like(item["image"]))
    other = A.ReplayCompose.replay(out["replay"], **black)
    np.testing.assert_array_equal(other["image"][y1:y2, x1:x2], out["image"][y1:y2, x1:x2])
    outside = np.ones(other["image"].shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert (other["image"][outside] == 0).all()


def test_inside_one_of_and_some_of():
    item, partner = small(10, [[1, 1, 20, 20]], [1]), small(200, [[30, 10, 50, 30]], [2])
    for container in (A.OneOf([BoxCutMix(p=1.0), BoxMixUp(p=1.0)], p=1.0),
                      A.SomeOf([BoxCutMix(p=1.0), BoxMixUp(p=1.0)], n=1, p=1.0)):
        tf = compose([container], "pascal_voc", seed=0)
        modes = set()
        for _ in range(10):
            for t in container.transforms:
                t.params = {}
            out = call(tf, item, partner)
            used = [t for t in container.transforms if t.params]
            assert len(used) == 1 and len(out[WEIGHTS_KEY]) == len(out["bboxes"])
            modes.add(used[0].params["mix"]["mode"])
        assert modes == {"cutmix", "mixup"}
        assert isinstance(tf.processors["bboxes"], MixBboxProcessor)


def test_strict_compose_knows_the_metadata_key():
    tf = A.Compose([BoxCutMix(p=1.0, metadata_key="partners")],
                   bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "ids"]), strict=True)
    item, partner = small(10, [[1, 1, 20, 20]], [1]), small(200, [[30, 10, 50, 30]], [2])
    out = tf(**item, partners=[partner])
    assert len(out[WEIGHTS_KEY]) == len(out["bboxes"])


def test_serialized_form_names_every_argument():
    data = A.to_dict(A.Compose([BoxCutMix(alpha=0.5, lam_clamp=(0.2, 0.8), p=0.3)]))["transform"]["transforms"][0]
    assert data == {"__class_fullname__": "detmix.albumentations.BoxCutMix", "p": 0.3, "align": "resize",
                    "alpha": 0.5, "fill": 0.0, "lam_clamp": (0.2, 0.8), "metadata_key": "mix_metadata",
                    "min_area": 0.0, "min_size": 1.0, "min_visibility": 0.0, "weight": "visibility"}


# ------------------------------------------------------------------ recipes and arguments


def test_from_recipe_maps_every_field():
    deit = OneOfMix.from_recipe("deit")
    assert deit.switch_prob == 0.5 and deit.mixup["alpha"] == 0.8 and deit.cutmix["alpha"] == 1.0 and deit.p == 1.0
    cut = from_recipe("cutmix")
    assert isinstance(cut, BoxCutMix) and (cut.min_visibility, cut.min_size, cut.align) == (0.25, 2.0, "resize")
    up = from_recipe("mixup", metadata_key="m")
    assert isinstance(up, BoxMixUp) and (up.alpha, up.align, up.metadata_key) == (1.5, "pad", "m")
    assert isinstance(from_recipe("deit"), OneOfMix)
    assert cut.recipe.cutmix.model_dump() == from_recipe("cutmix").recipe.cutmix.model_dump()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: BoxCutMix(alpha=0), r"validation error for BoxCutMix\nalpha\n  Input should be greater than 0"),
        (lambda: BoxCutMix(lam_clamp=(0.8, 0.2)), r"lam_clamp must be \[low, high\] with low <= high"),
        (lambda: BoxCutMix(min_visibility=1.5), r"min_visibility\n  Input should be less than or equal to 1"),
        (lambda: BoxCutMix(weight="soft"), r"weight\n  Input should be 'visibility', 'lam' or 'hard'"),
        (lambda: BoxCutMix(min_area="5"), r"min_area\n  Input should be a valid number"),
        (lambda: BoxMixUp(alpha=True), r"alpha\n  Input should be a valid number"),
        (lambda: BoxMixUp(align="crop"), r"BoxMixUp\nalign\n  Input should be 'pad' or 'resize'"),
        (lambda: BoxMixUp(metadata_key=""), r"metadata_key\n  String should have at least 1 character"),
        (lambda: BoxMixUp(p=2), r"p\n  Input should be less than or equal to 1"),
        (lambda: OneOfMix(cutmix={"alpha": 1.0, "min_visibilty": 0.2}), r"OneOfMix\ncutmix.min_visibilty\n  Extra"),
        (lambda: OneOfMix(switch_prob=-0.1), r"switch_prob\n  Input should be greater than or equal to 0"),
        (lambda: OneOfMix.from_recipe("cutmix"), r"recipe 'cutmix' must have exactly 'mixup' and 'cutmix'"),
        (lambda: OneOfMix.from_recipe({"mixup": {}, "cutmix": {}, "fmix": {}}),
         r"must have exactly 'mixup' and 'cutmix' \(and no odds\) for OneOfMix, got \['cutmix', 'fmix', 'mixup'\]"),
        (lambda: OneOfMix.from_recipe({"mixup": {}, "cutmix": {}, "odds": {"cutmix": 9, "mixup": 1}}),
         r"must have exactly 'mixup' and 'cutmix' \(and no odds\)"),
        (lambda: BoxCutMix.from_recipe({"cutmix": {}, "fmix": {}}), r"only a 'cutmix' section for BoxCutMix, got \['cutmix', 'fmix'\]"),
        (lambda: BoxCutMix.from_recipe("deit"), r"recipe 'deit' must have only a 'cutmix' section"),
        (lambda: BoxMixUp.from_recipe("cutmix"), r"recipe 'cutmix' must have only a 'mixup' section"),
    ],
)
def test_bad_arguments_fail_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_call_errors_name_the_argument():
    tf = compose([BoxCutMix(p=1.0)], "pascal_voc")
    item, partner = small(10, [[1, 1, 20, 20]], [1]), small(200, [[30, 10, 50, 30]], [2])
    with pytest.raises(ValueError, match=r"masks must hold one instance mask per box .* got 2 masks for 1 bboxes"):
        tf(**dict(item, masks=np.zeros((2, 40, 60), np.uint8)), mix_metadata=[partner])
    with pytest.raises(ValueError, match=r"mix_metadata\[0\] has 'bboxes' but lacks the label field\(s\) \['ids'\]"):
        tf(**item, mix_metadata=[{k: v for k, v in partner.items() if k != "ids"}])
    with pytest.raises(ValueError, match=r"mix_metadata\[0\] has no 'masks' but the sample has instance masks"):
        tf(**item, mix_metadata=[{k: v for k, v in partner.items() if k != "masks"}])
    with pytest.raises(ValueError, match=r"mix_metadata\[0\]\['masks'\] must hold one instance mask per box, got 0"):
        tf(**item, mix_metadata=[dict(partner, masks=np.zeros((0, 40, 60), np.uint8))])
    with pytest.raises(ValueError, match=r"mix_metadata\[0\]\['image'\] must have the layout of 'image'"):
        tf(**item, mix_metadata=[dict(partner, image=np.zeros((40, 60, 4), np.uint8))])
    with pytest.raises(TypeError, match=r"mix_metadata\[0\]\['image'\] must have the dtype of 'image' \(uint8\)"):
        tf(**item, mix_metadata=[dict(partner, image=np.zeros((40, 60, 3), np.float32))])
    with pytest.raises(TypeError, match=r"mix_metadata\[0\] must be a dict .* got str"):
        tf(**item, mix_metadata=["partner.jpg"])
    with pytest.raises(TypeError, match=r"mix_metadata must be a list of dicts .* got int"):
        tf(**item, mix_metadata=3)
    with pytest.raises(ValueError, match=r"mix_metadata\[0\]\['bboxes'\]: "):
        tf(**item, mix_metadata=[dict(partner, bboxes=[[30, 10, 20, 30]])])
    with pytest.raises(ValueError, match=r"mixes 'image', 'bboxes' and instance 'masks' only, got the target 'mask'"):
        tf(**item, mask=np.zeros((40, 60), np.uint8), mix_metadata=[partner])


def test_partner_masks_are_ignored_when_the_sample_has_none():
    tf = compose([BoxMixUp(p=1.0)], "pascal_voc")
    item = small(10, [[1, 1, 20, 20]], [1], masks=False)
    out = call(tf, item, small(200, [[30, 10, 50, 30]], [2]))
    assert "masks" not in out and len(out["bboxes"]) == 2


def test_the_module_never_touches_the_user_bbox_params():
    params = A.BboxParams(format="coco", label_fields=["labels"])
    tf = A.Compose([BoxCutMix()], bbox_params=params)
    assert params.label_fields == ["labels"] and A.to_dict(tf)["transform"]["bbox_params"]["label_fields"] == ["labels"]
    assert isinstance(tf.processors["bboxes"], MixBboxProcessor) and tf.processors["bboxes"].params is params


def test_docs_snippet_runs(photos):
    """The README snippet, verbatim but for the data."""
    img, boxes, labels, masks = (item_of(photos[0], "coco")[k] for k in ("image", "bboxes", "labels", "masks"))
    img2, boxes2, labels2, masks2 = (item_of(photos[1], "coco")[k] for k in ("image", "bboxes", "labels", "masks"))
    tf = A.Compose(
        [A.HorizontalFlip(), BoxCutMix(alpha=1.0, min_visibility=0.25, p=0.5), A.RandomBrightnessContrast()],
        bbox_params=A.BboxParams(format="coco", label_fields=["labels"], min_visibility=0.1),
        seed=7,
    )
    for _ in range(4):
        out = tf(image=img, bboxes=boxes, labels=labels, masks=masks,
                 mix_metadata=[{"image": img2, "bboxes": boxes2, "labels": labels2, "masks": masks2}])
        assert len(out["bboxes"]) == len(out["labels"]) == len(out["mix_weights"]) == len(out["masks"])
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "BoxCutMix(alpha=1.0, min_visibility=0.25, p=0.5)" in text


def test_preview_grid_draws_the_pipeline_output(tmp_path):
    from detmix.coco import CocoDetectionSource
    from detmix.synthetic import make_synthetic_coco
    from detmix.preview import preview_grid

    data = make_synthetic_coco(tmp_path, num_train=3, num_val=1, image_size=(64, 96), seed=4, max_objects=3)
    source = CocoDetectionSource(data.train_annotations, data.train_images)
    grid, records = preview_grid(source, "cutmix", num=3, cols=3, seed=1, tile_width=96, bbox_format="yolo",
                                 category_names=source.category_names)
    assert (grid.width, grid.height) == (3 * 96 + 4 * 4, 64 + 16 + 2 * 4)  # tiles, caption bars, padding
    assert len(records) == 3 and all(r["a"] != r["b"] and r["params"]["mode"] == "cutmix" for r in records)
    with pytest.raises(ValueError, match=r"source must hold at least 2 samples to mix, got 1"):
        preview_grid([source[0]])
