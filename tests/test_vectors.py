"""Cross-check against the worked examples in ../shared/vectors, computed by a separate
implementation written from the issue's text. Run on every backend and box dtype."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DEVICES, VECTORS, to_numpy, to_torch
from detmix import functional as F


def _cases():
    if not VECTORS.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"worked examples not found at {VECTORS}"))]
    return [pytest.param(c, id=c["name"]) for c in json.loads(VECTORS.read_text())["cases"]]


def _sample(side, height, width, fill, dtype):
    s = {
        "image": np.full((height, width, 3), fill, np.uint8),
        "boxes": np.asarray(side["boxes"], dtype=dtype).reshape(-1, 4),
        "labels": np.asarray(side["labels"], dtype=np.int64),
    }
    if "masks_rows" in side:
        s["masks"] = np.array([[[c == "1" for c in row] for row in m] for m in side["masks_rows"]], np.uint8)
    return s


BACKENDS = [("numpy", np.float64), ("numpy", np.float32)] + [(f"torch-{d}", np.float32) for d in DEVICES]


@pytest.mark.parametrize(("backend", "dtype"), BACKENDS, ids=[f"{b}-{np.dtype(d).name}" for b, d in BACKENDS])
@pytest.mark.parametrize("case", _cases())
def test_worked_example(case, backend, dtype):
    height, width = case["canvas"]
    a = _sample(case["a"], height, width, 0, dtype)
    b = _sample(case["b"], height, width, 255, dtype)
    if backend.startswith("torch"):
        device = backend.split("-", 1)[1]
        a, b = to_torch(a, device), to_torch(b, device)
    out = to_numpy(F.cutmix(a, b, case["cut_box"], min_visibility=case["min_visibility"],
                            min_area=case["min_area"], min_size=case["min_size"]))
    expected = case["expected"]
    tol = 1e-9 if dtype == np.float64 else 2e-6
    assert out["lam"] == pytest.approx(expected["lam"], abs=1e-9)

    kept = {(int(s), int(i)): k for k, (s, i) in enumerate(zip(out["source"], out["index"]))}
    assert set(kept) == {(k["source"], k["index"]) for k in expected["kept"]}
    for want in expected["kept"]:
        row = kept[(want["source"], want["index"])]
        np.testing.assert_allclose(out["boxes"][row], want["box"], rtol=tol, atol=tol)
        assert out["weights"][row] == pytest.approx(want["weight"], abs=max(tol, 1e-9))
        assert out["labels"][row] == want["label"]

    dropped = {(int(s), int(i)): float(v) for s, i, v in
               zip(out["dropped"]["source"], out["dropped"]["index"], out["dropped"]["visibility"])}
    assert set(dropped) == {(d["source"], d["index"]) for d in expected["dropped"]}
    for want in expected["dropped"]:
        assert dropped[(want["source"], want["index"])] == pytest.approx(want["visibility"], abs=max(tol, 1e-9))
