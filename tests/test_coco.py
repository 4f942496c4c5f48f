"""Tests of detmix.coco.CocoDetectionSource on real COCO (coco-mini) and on the synthetic dataset."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pycocotools", reason="CocoDetectionSource needs pycocotools")

from detmix.coco import CocoDetectionSource  # noqa: E402
from detmix.rle import decode_rle
from detmix.synthetic import SyntheticCoco, make_synthetic_coco  # noqa: E402

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"
needs_coco_mini = pytest.mark.skipif(
    not (COCO_MINI / "annotations" / "instances_val2017.json").is_file(),
    reason=f"coco-mini (a COCO 2017 slice) is not at {COCO_MINI}",
)


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]


def write_coco(path: Path, images: list[dict], annotations: list[dict] | None = None) -> Path:
    dataset = {
        "images": images,
        "annotations": annotations or [],
        "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}],
    }
    path.write_text(json.dumps(dataset))
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCoco:
    return make_synthetic_coco(tmp_path_factory.mktemp("synthetic"), num_train=6, num_val=4, seed=1)


# ------------------------------------------------------------------ coco-mini


@needs_coco_mini
@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_coco_mini_samples(split: str) -> None:
    annotation_file = COCO_MINI / "annotations" / f"instances_{split}.json"
    source = CocoDetectionSource(annotation_file, COCO_MINI / split)
    raw = json.loads(annotation_file.read_text())
    assert len(source) == len(raw["images"])
    assert list(source.image_ids) == sorted(image["id"] for image in raw["images"])
    assert source.category_ids == tuple(sorted(c["id"] for c in raw["categories"]))
    assert source.category_names == {c["id"]: c["name"] for c in sorted(raw["categories"], key=lambda c: c["id"])}
    assert source.category_names[1] == "person"

    seen_boxes, mask_box_gaps = 0, []
    for index in range(len(source)):
        sample = source[index]
        image, boxes, masks = sample["image"], sample["boxes"], sample["masks"]
        height, width = image.shape[:2]
        n = len(boxes)
        assert image.dtype == np.uint8 and image.shape == (height, width, 3)
        assert sample["image_id"] == source.image_ids[index]
        assert sample["file_name"] == source.coco.imgs[sample["image_id"]]["file_name"]
        assert boxes.dtype == np.float32 and boxes.shape == (n, 4)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert sample["labels"].dtype == np.int64 and set(sample["labels"].tolist()) <= set(source.category_ids)
        assert sample["ids"].dtype == np.int64 and sample["ids"].shape == (n,)
        assert sample["area"].dtype == np.float32 and sample["area"].shape == (n,)
        assert sample["iscrowd"].dtype == np.int64 and not sample["iscrowd"].any() and sample["iscrowd"].shape == (n,)
        assert masks.dtype == np.uint8 and masks.shape == (n, height, width) and masks.max(initial=0) <= 1
        for box, mask, ann_id in zip(boxes, masks, sample["ids"]):
            ann = source.coco.anns[int(ann_id)]
            assert not ann["iscrowd"] and ann["image_id"] == sample["image_id"]
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose(box, np.clip([x, y, x + w, y + h], 0, [width, height] * 2), atol=1e-4)
            # A mask never pokes out of its box by a pixel or more. It can be smaller: COCO polygons
            # have sub-pixel spikes that cover no pixel centre (about 7% of masks lose over a pixel).
            x1, y1, x2, y2 = tight_box(mask)
            assert x1 > box[0] - 1 and y1 > box[1] - 1 and x2 < box[2] + 1 and y2 < box[3] + 1
            mask_box_gaps.append(np.abs(np.subtract([x1, y1, x2, y2], box)).max())
        seen_boxes += n
    non_crowd = [a for a in raw["annotations"] if not a["iscrowd"]]
    assert seen_boxes == len(non_crowd) - sum(source.skipped.values()) > 500
    assert np.mean(np.array(mask_box_gaps) <= 1.0) > 0.9


@needs_coco_mini
def test_coco_mini_crowd_regions_stay_out_of_the_boxes() -> None:
    annotation_file = COCO_MINI / "annotations" / "instances_val2017.json"
    raw = json.loads(annotation_file.read_text())
    crowd = [a for a in raw["annotations"] if a["iscrowd"]]
    assert crowd, "coco-mini val2017 is expected to hold crowd annotations"
    image_id = crowd[0]["image_id"]
    crowd_ids = {a["id"] for a in crowd if a["image_id"] == image_id}
    others = [a for a in raw["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]

    source = CocoDetectionSource(annotation_file, COCO_MINI / "val2017", image_ids=[image_id])
    sample = source[0]
    assert len(source) == 1 and sample["image_id"] == image_id
    assert crowd_ids.isdisjoint(sample["ids"].tolist())
    assert len(sample["boxes"]) == len(others) > 0
    assert sample["crowd_boxes"].dtype == np.float32 and sample["crowd_boxes"].shape == (len(crowd_ids), 4)
    crowd_mask = sample["crowd_mask"]
    assert crowd_mask.dtype == np.uint8 and crowd_mask.shape == sample["image"].shape[:2]
    union = np.zeros_like(crowd_mask)
    for ann_id in crowd_ids:
        union |= decode_rle(source.coco.annToRLE(source.coco.anns[ann_id]))
    assert union.any()
    np.testing.assert_array_equal(crowd_mask, union)
    x1, y1, x2, y2 = sample["crowd_boxes"].min(axis=0)[:2].tolist() + sample["crowd_boxes"].max(axis=0)[2:].tolist()
    assert tight_box(crowd_mask) == pytest.approx([x1, y1, x2, y2], abs=1.0)

    boxes_only = CocoDetectionSource(annotation_file, COCO_MINI / "val2017", image_ids=[image_id], masks=False)[0]
    assert "masks" not in boxes_only and "crowd_mask" not in boxes_only
    np.testing.assert_array_equal(boxes_only["crowd_boxes"], sample["crowd_boxes"])
    np.testing.assert_array_equal(boxes_only["boxes"], sample["boxes"])


@needs_coco_mini
def test_coco_mini_min_box_size_skips_and_counts() -> None:
    annotation_file = COCO_MINI / "annotations" / "instances_val2017.json"
    all_boxes = CocoDetectionSource(annotation_file, COCO_MINI / "val2017", masks=False, min_box_size=0)
    big_only = CocoDetectionSource(annotation_file, COCO_MINI / "val2017", masks=False, min_box_size=32)
    assert all_boxes.skipped == {}
    assert sum(big_only.skipped.values()) > 0
    for index, image_id in enumerate(all_boxes.image_ids):
        every, big = all_boxes[index], big_only[index]
        size = np.minimum(every["boxes"][:, 2] - every["boxes"][:, 0], every["boxes"][:, 3] - every["boxes"][:, 1])
        np.testing.assert_array_equal(big["ids"], every["ids"][size >= 32])
        assert big_only.skipped.get(image_id, 0) == int((size < 32).sum())


# ------------------------------------------------------------------ synthetic dataset


def test_synthetic_masks_and_boxes_agree_exactly(synthetic: SyntheticCoco) -> None:
    for annotations, images in [
        (synthetic.train_annotations, synthetic.train_images),
        (synthetic.val_annotations, synthetic.val_images),
    ]:
        source = CocoDetectionSource(annotations, images)
        assert len(source) == len(json.loads(annotations.read_text())["images"])
        assert source.category_names == {1: "square", 2: "disc", 3: "triangle", 4: "star"}
        assert source.skipped == {}
        for index in range(len(source)):
            sample = source[index]
            assert sample["file_name"].endswith(".png") and sample["image"].shape == (240, 320, 3)
            assert len(sample["boxes"]) >= 1
            for box, mask, area in zip(sample["boxes"], sample["masks"], sample["area"]):
                assert tight_box(mask) == box.tolist()
                assert int(mask.sum()) == area
            assert sample["crowd_boxes"].shape == (0, 4) and not sample["crowd_mask"].any()


def test_image_ids_choose_and_order_the_images(synthetic: SyntheticCoco) -> None:
    source = CocoDetectionSource(synthetic.val_annotations, synthetic.val_images, image_ids=[3, 1, 3])
    assert source.image_ids == (3, 1, 3) and len(source) == 3
    assert [source[i]["image_id"] for i in range(3)] == [3, 1, 3]
    assert source[-1]["file_name"] == "000003.png"
    with pytest.raises(IndexError, match=r"index must be in \[-3, 3\), got 3"):
        source[3]
    with pytest.raises(TypeError, match=r"index must be an int, got str"):
        source["0"]  # type: ignore[index]


def test_unknown_image_ids_are_named(synthetic: SyntheticCoco) -> None:
    expected = r"image_ids must be ids of images in instances_val.json, got unknown ids \[99, 0\]"
    with pytest.raises(ValueError, match=expected):
        CocoDetectionSource(synthetic.val_annotations, synthetic.val_images, image_ids=[1, 99, 0])
    with pytest.raises(ValueError, match=r"got unknown ids \[100, 101, .*, 109\] and 2 more"):
        CocoDetectionSource(synthetic.val_annotations, synthetic.val_images, image_ids=range(100, 112))
    with pytest.raises(TypeError, match=r"image_ids must hold ints, got 'a'"):
        CocoDetectionSource(synthetic.val_annotations, synthetic.val_images, image_ids=["a"])
    with pytest.raises(TypeError, match=r"image_ids must be a sequence of ints, got int"):
        CocoDetectionSource(synthetic.val_annotations, synthetic.val_images, image_ids=3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"min_box_size": -1}, ValueError, r"min_box_size must be a finite number >= 0, got -1"),
        ({"min_box_size": float("nan")}, ValueError, r"min_box_size must be a finite number >= 0, got nan"),
        ({"min_box_size": "2"}, ValueError, r"min_box_size must be a finite number >= 0, got '2'"),
        ({"masks": 1}, TypeError, r"masks must be a bool, got int"),
    ],
)
def test_bad_arguments_are_refused(synthetic: SyntheticCoco, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        CocoDetectionSource(synthetic.val_annotations, synthetic.val_images, **kwargs)


def test_boxes_are_clipped_and_small_ones_counted(tmp_path: Path, caplog) -> None:
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "a.png")
    square = [[0, 0, 10, 0, 10, 10, 0, 10]]
    annotations = [
        {"id": 7, "image_id": 5, "category_id": 1, "bbox": [-0.5, 20, 15.5, 10.01], "area": 1.0, "iscrowd": 0,
         "segmentation": square},  # pokes 0.5 px out: clipped, and counted
        {"id": 6, "image_id": 5, "category_id": 1, "bbox": [-5, 20, 20, 10], "area": 1.0, "iscrowd": 0,
         "segmentation": square},  # 5 px out: an error of the annotation, left out and logged
        {"id": 8, "image_id": 5, "category_id": 1, "bbox": [3, 3, 0.5, 9], "area": 1.0, "iscrowd": 0,
         "segmentation": square},
        {"id": 9, "image_id": 5, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16.0, "iscrowd": 0,
         "segmentation": square},
    ]
    images = [{"id": 5, "file_name": "a.png", "height": 30, "width": 40}]
    with caplog.at_level("INFO", logger="detmix.coco"):
        source = CocoDetectionSource(write_coco(tmp_path / "a.json", images, annotations), tmp_path)
    sample = source[0]
    np.testing.assert_array_equal(sample["boxes"], [[0, 20, 15, 30], [1, 1, 5, 5]])
    np.testing.assert_array_equal(sample["ids"], [7, 9])
    assert sample["masks"].shape == (2, 30, 40)
    assert source.skipped == {5: 1} and source.clipped == {5: 1} and source.refused == {5: [6]}
    assert "clipped 1 boxes that poked out of their image by at most 1 px" in caplog.text
    assert "left out 1 annotations whose box pokes more than 1 px out of its image (ids [6])" in caplog.text
    np.testing.assert_array_equal(sample["image"][0, 0], [10, 20, 30])


def test_image_size_must_match_the_json(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    images = [{"id": 1, "file_name": "a.png", "height": 40, "width": 40}]
    source = CocoDetectionSource(write_coco(tmp_path / "a.json", images), tmp_path)
    with pytest.raises(ValueError, match=r"image 'a.png' is 40x30 \(width x height\) but a.json says 40x40"):
        source[0]


# ------------------------------------------------------------------ path safety


@pytest.fixture
def outside_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An image beside the image folder, and Image.open made to fail the test if anything opens it."""
    (tmp_path / "images").mkdir()
    evil = tmp_path / "evil.png"
    Image.new("RGB", (8, 8)).save(evil)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "fine.png")
    real_open = Image.open

    def guarded_open(fp: object, *args: object, **kwargs: object) -> Image.Image:
        if Path(os.fspath(fp)).resolve() == evil.resolve():  # type: ignore[arg-type]
            pytest.fail(f"{fp} outside image_dir was opened")
        return real_open(fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", guarded_open)
    return evil


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "nested dotdot"])
def test_file_names_leading_outside_image_dir_are_refused(tmp_path: Path, outside_file: Path, how: str) -> None:
    if how == "dotdot":
        file_name = "../evil.png"
    elif how == "nested dotdot":
        (tmp_path / "images" / "sub").mkdir()
        file_name = "sub/../../evil.png"
    elif how == "absolute":
        file_name = str(outside_file)
    else:
        file_name = "link.png"
        (tmp_path / "images" / "link.png").symlink_to(outside_file)
    images = [
        {"id": 1, "file_name": "fine.png", "height": 8, "width": 8},
        {"id": 2, "file_name": file_name, "height": 8, "width": 8},
    ]
    source = CocoDetectionSource(write_coco(tmp_path / "a.json", images), tmp_path / "images")
    assert source[0]["image"].shape == (8, 8, 3)  # the guard lets files inside through
    expected = "must be relative to image_dir" if how == "absolute" else "outside image_dir"
    with pytest.raises(ValueError, match=rf"image file_name '{re.escape(file_name)}' .*{expected}"):
        source[1]


def test_symlinks_within_image_dir_are_followed(tmp_path: Path) -> None:
    (tmp_path / "images" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "images" / "sub" / "real.png")
    (tmp_path / "images" / "link.png").symlink_to(tmp_path / "images" / "sub" / "real.png")
    images = [{"id": 1, "file_name": "link.png", "height": 8, "width": 8}]
    sample = CocoDetectionSource(write_coco(tmp_path / "a.json", images), tmp_path / "images")[0]
    np.testing.assert_array_equal(sample["image"][0, 0], [1, 2, 3])


# ------------------------------------------------------------------ errors


def test_missing_pycocotools_says_how_to_install(synthetic: SyntheticCoco, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(ImportError, match=r'pip install "detmix\[coco\]"'):
        CocoDetectionSource(synthetic.val_annotations, synthetic.val_images)


def test_annotation_file_must_be_coco(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"annotation_file '.*a.json' must hold a COCO dict with an 'images' list"):
        CocoDetectionSource(tmp_path / "a.json", tmp_path)
    with pytest.raises(TypeError, match=r"image_dir must be a str or os.PathLike, got NoneType"):
        CocoDetectionSource(tmp_path / "a.json", None)  # type: ignore[arg-type]


def test_masks_need_segmentations(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    images = [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}]
    annotations = [{"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9, "iscrowd": 0}]
    annotation_file = write_coco(tmp_path / "a.json", images, annotations)
    with pytest.raises(ValueError, match=r"annotation 4 has no segmentation; pass masks=False"):
        CocoDetectionSource(annotation_file, tmp_path)[0]
    boxes_only = CocoDetectionSource(annotation_file, tmp_path, masks=False)[0]
    np.testing.assert_array_equal(boxes_only["boxes"], [[1, 1, 4, 4]])
