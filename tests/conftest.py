"""Shared fixtures and sample builders for the detmix tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO_MINI = SHARED / "data" / "coco-mini"
VECTORS = SHARED / "vectors" / "cutmix_box_rules.json"


def make_sample(
    height: int = 40,
    width: int = 60,
    boxes: Any = (),
    labels: Any = None,
    *,
    fill: int = 0,
    masks: bool = False,
    dtype: Any = np.uint8,
    **extras: Any,
) -> dict[str, Any]:
    """A numpy sample with a constant image and (optionally) box-shaped masks."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    sample: dict[str, Any] = {
        "image": np.full((height, width, 3), fill, dtype=dtype),
        "boxes": boxes,
        "labels": np.arange(1, n + 1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64),
    }
    if masks:
        m = np.zeros((n, height, width), np.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            m[i, int(np.ceil(y1)) : int(np.floor(y2)), int(np.ceil(x1)) : int(np.floor(x2))] = 1
        sample["masks"] = m
    sample.update({k: np.asarray(v) for k, v in extras.items()})
    return sample


def to_torch(sample: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """The same sample as torch tensors, image (C, H, W)."""
    out = {}
    for key, value in sample.items():
        if isinstance(value, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(value)).to(device)
            out[key] = t.permute(2, 0, 1).contiguous() if key == "image" and t.ndim == 3 else t
        else:
            out[key] = value
    return out


def to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    return value


def random_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    if not (COCO_MINI / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"real photographs not found at {COCO_MINI} (the shared coco-mini slice)")
    return COCO_MINI


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``make test`` (``DETMIX_NO_SKIPS=1``) a skipped test fails the run: there every
    extra, the photographs and the browser are installed, so a skip would hide a failure. A
    partial install (``pytest`` by hand without an extra) still skips what it cannot run."""
    if os.environ.get("DETMIX_NO_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        for report in skipped:
            reporter.write_line(f"DETMIX_NO_SKIPS: {report.nodeid} was skipped: {report.longrepr}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
