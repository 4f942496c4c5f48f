"""Tests of detmix.synthetic (the synthetic COCO dataset) and detmix.rle (the numpy RLE codec), checked against pycocotools; detmix.data, the former name, still imports."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from detmix import synthetic
from detmix.rle import decode_rle, encode_rle
from detmix.synthetic import CATEGORIES, SyntheticCoco, default_dataset, make_synthetic_coco

maskUtils = pytest.importorskip("pycocotools.mask", reason="pycocotools is the reference for COCO validity")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

SMALL = {"num_train": 3, "num_val": 2, "image_size": (64, 96), "max_objects": 4}


def coco_decode(rle: dict) -> np.ndarray:
    """pycocotools' decoder, minus the numpy 2 DeprecationWarning that pycocotools 2.0.x raises in it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "__array__ implementation doesn't accept a copy", DeprecationWarning)
        return maskUtils.decode(rle)


def load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticCoco:
    return default_dataset(tmp_path_factory.mktemp("data") / "synthetic")


def splits(ds: SyntheticCoco) -> list[tuple[Path, Path]]:
    return [(ds.train_annotations, ds.train_images), (ds.val_annotations, ds.val_images)]


# ------------------------------------------------------------------ generation


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    a = make_synthetic_coco(tmp_path / "a", seed=3, **SMALL)
    b = make_synthetic_coco(tmp_path / "b", seed=3, **SMALL)
    files = files_of(a.root)
    assert len(files) == 2 + SMALL["num_train"] + SMALL["num_val"]
    assert files == files_of(b.root)


def test_other_seed_gives_other_data(tmp_path: Path) -> None:
    a = files_of(make_synthetic_coco(tmp_path / "a", seed=3, **SMALL).root)
    b = files_of(make_synthetic_coco(tmp_path / "b", seed=4, **SMALL).root)
    assert a.keys() == b.keys()
    assert all(a[name] != b[name] for name in a)


def test_val_split_does_not_depend_on_num_train(tmp_path: Path) -> None:
    a = make_synthetic_coco(tmp_path / "a", **{**SMALL, "num_train": 2})
    b = make_synthetic_coco(tmp_path / "b", **{**SMALL, "num_train": 5})
    assert files_of(a.val_images) == files_of(b.val_images)
    assert a.val_annotations.read_bytes() == b.val_annotations.read_bytes()


def test_layout_and_json(dataset: SyntheticCoco) -> None:
    for annotations, images, count in [(*splits(dataset)[0], 48), (*splits(dataset)[1], 16)]:
        coco = load_coco(annotations)
        assert sorted(coco.getImgIds()) == list(range(1, count + 1))
        assert coco.loadCats(coco.getCatIds()) == [dict(c) for c in CATEGORIES]
        assert [c["name"] for c in CATEGORIES] == ["square", "disc", "triangle", "star"]
        ann_ids = [a["id"] for a in coco.dataset["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for info in coco.dataset["images"]:
            with Image.open(images / info["file_name"]) as image:
                assert image.format == "PNG" and image.mode == "RGB"
                assert image.size == (info["width"], info["height"]) == (320, 240)
        per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
        assert min(per_image) >= 1 and max(per_image) <= 6
        assert {a["category_id"] for a in coco.dataset["annotations"]} == {1, 2, 3, 4}


def test_annotations_match_pycocotools(dataset: SyntheticCoco) -> None:
    for annotations, _ in splits(dataset):
        coco = load_coco(annotations)
        for ann in coco.dataset["annotations"]:
            rle = ann["segmentation"]
            assert ann["iscrowd"] == 0
            assert isinstance(rle["counts"], str) and rle["size"] == [240, 320]
            mask = decode_rle(rle)
            np.testing.assert_array_equal(mask, coco_decode(rle))
            assert encode_rle(mask) == rle
            assert isinstance(ann["area"], int) and ann["area"] == int(maskUtils.area(rle)) == int(mask.sum())
            assert ann["bbox"] == maskUtils.toBbox(rle).tolist()
            assert ann["area"] >= 16


def test_bbox_is_the_tight_box_of_the_mask(dataset: SyntheticCoco) -> None:
    coco = load_coco(dataset.val_annotations)
    for ann in coco.dataset["annotations"]:
        mask = decode_rle(ann["segmentation"])
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]


def test_pixels_are_painted_from_the_masks(dataset: SyntheticCoco) -> None:
    for annotations, images in splits(dataset):
        coco = load_coco(annotations)
        for image_id in coco.getImgIds():
            info = coco.imgs[image_id]
            pixels = np.asarray(Image.open(images / info["file_name"]).convert("RGB"))
            masks = [decode_rle(a["segmentation"]) for a in coco.imgToAnns[image_id]]
            # Visible masks never overlap, and each is one flat colour found nowhere else on the image.
            assert int(np.sum(masks, axis=0).max()) == 1
            for mask in masks:
                colours = np.unique(pixels[mask == 1], axis=0)
                assert len(colours) == 1
                np.testing.assert_array_equal((pixels == colours[0]).all(axis=-1), mask == 1)


def test_occluded_shapes_are_annotated_by_their_visible_part(dataset: SyntheticCoco) -> None:
    # Some tight boxes overlap: those shapes touch or overlap, and their masks still do not.
    overlapping = 0
    for annotations, _ in splits(dataset):
        coco = load_coco(annotations)
        for image_id in coco.getImgIds():
            boxes = [a["bbox"] for a in coco.imgToAnns[image_id]]
            for i, (x, y, w, h) in enumerate(boxes):
                for u, v, s, t in boxes[:i]:
                    overlapping += min(x + w, u + s) > max(x, u) and min(y + h, v + t) > max(y, v)
    assert overlapping >= 5


def test_size_buckets_are_all_present_and_cocoeval_scores_ground_truth_perfectly(dataset: SyntheticCoco) -> None:
    gt = load_coco(dataset.val_annotations)
    areas = np.array([a["area"] for a in gt.dataset["annotations"]])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any() and (areas >= 96**2).any()
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
         "segmentation": a["segmentation"], "score": 1.0}
        for a in gt.dataset["annotations"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        for iou_type in ("bbox", "segm"):
            dt = gt.loadRes([dict(r) for r in results])
            evaluator = COCOeval(gt, dt, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            # AP, AP50, AP75, AP small, AP medium, AP large: all 1 (-1 would mean an empty bucket).
            np.testing.assert_allclose(evaluator.stats[:6], 1.0)


def test_torchvision_coco_detection_reads_it(dataset: SyntheticCoco) -> None:
    datasets = pytest.importorskip("torchvision.datasets", reason="torchvision is optional")
    with contextlib.redirect_stdout(io.StringIO()):
        data = datasets.CocoDetection(str(dataset.val_images), str(dataset.val_annotations))
    image, target = data[0]
    assert image.size == (320, 240)
    assert len(target) >= 1 and all(t["image_id"] == data.ids[0] for t in target)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_train": 0}, r"num_train must be an int >= 1, got 0"),
        ({"num_val": -2}, r"num_val must be an int >= 1, got -2"),
        ({"num_train": 2.5}, r"num_train must be an int >= 1, got 2.5"),
        ({"num_val": True}, r"num_val must be an int >= 1, got True"),
        ({"seed": -1}, r"seed must be an int >= 0, got -1"),
        ({"max_objects": 0}, r"max_objects must be an int >= 1, got 0"),
        ({"image_size": (31, 64)}, r"image_size must be \(height, width\) with ints >= 32, got \(31, 64\)"),
        ({"image_size": 64}, r"image_size must be \(height, width\) with ints >= 32, got 64"),
        ({"image_size": (64, 64, 3)}, r"image_size must be \(height, width\) with ints >= 32, got \(64, 64, 3\)"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_synthetic_coco(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_root_must_be_a_path(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"root must be a str or os.PathLike, got int 3"):
        make_synthetic_coco(3)  # type: ignore[arg-type]


# ------------------------------------------------------------------ default_dataset


def test_default_dataset_is_complete_and_reused(dataset: SyntheticCoco, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_generation(*args: object, **kwargs: object) -> None:
        pytest.fail("a complete dataset was generated again")

    monkeypatch.setattr(synthetic, "make_synthetic_coco", no_generation)
    root = dataset.root
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert len(manifest["files"]) == 2 + 48 + 16
    assert set(manifest["files"]) | {"MANIFEST.json"} == set(files_of(root))
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    again = default_dataset(root)
    assert again == dataset == SyntheticCoco.at(root)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no staging folder left behind


def test_default_dataset_equals_make_synthetic_coco_defaults(dataset: SyntheticCoco, tmp_path: Path) -> None:
    made = files_of(make_synthetic_coco(tmp_path).root)
    cached = files_of(dataset.root)
    assert cached.pop("MANIFEST.json")
    assert made == cached


def test_default_dataset_leaves_a_foreign_folder_alone(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"exists but does not hold a complete detmix synthetic dataset"):
        default_dataset(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_default_dataset_fills_an_empty_folder_and_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("DETMIX_DATA_DIR", str(tmp_path / "env"))
    ds = default_dataset()
    assert ds.root == tmp_path / "env"
    assert ds.val_annotations.is_file() and (ds.root / "MANIFEST.json").is_file()


def test_default_dataset_neither_reuses_nor_overwrites_a_damaged_copy(dataset: SyntheticCoco, tmp_path: Path) -> None:
    # A corrupted file makes the folder incomplete: it is not reused, and not overwritten either.
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, data in files_of(dataset.root).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    (copy / "val" / "000003.png").write_bytes(b"truncated")
    with pytest.raises(FileExistsError, match=r"remove it or choose another folder"):
        default_dataset(copy)


def test_default_dataset_racing_callers_get_one_complete_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both callers generate before either renames: one rename wins, the other finds it complete.
    barrier = threading.Barrier(2, timeout=120)
    generate = synthetic.make_synthetic_coco

    def generate_then_wait(*args: object, **kwargs: object) -> SyntheticCoco:
        made = generate(*args, **kwargs)
        barrier.wait()
        return made

    monkeypatch.setattr(synthetic, "make_synthetic_coco", generate_then_wait)
    target = tmp_path / "shared"
    results: list[object] = [None, None]

    def call(k: int) -> None:
        try:
            results[k] = default_dataset(target)
        except BaseException as error:  # reported by the assertion below
            results[k] = error

    threads = [threading.Thread(target=call, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [SyntheticCoco.at(target)] * 2
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]  # the loser's staging folder is gone
    assert len(files_of(target)) == 1 + 2 + 48 + 16


def test_default_dataset_refuses_a_non_path(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"cache_dir must be a str, os.PathLike or None, got int 5"):
        default_dataset(5)  # type: ignore[arg-type]


# ------------------------------------------------------------------ RLE codec


def rectangles_mask(draw: st.DrawFn) -> np.ndarray:
    height = draw(st.integers(1, 80))
    width = draw(st.integers(1, 80))
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(draw(st.integers(0, 4))):
        y0, y1 = sorted(draw(st.lists(st.integers(0, height), min_size=2, max_size=2)))
        x0, x1 = sorted(draw(st.lists(st.integers(0, width), min_size=2, max_size=2)))
        mask[y0:y1, x0:x1] = 1
    return mask


masks = st.one_of(
    arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))),
    st.composite(rectangles_mask)(),
)


@settings(max_examples=300, deadline=None, database=None)
@given(masks)
def test_rle_matches_pycocotools(mask: np.ndarray) -> None:
    ours = encode_rle(mask)
    theirs = maskUtils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours == {"size": list(mask.shape), "counts": theirs["counts"].decode("ascii")}
    decoded = decode_rle(ours)
    assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8))
    np.testing.assert_array_equal(decode_rle(theirs), coco_decode(theirs))
    assert int(maskUtils.area(theirs)) == int(mask.sum())


def test_rle_long_runs_and_empty_canvases() -> None:
    mask = np.zeros((700, 900), dtype=bool)
    mask[5:650, 3:870] = True  # runs far above 2**15 pixels, deltas of both signs
    rle = encode_rle(mask)
    assert rle["counts"] == maskUtils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    np.testing.assert_array_equal(decode_rle(rle), mask)
    for shape in [(0, 3), (4, 0), (0, 0)]:
        empty = np.zeros(shape, dtype=np.uint8)
        assert encode_rle(empty) == {"size": list(shape), "counts": "0"}
        assert decode_rle(encode_rle(empty)).shape == shape


def test_rle_nonzero_is_foreground_and_uncompressed_counts_decode() -> None:
    mask = np.array([[0, 2], [7, 0]], dtype=np.int32)
    assert encode_rle(mask) == encode_rle(mask != 0)
    crowd = {"size": [2, 3], "counts": [1, 2, 0, 3]}  # the list form COCO uses for crowd regions
    np.testing.assert_array_equal(decode_rle(crowd), [[0, 1, 1], [1, 1, 1]])
    np.testing.assert_array_equal(decode_rle(crowd), coco_decode(maskUtils.frPyObjects(crowd, 2, 3)))


@pytest.mark.parametrize(
    ("rle", "error", "match"),
    [
        ([1, 2], TypeError, r"rle must be a dict with 'size' and 'counts', got list \[1, 2\]"),
        ({"size": [2, 2]}, TypeError, r"rle must be a dict with 'size' and 'counts'"),
        ({"size": [2], "counts": "4"}, ValueError, r"rle\['size'\] must be \[height, width\] of non-negative ints"),
        ({"size": [2, -1], "counts": "4"}, ValueError, r"rle\['size'\] must be .* got \[2, -1\]"),
        ({"size": [2, 2], "counts": 4}, TypeError, r"rle\['counts'\] must be a .* got int 4"),
        ({"size": [2, 2], "counts": [1, -1, 4]}, TypeError, r"rle\['counts'\] must be a compressed string"),
        ({"size": [2, 2], "counts": "3"}, ValueError, r"must cover the 2x2 mask \(4 pixels\), got runs summing to 3"),
        ({"size": [2, 2], "counts": "4\x7f"}, ValueError, r"must use characters '0'..'o', got '\\x7f' at 1"),
        ({"size": [2, 2], "counts": "4P"}, ValueError, r"rle\['counts'\] is cut short"),
        ({"size": [2, 2], "counts": "0@"}, ValueError, r"rle\['counts'\] decodes to a negative run \(-16\) at run 1"),
    ],
)
def test_decode_rle_errors(rle: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        decode_rle(rle)  # type: ignore[arg-type]


def test_encode_rle_errors() -> None:
    with pytest.raises(ValueError, match=r"mask must have shape \(H, W\), got shape \(2, 2, 1\)"):
        encode_rle(np.zeros((2, 2, 1), dtype=np.uint8))
    with pytest.raises(TypeError, match=r"mask must be bool or integer, got dtype float32"):
        encode_rle(np.zeros((2, 2), dtype=np.float32))


def test_the_former_module_name_still_imports():
    from detmix import data, rle, synthetic

    assert data.decode_rle is rle.decode_rle and data.encode_rles is rle.encode_rles
    assert data.default_dataset is synthetic.default_dataset and data.make_synthetic_coco is synthetic.make_synthetic_coco
