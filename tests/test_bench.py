"""The logic of the benchmark scripts under bench/, at tiny sizes: the truth and the scores of
bench/fidelity.py on hand-made cases whose answer is known, a tiny end-to-end fidelity run, the
per-sample timer, the classification baseline of bench/training_effect.py, and bench/report.py on
a fake results folder. The scripts are not a package: they are loaded from their files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    key = f"_bench_{name}"  # not a name any package could own
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


fidelity = _load("fidelity")
report = _load("report")


def _sample(masks, labels, size=(40, 60)):
    masks = np.asarray(masks, np.uint8).reshape(-1, *size)
    return {"image": np.zeros((*size, 3), np.uint8), "masks": masks, "labels": np.asarray(labels, np.int64),
            "boxes": fidelity.tight_boxes(masks)}


def _rect(size, x1, y1, x2, y2):
    m = np.zeros(size, np.uint8)
    m[y1:y2, x1:x2] = 1
    return m


# --------------------------------------------------------------------------------------------
# fidelity: the truth
# --------------------------------------------------------------------------------------------


def test_tight_boxes_are_pycocotools_boxes_and_empty_masks_give_zeros():
    rng = np.random.default_rng(0)
    masks = (rng.random((6, 30, 40)) < 0.02).astype(np.uint8)
    masks[5] = 0
    got = fidelity.tight_boxes(masks)
    for mask, box in zip(masks, got):
        if mask.any():
            x, y, w, h = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask)))
            np.testing.assert_allclose(box, [x, y, x + w, y + h])
        else:
            np.testing.assert_array_equal(box, 0)


def test_cutmix_truth_of_a_hand_made_pair():
    size = (40, 60)
    # a: an L-shaped object whose corner the cut takes, a square the cut covers whole, one it misses.
    l_shape = _rect(size, 0, 0, 20, 20) - _rect(size, 10, 0, 20, 10)  # 300 px, the top right 10x10 empty
    a = _sample([l_shape, _rect(size, 30, 0, 40, 10), _rect(size, 50, 30, 60, 40)], [1, 2, 3])
    # b: an object half inside the cut, and one entirely outside it.
    b = _sample([_rect(size, 20, 0, 40, 10), _rect(size, 0, 30, 10, 40)], [4, 5])
    cut = (5, 0, 45, 20)  # x in [5, 45), y in [0, 20)
    truth = fidelity.cutmix_truth(a, b, cut)

    np.testing.assert_array_equal(truth.labels, [1, 2, 3, 4, 5])
    # L-shape: only its columns 0..4 stay (the cut spans its whole height there): 5 x 20 = 100 px.
    np.testing.assert_array_equal(truth.boxes[0], [0, 0, 5, 20])
    assert truth.pixels[0] == 100 and truth.fraction[0] == pytest.approx(100 / 300)
    assert truth.pixels[1] == 0 and truth.fraction[1] == 0  # covered whole: gone
    np.testing.assert_array_equal(truth.boxes[2], [50, 30, 60, 40])
    assert truth.fraction[2] == 1
    np.testing.assert_array_equal(truth.boxes[3], [20, 0, 40, 10])  # wholly inside the cut
    assert truth.fraction[3] == 1
    assert truth.pixels[4] == 0  # b's object outside the cut is not pasted
    np.testing.assert_array_equal(truth.weight, truth.fraction)


def test_mixup_truth_keeps_every_object_whole_with_its_image_share():
    size = (40, 60)
    a = _sample([_rect(size, 0, 0, 10, 10)], [1])
    b = _sample([_rect(size, 5, 5, 25, 15), _rect(size, 30, 20, 35, 30)], [2, 3])
    truth = fidelity.mixup_truth(a, b, 0.7)
    np.testing.assert_array_equal(truth.boxes, [[0, 0, 10, 10], [5, 5, 25, 15], [30, 20, 35, 30]])
    np.testing.assert_allclose(truth.weight, [0.7, 0.3, 0.3])
    np.testing.assert_array_equal(truth.fraction, 1)
    gone = fidelity.mixup_truth(a, b, 1.0)  # b's share 0: its objects show nothing
    np.testing.assert_array_equal(gone.pixels, [100, 0, 0])


def test_region_family_truths_of_a_hand_made_pair():
    size = (40, 60)
    a = _sample([_rect(size, 0, 0, 20, 20), _rect(size, 40, 0, 60, 10)], [1, 2])
    b = _sample([_rect(size, 0, 0, 30, 20), _rect(size, 58, 38, 59, 39)], [3, 4])  # a 30x20 block, a 1-px speck
    # ResizeMix: all of b at half size into the right bottom quarter; a's square keeps what is outside.
    truth = fidelity.resizemix_truth(a, b, (30, 20, 60, 40))
    np.testing.assert_array_equal(truth.labels, [1, 2, 3, 4])
    np.testing.assert_array_equal(truth.boxes[:3], [[0, 0, 20, 20], [40, 0, 60, 10], [30, 20, 45, 30]])
    np.testing.assert_array_equal(truth.fraction[:3], 1)  # b's block shows whole, at half size
    assert truth.pixels[2] == 150 and truth.pixels[3] == 0  # half size reads odd rows and columns: not the speck
    # Cutout: only a's objects, a's square cut on its right, the other erased whole.
    cutout = fidelity.region_truth(a, None, fidelity.region((10, 0, 60, 20), *size))
    np.testing.assert_array_equal(cutout.labels, [1, 2])
    np.testing.assert_array_equal(cutout.boxes, [[0, 0, 10, 20], [0, 0, 0, 0]])
    np.testing.assert_allclose(cutout.fraction, [0.5, 0])
    # Any region: the same as CutMix's truth on a rectangle.
    rect = fidelity.region_truth(a, b, fidelity.region((5, 0, 45, 20), *size))
    np.testing.assert_array_equal(rect.boxes, fidelity.cutmix_truth(a, b, (5, 0, 45, 20)).boxes)


def _family_draw(name, box, size=(40, 60)):
    from detmix import MixParams

    height, width = size
    lam = 1 - (box[2] - box[0]) * (box[3] - box[1]) / (height * width)
    inside = fidelity.region(box, height, width)
    if name == "resizemix":
        params = MixParams(name, lam, None, size, {"paste_box": box})
    elif name == "fmix":  # any region: a disc over the right half (the seed is not read by the kernels scored)
        yy, xx = np.mgrid[0:height, 0:width]
        inside = (xx - 45) ** 2 + (yy - 10) ** 2 < 15**2
        params = MixParams(name, 1 - inside.sum() / inside.size, None, size, {"seed": 0, "decay": 3.0})
    else:
        params = MixParams(name, lam, box, size)
    return fidelity.FamilyDraw(name, params, inside)


def test_detmix_region_modes_with_masks_are_exact_and_their_pixels_are_checked():
    size = (40, 60)
    a = _sample([_rect(size, 0, 0, 20, 20), _rect(size, 40, 0, 60, 10)], [1, 2])
    b = _sample([_rect(size, 0, 0, 30, 20)], [3])
    a["image"] = np.full((*size, 3), 50, np.uint8)
    b["image"] = np.full((*size, 3), 200, np.uint8)
    for name in ("cutout", "saliencymix", "fmix"):
        draw = _family_draw(name, (10, 0, 60, 20))
        truth = fidelity.family_truth(a, b, draw)
        out = fidelity.detmix_family(a, b, draw, masks=True)
        m = fidelity.match(out.boxes, out.labels, truth, 1)
        assert m.missed == [] and m.phantom == [] and all(iou == 1 for _, _, iou in m.matched), name
        naive_out = fidelity.classification_family(a, b, draw)
        naive = fidelity.match(naive_out.boxes, naive_out.labels, truth, 1)
        assert len(naive.phantom) == 1  # a's erased / covered object keeps its box
    draw = _family_draw("resizemix", (30, 20, 60, 40))
    out = fidelity.detmix_family(a, b, draw, masks=True)
    m = fidelity.match(out.boxes, out.labels, fidelity.family_truth(a, b, draw), 1)
    assert m.missed == [] and m.phantom == []
    # The guard: pixels where the truth does not expect them are an error, not a score.
    wrong = fidelity.FamilyDraw("saliencymix", draw.params, fidelity.region((0, 0, 10, 10), *size))
    wrong.params = _family_draw("saliencymix", (10, 0, 60, 20)).params
    with pytest.raises(RuntimeError, match="outside its region|in its region"):
        fidelity.detmix_family(a, b, wrong, masks=True)


def _truth(boxes, labels, pixels):
    boxes = np.asarray(boxes, np.float64)
    pixels = np.asarray(pixels)
    return fidelity.Truth(boxes, np.asarray(labels), pixels, np.ones(len(boxes)), np.ones(len(boxes)))


def test_match_counts_missed_phantom_and_ignores_boxes_on_slivers():
    truth = _truth([[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 10], [0, 30, 2, 32], [45, 30, 55, 40]],
                   [1, 1, 2, 1, 3], [100, 400, 100, 4, 0])  # object 3 is a 4-px sliver, object 4 is gone
    boxes = np.array([
        [0, 0, 10, 10],      # object 0, exact
        [0, 0, 10, 10],      # a duplicate: phantom
        [20, 20, 40, 44],    # object 1, IoU 400/480
        [50, 0, 60, 10],     # object 2's place but class 1: phantom, and object 2 missed
        [0, 30, 2, 32],      # on the sliver: ignored
        [45, 30, 55, 40],    # a box of a gone object: phantom
    ], np.float64)
    labels = np.array([1, 1, 1, 1, 1, 3])
    m = fidelity.match(boxes, labels, truth, min_pixels=16)
    assert sorted((p, t) for p, t, _ in m.matched) == [(0, 0), (2, 1)]
    assert dict(((p, t), iou) for p, t, iou in m.matched)[(2, 1)] == pytest.approx(400 / 480)
    assert m.missed == [2]
    assert sorted(m.phantom) == [1, 3, 5]
    assert m.ignored == [4]
    # The strict reading: the sliver is an object like any other.
    strict = fidelity.match(boxes, labels, truth, min_pixels=1)
    assert (4, 3) in {(p, t) for p, t, _ in strict.matched} and strict.ignored == []


def test_match_refuses_iou_below_one_half_and_a_missing_box_of_a_sliver_is_not_missed():
    truth = _truth([[0, 0, 10, 10], [30, 30, 33, 33]], [1, 1], [100, 9])
    m = fidelity.match(np.array([[0, 0, 10, 21.0]]), np.array([1]), truth, min_pixels=16)  # IoU 100/210
    assert m.matched == [] and m.missed == [0] and m.phantom == [0]
    half = fidelity.match(np.array([[0, 0, 10, 20.0]]), np.array([1]), truth, min_pixels=16)  # IoU exactly 1/2
    assert [(p, t) for p, t, _ in half.matched] == [(0, 0)]
    rounded = fidelity.match(np.array([[0, 0, 10, np.float32(20.000002)]]), np.array([1]), truth, min_pixels=16)
    assert rounded.missed == [] and rounded.phantom == []  # float32 rounding does not turn 1/2 into a miss
    empty = fidelity.match(np.zeros((0, 4)), np.zeros(0), truth, min_pixels=16)
    assert empty.missed == [0] and empty.phantom == []


def test_tally_summary():
    truth = _truth([[0, 0, 10, 10], [20, 0, 30, 10]], [1, 2], [100, 100])
    tally = fidelity.Tally()
    out = fidelity.Output(np.array([[0, 0, 10, 10.0], [50, 50, 60, 60]]), np.array([1, 2]), np.array([0.5, 1.0]))
    tally.add(fidelity.match(out.boxes, out.labels, truth, 16), 2, 2, out.weights, truth)
    s = tally.summary()
    assert (s["missed"], s["phantom"], s["visible_objects"], s["boxes"]) == (1, 1, 2, 2)
    assert s["missed_pct"] == 50 and s["phantom_pct"] == 50 and s["perfect_trials"] == 0
    assert s["mean_iou"] == 1 and s["weight_mae"] == pytest.approx(0.5)


def test_letterbox_keeps_the_aspect_and_pads_with_grey():
    image = np.full((30, 60, 3), 7, np.uint8)
    masks = np.zeros((1, 30, 60), np.uint8)
    masks[0, 10:20, 30:60] = 1
    out, resized = fidelity.letterbox(image, masks, 120)
    assert out.shape == (120, 120, 3) and resized.shape == (1, 120, 120)
    assert (out[:60] == 7).all() and (out[60:] == fidelity.LETTERBOX_FILL).all()
    np.testing.assert_array_equal(fidelity.tight_boxes(resized)[0], [60, 20, 120, 40])


# --------------------------------------------------------------------------------------------
# fidelity: a tiny run end to end
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    from detmix.synthetic import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), num_train=6, num_val=1, image_size=(48, 64), seed=3)


@pytest.fixture(scope="module")
def tiny_fidelity(tiny_coco):
    return fidelity.run([(tiny_coco.train_annotations, tiny_coco.train_images)], pairs=4, seed=0, size=64,
                        min_pixels=4, progress=False)


def _rows(result, key):
    comparison = next(c for c in result["comparisons"] if c["key"] == key)
    return {r["mixer"]: r["by_min_pixels"] for r in comparison["rows"]}


def test_tiny_fidelity_run_detmix_with_masks_is_exact(tiny_fidelity):
    assert tiny_fidelity["config"]["thresholds"] == [4, 1]
    rows = _rows(tiny_fidelity, "cutmix")
    for name in ("detmix with masks",) + (("detmix with masks, Albumentations",)
                                          if "albumentations" not in tiny_fidelity["not_available"] else ()):
        for threshold in ("4", "1"):
            s = rows[name][threshold]
            assert s["trials"] == 4 and s["visible_objects"] > 0
            assert s["missed"] == 0 and s["phantom"] == 0 and s["mean_iou"] >= 0.99 and s["weight_mae"] < 1e-6
    mixup = _rows(tiny_fidelity, "mixup")
    assert mixup["detmix MixUp"]["4"]["missed"] == 0
    # the naive MixUp keeps a's boxes only: it misses exactly b's objects
    naive = mixup["classification MixUp (a's boxes only)"]["4"]
    assert naive["phantom"] == 0 and naive["missed"] == naive["visible_objects"] - naive["boxes"]


@pytest.mark.parametrize("key", ["cutout", "resizemix", "fmix", "saliencymix", "saliencymix-object"])
def test_tiny_fidelity_run_scores_the_region_family_against_its_classification_version(tiny_fidelity, key):
    rows = _rows(tiny_fidelity, key)
    name = key.split("-")[0]
    naive = next(v for k, v in rows.items() if k.startswith("classification "))
    assert set(rows) == {next(k for k in rows if k.startswith("classification ")), "detmix boxes only",
                         f"detmix boxes only, {name} recipe", "detmix with masks"}
    for threshold in ("4", "1"):
        boxes, masks = rows["detmix boxes only"][threshold], rows["detmix with masks"][threshold]
        assert boxes["trials"] == masks["trials"] == naive[threshold]["trials"] == 4
        assert masks["visible_objects"] == naive[threshold]["visible_objects"] > 0
        # recall on visible objects: detmix's at least the classification version's, boxes only and with masks
        assert boxes["missed"] <= naive[threshold]["missed"]
        assert masks["missed"] <= naive[threshold]["missed"]
        if name != "resizemix":  # with masks: exact
            assert masks["missed"] == 0 and masks["phantom"] == 0
            assert masks["mean_iou"] >= 0.99 and masks["weight_mae"] < 1e-6
        # ResizeMix keeps b's boxes as the scaled input boxes, not the tight boxes of the resized masks: on
        # tiny objects their IoU with the truth can fall under 1/2 (docs/benchmarks.md: the ResizeMix table)
    assert tiny_fidelity["comparisons"][[c["key"] for c in tiny_fidelity["comparisons"]].index(key)]["issue"] == 14


def test_tiny_fidelity_run_is_json_and_prints(tiny_fidelity):
    text = json.dumps(tiny_fidelity)
    assert json.loads(text)["benchmark"] == "fidelity"
    lines = fidelity.table_lines(tiny_fidelity)
    assert any(line.startswith("detmix with masks") for line in lines)


def test_ultralytics_cutmix_is_read_back_and_scored(tiny_coco):
    pytest.importorskip("ultralytics", reason="the Ultralytics peer runs in the benchmark environment only")
    size = (64, 64)
    a = _sample(np.zeros((0, *size)), [], size)  # no box of a: every cut Ultralytics draws is free
    b = _sample([_rect(size, 0, 0, 64, 64)], [7], size)
    b["image_id"] = a["image_id"] = 0
    out = fidelity.Ultralytics("cutmix")(a, b, seed=1)
    cut = out.drawn["cut"]
    assert cut is not None
    np.testing.assert_allclose(out.boxes, [cut])  # the whole-canvas box clipped to the cut
    truth = fidelity.cutmix_truth(a, b, cut)
    assert fidelity.match(out.boxes, out.labels, truth, 1).missed == []


# --------------------------------------------------------------------------------------------
# bench_per_sample
# --------------------------------------------------------------------------------------------


def test_per_sample_times_every_available_case_against_the_copy(tiny_coco):
    per_sample = _load("bench_per_sample")
    photos = per_sample.load_photographs(tiny_coco.train_annotations, tiny_coco.train_images, 3, 64)
    assert all(p["image"].shape == (64, 64, 3) and len(p["masks"]) == len(p["boxes"]) for p in photos)
    result = per_sample.run(photos, repeats=2, warmup=0, seed=0, size=64)
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["numpy copy"]["x_copy"] == 1.0
    assert "detmix functional.cutmix (boxes + masks)" in rows
    if "albumentations" not in " ".join(result["not_available"]):
        assert {"detmix BoxCutMix (boxes + masks)", "Albumentations Mosaic (boxes)"} <= set(rows)
    assert all(r["median_ms"] > 0 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] for r in rows.values())


# --------------------------------------------------------------------------------------------
# training_effect: the classification baseline
# --------------------------------------------------------------------------------------------


def test_classification_mix_has_detmix_pixels_and_the_boxes_as_they_were():
    torch = pytest.importorskip("torch")
    from detmix.torch import BatchMix

    training = _load("training_effect")
    images = [torch.randint(0, 255, (3, 32, 48), dtype=torch.uint8).float() for _ in range(3)]
    boxes = torch.tensor([[1.0, 2.0, 20.0, 30.0], [30.0, 0.0, 48.0, 10.0]])
    targets = [{"boxes": boxes.clone(), "labels": torch.tensor([1, 2])} for _ in range(3)]
    recipe = {"name": "c", "prob": 1.0, "cutmix": {"alpha": 1.0}}
    naive = training.ClassificationMix(recipe, per="pair")
    got_images, got_targets = naive(images, targets, generator=torch.Generator().manual_seed(5))
    ref_images, ref_targets = BatchMix(recipe, per="pair")(images, targets, generator=torch.Generator().manual_seed(5))
    for got, ref in zip(got_images, ref_images):
        torch.testing.assert_close(got, ref)
    for got, target in zip(got_targets, targets):
        torch.testing.assert_close(got["boxes"], target["boxes"])
        torch.testing.assert_close(got["labels"], target["labels"])
        torch.testing.assert_close(got["weights"], torch.ones(2))
    assert any(len(r["boxes"]) != 2 or not torch.equal(r["boxes"], t["boxes"]) for r, t in zip(ref_targets, targets))


def test_training_effect_refuses_unknown_arms(capsys):
    training = _load("training_effect")
    with pytest.raises(SystemExit):
        training.main(["--arms", "none,bogus"])
    assert "--arms must name some of" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def _fake_results(folder: Path, fidelity_doc: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fidelity.json").write_text(json.dumps(fidelity_doc))
    (folder / "batch-cpu.json").write_text(json.dumps({
        "machine": {"date": "2026-01-01T00:00:00+00:00", "torch": "2.14.1", "cpu": "fake"},
        "config": {"device": "cpu", "batch": 4, "size": 64},
        "results": [
            {"method": "copy (clone)", "dtype": "uint8", "median_s": 0.001, "images_per_s": 4000.0, "x_copy": 1.0,
             "note": "bound"},
            {"method": "torchvision v2.MixUp", "dtype": "uint8", "median_s": None, "note": "refuses uint8"},
        ],
    }))
    (folder / "training-effect-cpu.json").write_text(json.dumps({
        "benchmark": "training-effect", "date": "2026-01-02", "smoke": True,
        "command": "python bench/training_effect.py",
        "train_options": {"model": "m", "epochs": 1},
        "arms": [{"arm": "none", "final": {"mAP": 0.1, "AP50": 0.2, "AP75": 0.05}, "final_train_loss": 1.5,
                  "history": [{"epoch": 0, "loss": 1.5, "bbox_mAP": 0.1}]}],
    }))
    (folder / "service-cpu.json").write_text(json.dumps({"date": "x", "levels": "not a list of levels"}))
    (folder / "broken.json").write_text("{not json")


def test_report_from_a_fake_results_folder(tmp_path, tiny_fidelity):
    results, out, images = tmp_path / "results", tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "images"
    _fake_results(results, tiny_fidelity)
    done = report.generate(results, out, images, plots=False)
    text = out.read_text()
    assert done["files"]["fidelity.json"] == "fidelity" and done["files"]["batch-cpu.json"] == "batch"
    assert done["files"]["broken.json"].startswith("unreadable")
    assert done["files"]["service-cpu.json"].startswith("not rendered")
    assert set(done["missing"]) == {"per-sample-cpu.json", "core-cpu.json", "batch-cuda.json",
                                    "training-effect-cuda.json"}
    for name in done["missing"]:
        assert f"`{name}`" in text
    assert "## Annotation fidelity" in text and "| detmix with masks | 4 |" in text
    assert "goal (0, 0, >= 0.99) **met**" in text
    assert "### The region family (issue #14)" in text and "### The goals of issue #14, checked" in text
    for title in ("Cutout, shared cut", "ResizeMix, shared paste box", "FMix, shared region",
                  "SaliencyMix, shared cut"):
        assert f"| {title} |" in text and f"### {title}" in text
    assert "| copy (clone) | uint8 | 1 | 4,000 | 1 | bound |" in text
    assert "| torchvision v2.MixUp | uint8 | – |" in text
    assert "A CPU smoke test" in text and "| none | none |" in text
    assert "`broken.json` could not be read" in text and "`service-cpu.json` could not be rendered" in text
    assert "No plots: plots switched off" in text and not images.exists()


def test_report_plots_and_removes_stale_ones(tmp_path, tiny_fidelity):
    pytest.importorskip("matplotlib")
    results, out, images = tmp_path / "results", tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "images"
    _fake_results(results, tiny_fidelity)
    images.mkdir(parents=True)
    (images / "bench-old.png").write_bytes(b"stale")
    (images / "rules.png").write_bytes(b"not ours")
    done = report.generate(results, out, images)
    names = sorted(p.name for p in done["plots"])
    assert names == ["bench-batch-cpu.png", "bench-fidelity.png", "bench-training-effect-cpu.png"]
    assert all((images / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
    assert not (images / "bench-old.png").exists() and (images / "rules.png").exists()
    assert "![fidelity](images/bench-fidelity.png)" in out.read_text()


def test_report_on_an_empty_folder_lists_everything_as_missing(tmp_path):
    done = report.generate(tmp_path / "nothing", tmp_path / "b.md", tmp_path / "img", plots=False)
    assert done["missing"] == list(report.EXPECTED)
    assert "| (none) | | |" in (tmp_path / "b.md").read_text()


@pytest.mark.parametrize("name, kind", [("fidelity.json", "fidelity"), ("per-sample-cpu.json", "per-sample"),
                                        ("batch-cuda.json", "batch"), ("training-effect-cpu.json", "training-effect"),
                                        ("batchy.json", "other"), ("core-cpu.json", "core"),
                                        ("service-budget.json", "service-budget"), ("service-cpu.json", "service")])
def test_kind_of(name, kind):
    assert report.kind_of(name) == kind


# --------------------------------------------------------------------------------------------
# bench_service: where a batch's time goes, and its report
# --------------------------------------------------------------------------------------------


def test_service_stage_breakdown_accounts_for_the_whole_batch():
    bench_service = _load("bench_service")
    coco_mini = REPO.parent / "shared" / "data" / "coco-mini"
    files, coco = bench_service.load_batch(coco_mini, masks=True, size=2)
    fields = {"recipe": "cutmix", "seed": 0, "output": {"format": "jpeg", "quality": 90}}
    out = bench_service.stage_breakdown(files, coco, fields, seconds=0)
    stages = out["stages_ms"]
    assert out["batches"] >= 3 and out["cpu_ms_per_batch"] > 0
    assert list(stages) == [label for label, _, _ in bench_service.STAGES] + ["the rest"]
    # Every stage the service runs on a masks batch was found in the profile...
    assert all(stages[label] > 0 for label, _, _ in bench_service.STAGES)
    # ...and the stages with "the rest" add up to the plain total.
    assert abs(sum(stages.values()) - out["cpu_ms_per_batch"]) < 0.05


def test_report_renders_the_service_breakdown(tmp_path):
    levels = [{"variant": "boxes", "concurrency": 4, "images_per_s": 300.0, "p50_ms": 100.0, "p99_ms": 150.0,
               "images_per_s_per_core": 150.0, "fraction_of_bound_per_core": 0.4, "images_per_server_cpu_s": 190.0,
               "fraction_of_bound_per_cpu_s": 0.5, "statuses": {"200": 10}}]
    data = {"date": "x", "codec_bound": {"images_per_s_per_core": 380.0, "ms_per_batch": 21.0}, "levels": levels,
            "breakdown": {"boxes": {"cpu_ms_per_batch": 40.0, "server_cpu_ms_per_batch": 42.1, "http_and_rest_ms": 2.1,
                                    "stages_ms": {"decode": 12.5, "align partner": 7.5, "the rest": 20.0}}}}
    text = report.render_service("service-cpu.json", data, report.Plots(tmp_path, tmp_path / "x.md", enabled=False)).render()
    assert "| boxes | 4 | 300 | 100 | 150 | 150 | 40.0% | 190 | 50.0% |" in text
    assert "so the 70% goal allows 30 ms" in text
    assert "| boxes | 42.1 | 40 | 12.5 | 7.5 | 20 | 2.1 |" in text
