"""The package as pip installs it: a wheel built from the sources, installed into a fresh venv
without torch, works on numpy arrays with its named recipes.

The sources are copied to a temporary folder first, so that the build writes its ``build/`` and
``*.egg-info`` there and not into the working tree, and so that nothing of the project beside the
package (``configs/``) can stand in for what the wheel lacks. pip's cache is used: the
dependencies (numpy, array-api-compat, pillow, pydantic, pyyaml) come from it after the first run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What the venv runs: RandomMix's default recipe and a cutmix, on numpy arrays, with real results.
SCRIPT = r"""
import importlib.util, json
import numpy as np
import detmix
from detmix import RandomMix, functional as F

assert importlib.util.find_spec("torch") is None, "torch is installed in the fresh venv"
a = {"image": np.zeros((40, 60, 3), np.uint8), "boxes": np.array([[2.0, 2.0, 20.0, 30.0]]), "labels": np.array([1])}
b = {"image": np.full((40, 60, 3), 200, np.uint8), "boxes": np.array([[30.0, 5.0, 58.0, 35.0]]), "labels": np.array([2])}

mixer = RandomMix("deit")
out = mixer(a, b, np.random.default_rng(0))
cut = F.cutmix(a, b, (30, 0, 60, 40))
print(json.dumps({
    "file": detmix.__file__,
    "deit": [mixer.recipe.mixup.alpha, mixer.recipe.cutmix.alpha, mixer.recipe.switch_prob],
    "default": RandomMix().recipe.name,
    "mode": out["params"].mode,
    "labels": sorted(out["labels"].tolist()),
    "cut_boxes": cut["boxes"].tolist(),
    "cut_labels": cut["labels"].tolist(),
    "cut_lam": float(cut["lam"]),
    "cut_pixels": [int(cut["image"][0, 0, 0]), int(cut["image"][0, 59, 0])],
}))
"""


def _copy_sources(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "tests")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "detmix", dest / "detmix", ignore=ignore)
    shutil.copytree(REPO / "service", dest / "service", ignore=ignore)


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> str:
    # Without PYTHONPATH: a source tree on it (e.g. PYTHONPATH=. in CI) would be imported instead
    # of the installed wheel, and the test would prove nothing about the package as pip installs it.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_the_commands_run_without_pythonpath(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    out = _run([sys.executable, "-c", "import os, sys; print(os.environ.get('PYTHONPATH'), sys.path)"], cwd=tmp_path)
    assert out.startswith("None ") and repr(str(tmp_path)) not in out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns the venv's ``bin`` folder."""
    root = tmp_path_factory.mktemp("wheel")
    src, dist, venv = root / "src", root / "dist", root / "venv"
    src.mkdir()
    _copy_sources(src)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)], cwd=root)
    (wheel,) = dist.glob("detmix-*.whl")
    # No pip inside the venv: the test's own pip installs into it (faster than ensurepip).
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", str(wheel)], cwd=root)
    return venv / "bin"


def test_wheel_mixes_numpy_with_its_packaged_recipes(installed: Path, tmp_path: Path) -> None:
    import json

    # Run outside the repository, so that `import detmix` can only find the installed package.
    result = json.loads(_run([str(installed / "python"), "-c", SCRIPT], cwd=tmp_path).strip().splitlines()[-1])
    assert "site-packages" in result["file"]
    assert result["deit"] == [0.8, 1.0, 0.5]
    assert result["default"] == "deit"
    assert result["mode"] in ("mixup", "cutmix") and result["labels"] and set(result["labels"]) <= {1, 2}
    # cutmix of the right half: a's box is left of the cut (untouched), b's lies inside it.
    assert result["cut_labels"] == [1, 2]
    assert result["cut_boxes"] == [[2.0, 2.0, 20.0, 30.0], [30.0, 5.0, 58.0, 35.0]]
    assert result["cut_lam"] == 0.5
    assert result["cut_pixels"] == [0, 200]


def test_wheel_cli_lists_the_three_recipes(installed: Path, tmp_path: Path) -> None:
    out = _run([str(installed / "detmix"), "recipes"], cwd=tmp_path)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names == ["copy_paste", "cutmix", "cutout", "deit", "fmix", "mixup", "resizemix", "saliencymix"]
    assert "DeiT: MixUp (alpha 0.8) or CutMix (alpha 1.0)" in out
