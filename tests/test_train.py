"""The training script: options and configs, data and seeds, COCO evaluation, end-to-end runs
(embedded synthetic data, coco-mini, two processes over gloo) and resuming."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from detmix.detection import DetectionDataset, LabelMap, collate
from detmix.engine import (
    NonFiniteLossError,
    build_lr_scheduler,
    coco_bbox_stats,
    evaluate,
    lr_multiplier,
    prepare_batch,
    train_one_epoch,
)
from detmix.train import build, cli, parse_args

from conftest import REPO

TRAIN_CONFIGS = REPO / "configs" / "train"
#: A few iterations on small images: every end-to-end run below uses these.
SMOKE = ["--max-iters", "2", "--batch-size", "2", "--workers", "0", "--min-size", "128", "--max-size", "160",
         "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="session")
def synthetic_env(tmp_path_factory: pytest.TempPathFactory):
    """The embedded dataset generated into a temporary folder, for this process and children."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DETMIX_DATA_DIR", str(tmp_path_factory.mktemp("detmix-data") / "synthetic"))
    from detmix.synthetic import default_dataset

    yield default_dataset()
    mp.undo()


def _records(output_dir: Path) -> list[dict[str, Any]]:
    lines = (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _checkpoint(output_dir: Path) -> dict[str, Any]:
    return torch.load(output_dir / "checkpoint.pth", map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------
# Options and configs
# --------------------------------------------------------------------------------------------


def test_defaults_are_the_synthetic_cpu_config() -> None:
    plain = vars(parse_args([]))
    from_file = vars(parse_args(["--config", str(TRAIN_CONFIGS / "synthetic-cpu.yaml")]))
    for key in ("config", "config_values"):
        plain.pop(key), from_file.pop(key)
    assert plain == from_file


def test_coco_config_is_the_torchvision_schedule_and_the_command_line_wins() -> None:
    args = parse_args(["--config", str(TRAIN_CONFIGS / "coco-frcnn-r50.yaml"), "--lr", "0.0025"])
    assert args.model == "fasterrcnn_resnet50_fpn"
    assert (args.epochs, args.lr_steps, args.lr_gamma, args.batch_size) == (26, [16, 22], 0.1, 2)
    assert (args.momentum, args.weight_decay, args.warmup_iters) == (0.9, 1e-4, 1000)
    assert (args.min_size, args.max_size, args.box_weights, args.amp) == (800, 1333, "on", True)
    assert args.lr == 0.0025  # overridden; the file says 0.02
    assert args.config_values["lr"] == 0.02 and args.config_values["recipe"] == "mixup"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("lrr: 0.1\n", r"config '.*bad.yaml': unknown key 'lrr'; the keys are the long options: \[.*'lr'"),
        ("model: yolo\n", r"config '.*bad.yaml': argument --model: invalid choice: 'yolo'"),
        ("amp: 1\n", r"config '.*bad.yaml': amp must be true or false, got 1"),
        ("epochs: 0\n", r"config '.*bad.yaml': argument --epochs: must be an int >= 1, got '0'"),
        ("- 1\n", r"argument --config: '.*bad.yaml' must hold a mapping of options, got list"),
    ],
)
def test_config_errors_name_the_file_the_key_and_the_value(tmp_path: Path, capsys, config: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(config)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", str(path)])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_help_and_docs_say_a_one_epoch_run_mixes_nothing_by_default(capsys) -> None:
    assert parse_args([]).no_mix_epochs == 1
    with pytest.raises(SystemExit):
        parse_args(["--help"], prog="detmix train")
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("--no-mix-epochs NO_MIX_EPOCHS switch mixing off for the last N epochs; with the default, a 1-epoch "
            "run mixes nothing: give 0 to mix in a short smoke run (default: 1)") in help_text
    docs = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    smoke_section = docs[docs.index("### A small run on the CPU"):docs.index("### COCO 2017")]
    assert "detmix train --epochs 1 --no-mix-epochs 0" in smoke_section
    assert "**A 1-epoch run mixes nothing unless you say `--no-mix-epochs 0`**" in " ".join(smoke_section.split())


def test_command_line_errors_name_the_argument(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--model", "yolo"])
    err = capsys.readouterr().err
    assert "argument --model: invalid choice: 'yolo' (choose from" in err and "fcos_resnet50_fpn" in err
    with pytest.raises(SystemExit):
        parse_args(["--lr", "fast"])
    assert "argument --lr: must be a finite number >= 0, got 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--config", "no/such.yaml"])
    assert "argument --config: file 'no/such.yaml' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train-annotations", "missing.json", "--train-images", ".", "--val-annotations", "missing.json",
          "--val-images", "."], "--train-annotations: annotation file 'missing.json' does not exist"),
        (["--train-annotations", "x.json"], "--train-images, --val-annotations, --val-images are required when "
                                            "--train-annotations is given without --data-path"),
        (["--data-path", "no/such/coco"], "--data-path must be a COCO root folder, got 'no/such/coco', which does not "
                                          "exist"),
        (["--data-path", "."], "--data-path (COCO 2017 layout: annotations/instances_train2017.json): annotation file "
                               "'annotations/instances_train2017.json' does not exist"),
        (["--model", "retinanet_resnet50_fpn", "--box-weights", "on"],
         "--box-weights on: per-box weights reach the loss of the Faster R-CNN family only (fasterrcnn_*), got "
         "--model retinanet_resnet50_fpn; use --box-weights off or auto"),
        (["--weights-backbone", "ResNet50_Weights.NOPE"], "--weights-backbone must name torchvision weights as "
                                                          "Enum.MEMBER, e.g. ResNet50_Weights.IMAGENET1K_V1"),
        (["--eval-only"], "--eval-only needs a model to score: give --resume CHECKPOINT or --weights NAME"),
        (["--recipe", "bogus"], "--recipe: recipe must be one of ['copy_paste', 'cutmix', 'cutout', 'deit', 'fmix', 'mixup', 'resizemix', 'saliencymix'] or a path to a YAML "
                                "file, got 'bogus'"),
        (["--epochs", "2", "--no-mix-epochs", "3"], "--no-mix-epochs must be <= --epochs (2), got 3"),
        (["--resume", "no/such.pth"], "--resume: checkpoint 'no/such.pth' does not exist"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"],
         "--device cuda:7: CUDA is not available on this machine; use --device cpu" if not torch.cuda.is_available() else "--device must be auto, cpu, cuda or cuda:N"),
        (["--batch-size", "9", "--train-subset", "8"],
         "--batch-size 9 x 1 process(es) needs at least 9 training images, got 8"),
    ],
)
def test_bad_runs_stop_with_a_message_naming_the_argument(synthetic_env, tmp_path, capsys, argv, message) -> None:
    code = cli([*argv, "--output-dir", str(tmp_path), "--no-progress"], prog="detmix train")
    assert code == 2
    assert f"detmix train: error: {message}" in capsys.readouterr().err


def test_missing_image_files_stop_the_run_before_the_first_step(synthetic_env, tmp_path, capsys) -> None:
    # A copy of the synthetic dataset whose train folder lacks 7 of its images: the run must stop at
    # once with one line naming the count and the first few, not in a DataLoader worker mid-epoch.
    import shutil

    images = tmp_path / "train"
    shutil.copytree(synthetic_env.train_images, images)
    listed = json.loads(synthetic_env.train_annotations.read_text(encoding="utf-8"))["images"]
    gone = sorted(listed, key=lambda info: info["id"])[3:10]
    for info in gone:
        (images / info["file_name"]).unlink()
    argv = [*SMOKE, "--workers", "2", "--train-annotations", str(synthetic_env.train_annotations),
            "--train-images", str(images), "--val-annotations", str(synthetic_env.val_annotations),
            "--val-images", str(synthetic_env.val_images), "--output-dir", str(tmp_path / "out")]
    assert cli(argv, prog="detmix train") == 2
    err = capsys.readouterr().err
    first = ", ".join(repr(info["file_name"]) for info in gone[:5])
    assert err == (f"detmix train: error: --train-images: 7 of the {len(listed)} images listed in "
                   f"{str(synthetic_env.train_annotations)!r} are missing from {str(images)!r}: {first} and 2 more\n")
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


# --------------------------------------------------------------------------------------------
# Learning rate and loss guard
# --------------------------------------------------------------------------------------------


def test_lr_schedule_warms_up_then_steps_at_the_milestone_epochs() -> None:
    kw = dict(iters_per_epoch=10, epochs=4, milestones=(2, 3), gamma=0.1, warmup_iters=5, warmup_factor=0.001)
    assert lr_multiplier(0, **kw) == pytest.approx(0.001)
    assert lr_multiplier(2, **kw) == pytest.approx(0.001 * 0.6 + 0.4)
    assert [lr_multiplier(i, **kw) for i in (5, 19, 20, 29, 30)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert lr_multiplier(20, **{**kw, "schedule": "cosine", "warmup_iters": 0}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"schedule must be 'multistep', 'cosine' or 'constant', got 'poly'"):
        build_lr_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), **{**kw, "schedule": "poly"})
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = build_lr_scheduler(optimizer, **kw)
    seen = []
    for _ in range(25):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(0.0005) and seen[7] == pytest.approx(0.5) and seen[21] == pytest.approx(0.05)
    assert scheduler.state_dict()["lr_lambdas"] == [None]  # the schedule itself is not pickled into checkpoints


class _NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, images, targets):
        return {"loss_classifier": self.w.sum() * float("nan"), "loss_box_reg": self.w.sum()}


def test_a_non_finite_loss_stops_training_before_the_step() -> None:
    model = _NaNModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = ([torch.zeros(3, 8, 8, dtype=torch.uint8)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 3, iteration 0 \(loss_classifier=nan, "
                                                 r"loss_box_reg=1, lr=0.1\); stopping\. Lower --lr"):
        train_one_epoch(model, optimizer, [batch], torch.device("cpu"), 3, progress=False)
    assert model.w.item() == 1.0


def test_cli_reports_a_non_finite_loss_and_exits_1(synthetic_env, tmp_path, capsys, monkeypatch) -> None:
    import detmix.engine

    def explode(*args, **kwargs):
        raise NonFiniteLossError("loss is nan at epoch 0, iteration 0")

    monkeypatch.setattr(detmix.engine, "train_one_epoch", explode)
    code = cli([*SMOKE, "--train-subset", "2", "--val-subset", "1", "--output-dir", str(tmp_path)], prog="detmix train")
    assert code == 1
    assert "detmix train: stopped: loss is nan at epoch 0, iteration 0" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.pth").exists()


# --------------------------------------------------------------------------------------------
# Data and seeds
# --------------------------------------------------------------------------------------------


class _Source:
    """Two tiny samples with COCO category ids with gaps."""

    image_ids = (7, 9)
    category_ids = (3, 90)

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3) + i
        return {"image": image, "boxes": np.array([[1.0, 1.0, 4.0, 5.0]]), "labels": np.array([90 if i else 3]),
                "image_id": self.image_ids[i]}


def test_dataset_maps_labels_and_flips_from_seed_epoch_and_index() -> None:
    label_map = LabelMap.from_categories(_Source.category_ids)
    always = DetectionDataset(_Source(), label_map, hflip_prob=1.0)
    image, target = always[1]
    original = _Source()[1]
    assert torch.equal(image, torch.from_numpy(original["image"][:, ::-1].copy()).permute(2, 0, 1))
    assert target["boxes"].tolist() == [[6.0, 1.0, 9.0, 5.0]] and target["labels"].tolist() == [2]
    assert target["image_id"] == 9

    def flips(seed: int, epoch: int) -> list[bool]:
        ds = DetectionDataset(_Source(), label_map, hflip_prob=0.5, seed=seed)
        ds.set_epoch(epoch)
        return [bool(ds[i][1]["boxes"][0, 0] != 1.0) for i in range(2)]

    draws = {(s, e): tuple(flips(s, e)) for s in range(4) for e in range(4)}
    assert draws[(1, 2)] == tuple(flips(1, 2))  # a pure function of (seed, epoch, index)
    assert len(set(draws.values())) > 1
    with pytest.raises(ValueError, match=r"hflip_prob must be a number in \[0, 1\], got 2"):
        DetectionDataset(_Source(), label_map, hflip_prob=2)


def _first_batch(argv: list[str]):
    args = parse_args([*SMOKE, "--train-subset", "8", "--val-subset", "2", *argv])
    setup = build(args)
    setup.begin_epoch(0)
    images, targets = next(iter(setup.train_loader))
    return setup, images, targets


def test_same_seed_gives_the_same_first_batch_and_model_with_and_without_mixing(synthetic_env) -> None:
    off, images_off, targets_off = _first_batch(["--recipe", "none", "--seed", "5"])
    on, images_on, targets_on = _first_batch(["--recipe", "deit", "--seed", "5"])
    assert off.mixer is None and on.mixer is not None
    assert [t["image_id"] for t in targets_on] == [t["image_id"] for t in targets_off]
    assert all(torch.equal(a, b) for a, b in zip(images_on, images_off))
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets_on, targets_off))
    for (name, a), (_, b) in zip(on.model.state_dict().items(), off.model.state_dict().items()):
        assert torch.equal(a, b), name

    # The mixer draws from its own generator: the same seed mixes the same way, the global
    # generator (proposal sampling, dropout) is left where it was.
    state = torch.get_rng_state()
    mixed_1 = prepare_batch(images_on, targets_on, on.device, mixer=on.mixer, generator=on.mix_generator(0))
    assert torch.equal(torch.get_rng_state(), state)
    mixed_2 = prepare_batch(images_on, targets_on, on.device, mixer=on.mixer, generator=on.mix_generator(0))
    plain = prepare_batch(images_off, targets_off, off.device)
    assert all(torch.equal(a, b) for a, b in zip(mixed_1[0], mixed_2[0]))
    assert all(torch.equal(a["weights"], b["weights"]) for a, b in zip(mixed_1[1], mixed_2[1]))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(mixed_1[0], plain[0]))
    assert all("weights" in t and "mix_partner" not in t for t in mixed_1[1])

    other, images_other, _ = _first_batch(["--recipe", "none", "--seed", "6"])
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(images_other, images_off))


def test_first_batch_does_not_depend_on_the_number_of_workers(synthetic_env) -> None:
    _, images_0, targets_0 = _first_batch(["--seed", "3"])
    _, images_2, targets_2 = _first_batch(["--seed", "3", "--workers", "2"])
    assert [t["image_id"] for t in targets_0] == [t["image_id"] for t in targets_2]
    assert all(torch.equal(a, b) for a, b in zip(images_0, images_2))


# --------------------------------------------------------------------------------------------
# COCO evaluation
# --------------------------------------------------------------------------------------------


class _Oracle(nn.Module):
    """Answers each validation image with its ground truth; recognises images by their pixels,
    so a mixed or altered image finds no answer."""

    def __init__(self, dataset: DetectionDataset) -> None:
        super().__init__()
        self.answers = [(image.float() / 255, target) for image, target in (dataset[i] for i in range(len(dataset)))]
        self.seen = 0

    def forward(self, images):
        out = []
        for image in images:
            match = [t for im, t in self.answers if im.shape == image.shape and torch.equal(im, image)]
            assert len(match) == 1, "an evaluated image is not one of the validation images"
            self.seen += 1
            n = len(match[0]["boxes"])
            out.append({"boxes": match[0]["boxes"], "labels": match[0]["labels"], "scores": torch.ones(n)})
        return out


def test_evaluate_scores_the_ground_truth_as_perfect_on_coco_ids_with_gaps(coco_mini) -> None:
    from detmix.coco import CocoDetectionSource

    source = CocoDetectionSource(coco_mini / "annotations" / "instances_val2017.json", coco_mini / "val2017",
                                 masks=False)
    source = CocoDetectionSource(source.annotation_file, source.image_dir, masks=False, image_ids=source.image_ids[:6])
    label_map = LabelMap.from_categories(source.category_ids)
    assert label_map.category_ids != tuple(range(1, label_map.num_classes))  # real gaps
    dataset = DetectionDataset(source, label_map)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate)
    oracle = _Oracle(dataset)
    stats = evaluate(oracle, loader, torch.device("cpu"), source.coco, label_map, progress=False)
    assert oracle.seen == 6 and stats["images"] == 6
    assert stats["mAP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert stats["detections"] == sum(len(dataset[i][1]["boxes"]) for i in range(6))

    # one category off: the same boxes score worse
    shifted = LabelMap(label_map.category_ids[1:] + label_map.category_ids[:1])
    worse = evaluate(oracle, loader, torch.device("cpu"), source.coco, shifted, progress=False)
    assert worse["mAP"] < 0.5


def test_coco_bbox_stats_without_detections_is_zero_not_an_error(synthetic_env) -> None:
    from detmix.coco import CocoDetectionSource

    source = CocoDetectionSource(synthetic_env.val_annotations, synthetic_env.val_images, masks=False)
    stats, summary = coco_bbox_stats(source.coco, [], source.image_ids[:3])
    assert stats["mAP"] == 0.0 and "Average Precision" in summary
    with pytest.raises(ValueError, match="image_ids must name at least one image to evaluate, got none"):
        coco_bbox_stats(source.coco, [], [])


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_run(synthetic_env, tmp_path_factory) -> dict[str, Path]:
    """Two epochs straight (the second without mixing, a checkpoint kept per epoch), and the
    second epoch again, resumed from the checkpoint of the first in another folder."""
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    common = [*SMOKE, "--train-subset", "8", "--val-subset", "4", "--seed", "1", "--epochs", "2",
              "--no-mix-epochs", "1", "--recipe", "deit"]
    assert cli([*common, "--output-dir", str(straight), "--save-every", "1"]) == 0
    assert cli([*common, "--output-dir", str(resumed), "--resume", str(straight / "model_0.pth")]) == 0
    return {"straight": straight, "resumed": resumed}


def test_synthetic_run_trains_evaluates_with_cocoeval_and_logs(synthetic_run) -> None:
    records = _records(synthetic_run["straight"])
    assert [r["epoch"] for r in records] == [0, 1]
    assert [r["mixed"] for r in records] == [True, False]  # --no-mix-epochs 1: the last epoch is clean
    for r in records:
        assert r["iters"] == 2 and r["eval_images"] == 4 and r["world_size"] == 1 and r["seed"] == 1
        assert np.isfinite(r["loss"]) and r["loss"] > 0 and r["s_per_iter"] > 0
        assert 0.0 <= r["bbox_mAP"] <= 1.0 and 0.0 <= r["bbox_AP50"] <= 1.0
        assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "bbox_AP75",
                "bbox_AP_small", "bbox_AP_medium", "bbox_AP_large"} <= set(r)
    csv_lines = (synthetic_run["straight"] / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,mixed,") and len(csv_lines) == 3


def test_synthetic_run_checkpoint_holds_everything_to_resume(synthetic_run) -> None:
    checkpoint = _checkpoint(synthetic_run["straight"])
    assert {"model", "optimizer", "lr_scheduler", "scaler", "epoch", "args", "config", "seed", "label_map"} <= set(checkpoint)
    assert checkpoint["epoch"] == 1 and checkpoint["seed"] == 1
    assert checkpoint["lr_scheduler"]["last_epoch"] == 4  # 2 epochs x 2 steps
    assert checkpoint["label_map"] == [1, 2, 3, 4]
    assert checkpoint["args"]["model"] == "fasterrcnn_mobilenet_v3_large_320_fpn" and checkpoint["args"]["epochs"] == 2
    assert checkpoint["args"]["recipe"] == "deit" and checkpoint["args"]["no_mix_epochs"] == 1
    assert any(k.startswith("roi_heads.box_predictor") for k in checkpoint["model"])
    assert len(checkpoint["optimizer"]["state"]) > 0  # momentum buffers travel with it
    assert torch.load(synthetic_run["straight"] / "model_0.pth", weights_only=True)["epoch"] == 0


def test_resuming_reproduces_the_uninterrupted_run(synthetic_run) -> None:
    (straight_last,) = _records(synthetic_run["straight"])[1:]
    (resumed,) = _records(synthetic_run["resumed"])
    assert resumed["epoch"] == 1 and resumed["mixed"] is False
    for key in ("loss", "loss_classifier", "loss_box_reg", "lr", "bbox_mAP", "bbox_AP50"):
        assert resumed[key] == straight_last[key], key
    a, b = _checkpoint(synthetic_run["straight"]), _checkpoint(synthetic_run["resumed"])
    assert b["lr_scheduler"]["last_epoch"] == 4
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name


def test_eval_only_scores_the_checkpoint_as_the_last_epoch_did(synthetic_run, tmp_path: Path, capsys) -> None:
    last = _records(synthetic_run["straight"])[-1]
    code = cli([*SMOKE, "--val-subset", "4", "--eval-only", "--resume",
                str(synthetic_run["straight"] / "checkpoint.pth"), "--output-dir", str(tmp_path), "--progress"])
    assert code == 0
    out, err = capsys.readouterr()
    assert "eval:" in err and "/2 [" in err  # the tqdm bar over the 2 validation batches (it redraws
    # at most every 0.1 s, so whether "100%" is drawn before it clears depends on the machine's speed)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in out  # COCOeval's summary
    stats = json.loads((tmp_path / "eval.json").read_text())
    assert stats["images"] == 4
    assert stats["mAP"] == pytest.approx(last["bbox_mAP"], abs=1e-9)
    assert stats["AP50"] == pytest.approx(last["bbox_AP50"], abs=1e-9)


def test_resume_refuses_another_model(synthetic_run, tmp_path: Path, capsys) -> None:
    path = synthetic_run["straight"] / "checkpoint.pth"
    code = cli([*SMOKE, "--model", "fasterrcnn_mobilenet_v3_large_fpn", "--resume", str(path),
                "--output-dir", str(tmp_path)], prog="detmix train")
    assert code == 2
    assert (f"--resume: '{path}' holds a fasterrcnn_mobilenet_v3_large_320_fpn but "
            "--model is fasterrcnn_mobilenet_v3_large_fpn") in capsys.readouterr().err


def test_coco_mini_trains_evaluates_and_resumes(coco_mini: Path, tmp_path: Path) -> None:
    import json as _json

    common = [*SMOKE, "--data-path", str(coco_mini), "--train-subset", "4", "--val-subset", "3",
              "--output-dir", str(tmp_path), "--recipe", "mixup", "--no-mix-epochs", "0"]
    assert cli([*common, "--epochs", "1"]) == 0
    assert cli([*common, "--epochs", "2", "--resume", str(tmp_path / "checkpoint.pth")]) == 0
    records = _records(tmp_path)
    assert [r["epoch"] for r in records] == [0, 1] and all(r["mixed"] for r in records)
    assert all(r["eval_images"] == 3 and 0.0 <= r["bbox_mAP"] <= 1.0 for r in records)
    with open(coco_mini / "annotations" / "instances_train2017.json") as f:
        categories = sorted(c["id"] for c in _json.load(f)["categories"])
    checkpoint = _checkpoint(tmp_path)
    assert checkpoint["label_map"] == categories and len(categories) == 80 and 12 not in categories
    assert checkpoint["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 81


def test_two_processes_over_gloo_train_and_evaluate_every_image_once(synthetic_env, tmp_path: Path) -> None:
    env = {**os.environ, "DETMIX_DATA_DIR": str(synthetic_env.root), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "detmix.train", *SMOKE, "--epochs", "1", "--train-subset", "8", "--val-subset", "3",
               "--max-iters", "0", "--dist-backend", "gloo", "--output-dir", str(tmp_path)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=170)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and its two workers
        process.communicate()
        pytest.fail("torchrun with 2 gloo processes did not finish within 170 s")
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert stdout.count("epoch 0: loss") == 1  # only rank 0 reports
    assert "2 process(es)" in stdout
    (record,) = _records(tmp_path)
    # 8 training images over 2 ranks in batches of 2: 2 steps each (4 without the distributed sampler);
    # 3 validation images over 2 ranks: 2 + 2 with one padded duplicate, gathered and counted once
    assert record["world_size"] == 2 and record["eval_images"] == 3 and record["iters"] == 2
    checkpoint = _checkpoint(tmp_path)
    assert checkpoint["world_size"] == 2
    assert not any(k.startswith("module.") for k in checkpoint["model"])  # saved without the DDP wrapper


def _reduce_worker(rank: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from detmix.engine import _all_gather, init_distributed, reduce_dict

    info = init_distributed("gloo")
    try:
        reduced = reduce_dict({"a": torch.tensor(float(rank + 1)), "b": torch.tensor(10.0 * rank)})
        gathered = _all_gather({rank: f"rank {rank}"})
        results.put((info.rank, info.world_size, float(reduced["a"]), float(reduced["b"]), gathered))
    finally:
        torch.distributed.destroy_process_group()


def test_losses_are_averaged_and_results_gathered_over_ranks() -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("fork")  # the children inherit the imports: no second torch start-up
    results = context.Queue()
    processes = [context.Process(target=_reduce_worker, args=(rank, port, results)) for rank in range(2)]
    for process in processes:
        process.start()
    try:
        got = sorted(results.get(timeout=90) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert [(r, w, a, b) for r, w, a, b, _ in got] == [(0, 2, 1.5, 5.0), (1, 2, 1.5, 5.0)]
    assert got[0][4] == got[1][4] == [{0: "rank 0"}, {1: "rank 1"}]
