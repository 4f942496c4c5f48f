"""detmix.datasets: items of any dataset as Albumentations dicts, the COCO dataset, and partner
sampling, alone and in a DataLoader with 2 workers."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

A = pytest.importorskip("albumentations", reason="detmix.datasets feeds Albumentations (albumentations==2.0.8)")
pytest.importorskip("pycocotools", reason="the COCO datasets need pycocotools")

import torch  # noqa: E402

from conftest import COCO_MINI, make_sample  # noqa: E402
from detmix.albumentations import WEIGHTS_KEY, BoxCutMix, BoxMixUp  # noqa: E402
from detmix.coco import CocoDetectionSource  # noqa: E402
from detmix.synthetic import make_synthetic_coco  # noqa: E402
from detmix.datasets import (  # noqa: E402
    CocoAlbumentationsDataset,
    MixDataset,
    from_bbox_format,
    to_albumentations_item,
    to_bbox_format,
)

FORMATS = ["coco", "pascal_voc", "albumentations", "yolo"]
VAL_JSON = COCO_MINI / "annotations" / "instances_val2017.json"
needs_coco_mini = pytest.mark.skipif(
    not VAL_JSON.is_file(), reason=f"real photographs not found at {COCO_MINI} (the shared coco-mini slice)"
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory):
    return make_synthetic_coco(tmp_path_factory.mktemp("synthetic"), num_train=6, num_val=2, image_size=(64, 96),
                               seed=3, max_objects=4)


# ------------------------------------------------------------------ box formats


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("coco", [10, 20, 30, 20]),
        ("pascal_voc", [10, 20, 40, 40]),
        ("albumentations", [10 / 100, 20 / 50, 40 / 100, 40 / 50]),
        ("yolo", [25 / 100, 30 / 50, 30 / 100, 20 / 50]),
    ],
)
def test_bbox_formats_both_ways(fmt, expected):
    boxes = np.array([[10, 20, 40, 40], [0, 0, 100, 50]], np.float64)
    converted = to_bbox_format(boxes, fmt, 50, 100)
    assert converted.dtype == np.float32 and converted.shape == (2, 4)
    np.testing.assert_allclose(converted[0], expected, rtol=1e-6)
    np.testing.assert_allclose(from_bbox_format(converted, fmt, 50, 100), boxes, atol=1e-4)
    assert to_bbox_format([], fmt, 50, 100).shape == (0, 4) and from_bbox_format([], fmt, 50, 100).shape == (0, 4)


def test_bbox_format_is_checked():
    with pytest.raises(ValueError, match=r"bbox_format must be one of \('coco', 'pascal_voc', 'albumentations', "
                                         r"'yolo'\), got 'xywh'"):
        to_bbox_format([[0, 0, 1, 1]], "xywh", 10, 10)


# ------------------------------------------------------------------ items of every kind


def test_detmix_sample_becomes_an_albumentations_item():
    sample = make_sample(40, 60, [[1, 2, 11, 22], [30, 10, 50, 30]], [3, 4], masks=True, ids=[7, 8])
    sample["crowd_boxes"] = np.array([[0, 0, 5, 5]], np.float32)
    sample["image_id"], sample["file_name"] = 12, "a.png"
    item = to_albumentations_item(sample, bbox_format="coco", label_field="category_id")
    assert set(item) == {"image", "bboxes", "category_id", "masks", "crowd_mask", "image_id", "file_name"}
    np.testing.assert_allclose(item["bboxes"], [[1, 2, 10, 20], [30, 10, 20, 20]], atol=1e-4)
    assert item["category_id"].tolist() == [3, 4] and item["category_id"].dtype == np.int64
    np.testing.assert_array_equal(item["masks"], sample["masks"])
    # no crowd_mask given: the crowd region is the pixels of its box
    expected = np.zeros((40, 60), np.uint8)
    expected[0:5, 0:5] = 1
    np.testing.assert_array_equal(item["crowd_mask"], expected)
    assert (item["image_id"], item["file_name"]) == (12, "a.png")
    boxes_only = to_albumentations_item(sample, masks=False)
    assert "masks" not in boxes_only
    np.testing.assert_array_equal(boxes_only["crowd_mask"], expected)
    # a float box covers every pixel it touches
    sample["crowd_boxes"] = np.array([[0.5, 1.2, 3.1, 4.0]], np.float32)
    expected[:] = 0
    expected[1:4, 0:4] = 1
    np.testing.assert_array_equal(to_albumentations_item(sample)["crowd_mask"], expected)


def test_torchvision_style_pairs_and_ready_dicts():
    image = torch.arange(3 * 20 * 30, dtype=torch.uint8).reshape(3, 20, 30)
    target = {"boxes": torch.tensor([[1.0, 2.0, 11.0, 12.0]]), "labels": torch.tensor([5]),
              "masks": torch.ones(1, 20, 30, dtype=torch.uint8)}
    item = to_albumentations_item((image, target), bbox_format="pascal_voc")
    np.testing.assert_array_equal(item["image"], image.permute(1, 2, 0).numpy())
    np.testing.assert_allclose(item["bboxes"], [[1, 2, 11, 12]], atol=1e-4)
    assert item["labels"].tolist() == [5] and item["masks"].shape == (1, 20, 30)
    ready = {"image": np.zeros((4, 4, 3), np.uint8), "bboxes": [[0, 0, 1, 1]], "labels": [1]}
    copied = to_albumentations_item(ready)
    assert copied == ready and copied is not ready


@pytest.mark.parametrize(
    ("item", "error", "message"),
    [
        ("image.jpg", TypeError, r"item must be a dict with 'bboxes' \(Albumentations\) or 'boxes' \(detmix sample\)"),
        ((np.zeros((4, 4, 3), np.uint8), 3), TypeError,
         r"item\[1\] must be a target dict with 'boxes' or a list of COCO annotation dicts, got int"),
        ((np.zeros((4, 4, 3), np.uint8), [{"bbox": [1, 2]}]), ValueError,
         r"annotation 0 must be a COCO dict with bbox \[x, y, w, h\]"),
        (({"boxes": []}, []), TypeError, r"image must be a PIL image, a torch tensor \(C, H, W\) or a numpy array"),
    ],
)
def test_item_errors(item, error, message):
    with pytest.raises(error, match=message):
        to_albumentations_item(item)


# ------------------------------------------------------------------ COCO


@pytest.mark.parametrize("fmt", FORMATS)
def test_coco_dataset_serves_the_source_in_the_format(synthetic, fmt):
    source = CocoDetectionSource(synthetic.train_annotations, synthetic.train_images)
    dataset = CocoAlbumentationsDataset(synthetic.train_annotations, synthetic.train_images, bbox_format=fmt)
    assert len(dataset) == len(source) == 6 and dataset.category_names == source.category_names
    for index in range(len(dataset)):
        item, sample = dataset[index], source[index]
        height, width = item["image"].shape[:2]
        np.testing.assert_allclose(from_bbox_format(item["bboxes"], fmt, height, width), sample["boxes"], atol=1e-3)
        assert item["labels"].tolist() == sample["labels"].tolist()
        np.testing.assert_array_equal(item["masks"], sample["masks"])
        assert item["image_id"] == sample["image_id"] and not item["crowd_mask"].any()
        assert item["crowd_mask"].shape == item["image"].shape[:2]


@needs_coco_mini
def test_coco_mini_crowd_stays_out_of_the_boxes_and_torchvision_coco_detection_agrees():
    from torchvision.datasets import CocoDetection

    raw = json.loads(VAL_JSON.read_text())
    crowd_image = next(a["image_id"] for a in raw["annotations"] if a["iscrowd"])
    plain_image = next(a["image_id"] for a in raw["annotations"] if not a["iscrowd"] and a["image_id"] != crowd_image)
    ids = [crowd_image, plain_image]
    ours = CocoAlbumentationsDataset(VAL_JSON, COCO_MINI / "val2017", bbox_format="yolo", image_ids=ids)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        theirs = CocoDetection(str(COCO_MINI / "val2017"), str(VAL_JSON))
    for index, image_id in enumerate(ids):
        item = ours[index]
        anns = [a for a in raw["annotations"] if a["image_id"] == image_id]
        crowd = [a for a in anns if a["iscrowd"]]
        assert len(item["bboxes"]) <= len(anns) - len(crowd)
        assert bool(item["crowd_mask"].any()) == bool(crowd)
        for ann in crowd:  # the crowd regions are not among the boxes
            crowd_box = np.asarray(ann["bbox"], np.float64)
            yolo = [(crowd_box[0] + crowd_box[2] / 2) / item["image"].shape[1], (crowd_box[1] + crowd_box[3] / 2) /
                    item["image"].shape[0], crowd_box[2] / item["image"].shape[1], crowd_box[3] / item["image"].shape[0]]
            assert not np.isclose(item["bboxes"], yolo, atol=1e-4).all(axis=1).any()
        converted = to_albumentations_item(theirs[theirs.ids.index(image_id)], bbox_format="yolo")
        np.testing.assert_array_equal(converted["image"], item["image"])
        np.testing.assert_allclose(converted["bboxes"], item["bboxes"], atol=1e-6)
        assert converted["labels"].tolist() == item["labels"].tolist()
        np.testing.assert_array_equal(converted["masks"], item["masks"])
        np.testing.assert_array_equal(converted["crowd_mask"], item["crowd_mask"])
    # Both kinds of COCO dataset wrap as they are.
    for dataset in (theirs, CocoDetectionSource(VAL_JSON, COCO_MINI / "val2017", image_ids=ids)):
        mixed = MixDataset(dataset, bbox_format="yolo", seed=0)[0]
        assert mixed["bboxes"].shape[1] == 4 and mixed["masks"].shape[0] == len(mixed["bboxes"])
        (partner,) = mixed["mix_metadata"]
        assert partner["masks"].shape[0] == len(partner["bboxes"]) == len(partner["labels"]) > 0


# ------------------------------------------------------------------ partner sampling


class Items:
    """A tiny map-style dataset of detmix samples: constant images whose fill is the index."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        return make_sample(32, 48, [[2, 2, 30, 30]], [index + 1], fill=index, masks=True)


def partners_of(item: dict[str, Any]) -> list[int]:
    return [int(p["image"][0, 0, 0]) for p in item["mix_metadata"]]


def test_partners_are_other_items_and_reproducible():
    ds = MixDataset(Items(5), num_partners=3, seed=0)
    drawn = []
    for index in range(5):
        item = ds[index]
        assert int(item["image"][0, 0, 0]) == index and item["labels"].tolist() == [index + 1]
        assert len(item["mix_metadata"]) == 3 and index not in partners_of(item)
        assert item["mix_metadata"][0]["bboxes"].shape == (1, 4) and item["mix_metadata"][0]["masks"].shape[0] == 1
        drawn.append(partners_of(item))
    again = MixDataset(Items(5), num_partners=3, seed=0)
    assert [partners_of(again[i]) for i in range(5)] == drawn
    other = MixDataset(Items(5), num_partners=3, seed=1)
    assert [partners_of(other[i]) for i in range(5)] != drawn
    assert set(sum(drawn, [])) == set(range(5))


def test_transform_is_applied_and_single_item_datasets_warn():
    tf = A.Compose([BoxCutMix(p=1.0)], bbox_params=A.BboxParams(format="coco", label_fields=["labels"]), seed=0)
    out = MixDataset(Items(3), tf, seed=0)[1]
    assert len(out[WEIGHTS_KEY]) == len(out["bboxes"]) == len(out["masks"]) and set(out["labels"]) <= {1, 2, 3}
    # The partners (whole images and masks) are not carried on once mixed, unless asked.
    assert "mix_metadata" not in out and set(out) == {"image", "bboxes", "labels", "masks", WEIGHTS_KEY}
    def fresh():
        return A.Compose([BoxCutMix(p=1.0)], bbox_params=A.BboxParams(format="coco", label_fields=["labels"]), seed=0)
    kept = MixDataset(Items(3), fresh(), seed=0, keep_metadata=True)[1]
    assert [int(p["image"][0, 0, 0]) for p in kept["mix_metadata"]] == partners_of(MixDataset(Items(3), seed=0)[1])
    np.testing.assert_array_equal(kept["image"], MixDataset(Items(3), fresh(), seed=0)[1]["image"])
    lonely = MixDataset(Items(1), tf, seed=0)
    with pytest.warns(UserWarning, match=r"no partner sample under 'mix_metadata'"):
        out = lonely[0]
    assert out[WEIGHTS_KEY].tolist() == [1.0]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"dataset": 3}, TypeError, r"dataset must be map-style \(len\(dataset\) and dataset\[i\]\), got int"),
        ({"transform": "flip"}, TypeError, r"transform must be callable or None, got str"),
        ({"num_partners": 0}, ValueError, r"num_partners must be an int >= 1, got 0"),
        ({"metadata_key": ""}, ValueError, r"metadata_key must be a non-empty str, got ''"),
        ({"bbox_format": "xyxy"}, ValueError, r"bbox_format must be one of"),
        ({"seed": -1}, ValueError, r"seed must be a non-negative int or None, got -1"),
        ({"to_item": 1}, TypeError, r"to_item must be callable or None, got int"),
        ({"keep_metadata": "yes"}, TypeError, r"keep_metadata must be a bool, got str"),
    ],
)
def test_mix_dataset_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        MixDataset(**{"dataset": Items(2), **kwargs})


def test_mix_dataset_index_errors():
    ds = MixDataset(Items(2), seed=0)
    assert int(ds[-1]["image"][0, 0, 0]) == 1
    with pytest.raises(IndexError, match=r"index must be in \[-2, 2\), got 2"):
        ds[2]
    with pytest.raises(TypeError, match=r"index must be an int, got str"):
        ds["0"]


# ------------------------------------------------------------------ DataLoader, 2 workers


def collate_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def run_loader(dataset: MixDataset, seed: int, epochs: int = 1) -> list[list[dict[str, Any]]]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate_list,
                                         generator=torch.Generator().manual_seed(seed))
    return [[batch[0] for batch in loader] for _ in range(epochs)]


def test_dataloader_with_two_workers(synthetic):
    """Reproducible from the DataLoader's seed; workers and epochs draw differently even though
    the Compose has a fixed seed (every worker would otherwise repeat one stream)."""
    coco = CocoAlbumentationsDataset(synthetic.train_annotations, synthetic.train_images, bbox_format="yolo")
    tf = A.Compose([A.HorizontalFlip(), BoxMixUp(p=1.0, weight="lam")],
                   bbox_params=A.BboxParams(format="yolo", label_fields=["labels"]),
                   additional_targets={"crowd_mask": "mask"}, seed=7)
    dataset = MixDataset(coco, tf, bbox_format="yolo", seed=0)
    first, second = run_loader(dataset, seed=0, epochs=2)
    (again,) = run_loader(dataset, seed=0)
    assert len(first) == len(coco) == 6
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x[WEIGHTS_KEY], y[WEIGHTS_KEY])
        assert len(x["bboxes"]) == len(x["labels"]) == len(x["masks"]) == len(x[WEIGHTS_KEY])
        assert "mix_metadata" not in x  # the partners stay in the worker
    # weight="lam": the sample's boxes weigh lam, so each item shows the lam its worker drew.
    lams = [round(float(item[WEIGHTS_KEY][0]), 6) for item in first]
    worker0, worker1 = lams[0::2], lams[1::2]  # batches go to the workers in turn
    assert worker0 != worker1
    assert lams != [round(float(item[WEIGHTS_KEY][0]), 6) for item in second]


def test_coco_annotations_that_poke_out_are_clipped_or_left_out_and_said(caplog):
    """The list-of-annotations path (torchvision's CocoDetection) logs what the one rule did, as
    CocoDetectionSource does: a clip of at most 1 px at info, a box left out naming its id."""
    import logging

    image = np.zeros((40, 60, 3), np.uint8)
    anns = [{"id": 7, "image_id": 3, "bbox": [50.0, 5.0, 10.01, 5.0], "category_id": 1, "iscrowd": 0},  # 0.01 px
            {"id": 8, "image_id": 3, "bbox": [50.0, 5.0, 12.5, 5.0], "category_id": 1, "iscrowd": 0},  # 2.5 px
            {"id": 9, "image_id": 3, "bbox": [1.0, 1.0, 5.0, 5.0], "category_id": 2, "iscrowd": 0}]
    with caplog.at_level(logging.INFO, logger="detmix.datasets"):
        item = to_albumentations_item((image, anns), bbox_format="pascal_voc", masks=False)
    np.testing.assert_allclose(item["bboxes"], [[50, 5, 60, 10], [1, 1, 6, 6]])
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "detmix.datasets"]
    assert any(level == logging.INFO and "image 3" in text and "clipped 1 box" in text
               for level, text in records), records
    assert any(level == logging.WARNING and "image 3" in text and "[8]" in text for level, text in records), records


def test_datasets_do_not_import_the_albumentations_adapter():
    """detmix.datasets and detmix.albumentations imported each other; the adapter now depends on
    the datasets (for METADATA_KEY) and not the other way round."""
    code = "import sys, detmix.datasets; assert 'detmix.albumentations' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
