"""Samples and digests for the replay-compatibility test (``test_replay_records.py``): the records
in ``tests/data/replay_records.json`` were written by the code before the mode registry (commit
``d0d3f09``); today's code must replay each ``MixParams`` to the same output, bit for bit."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

SIZES = ((48, 64), (40, 56), (48, 64), (64, 48))


def samples() -> list[dict[str, Any]]:
    """Four samples of three canvases: noise images, boxes with box-shaped masks, and crowd."""
    rng = np.random.default_rng(20261206)
    out = []
    for k, (h, w) in enumerate(SIZES):
        n = 3 + k
        x1 = rng.integers(0, w - 8, n)
        y1 = rng.integers(0, h - 8, n)
        x2 = np.minimum(x1 + rng.integers(4, 24, n), w)
        y2 = np.minimum(y1 + rng.integers(4, 24, n), h)
        boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float64) + rng.random((n, 4)) * [0.5, 0.5, -0.5, -0.5]
        masks = np.zeros((n, h, w), np.uint8)
        for i, (a, b, c, d) in enumerate(np.stack([x1, y1, x2, y2], axis=1)):
            masks[i, b:d, a:c] = rng.random((d - b, c - a)) < 0.8
        crowd = np.zeros((h, w), np.uint8)
        crowd[h // 2 :, : w // 3] = 1
        out.append({
            "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "boxes": boxes,
            "labels": np.arange(1, n + 1, dtype=np.int64) + 10 * k,
            "masks": masks,
            "crowd_boxes": np.array([[0.0, h // 2, w // 3, h]]),
            "crowd_mask": crowd,
        })
    return out


def digest(out: dict[str, Any]) -> str:
    """sha256 of everything a mix returns that follows the pixels."""
    h = hashlib.sha256()
    keys = ("image", "boxes", "labels", "masks", "weights", "source", "index", "crowd_boxes", "crowd_mask")
    for key in keys:
        if key in out:
            value = np.ascontiguousarray(np.asarray(out[key]))
            h.update(key.encode() + str(value.dtype).encode() + str(value.shape).encode() + value.tobytes())
    for key in ("source", "index", "visibility", "reason"):
        value = np.ascontiguousarray(np.asarray(out["dropped"][key]))
        h.update(key.encode() + value.tobytes())
    h.update(repr(float(out["lam"])).encode())
    return h.hexdigest()
