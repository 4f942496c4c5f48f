"""Pixels against torchvision's image-only ``v2.CutMix`` / ``v2.MixUp`` given the same box and lam.

torchvision pairs image ``i`` with image ``i - 1`` of the batch (``roll(1, 0)``), so output 0 of
the batch ``[a, b]`` is ``a`` with ``b`` pasted/blended in: what detmix's ``cutmix(a, b)`` does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from conftest import make_sample, random_photo, to_torch
from detmix import functional as F
from detmix.sampling import cut_box_for


def _pair(rng, height=48, width=64, dtype=torch.float32):
    a, b = make_sample(height, width), make_sample(height, width)
    a["image"], b["image"] = random_photo(rng, height, width), random_photo(rng, height, width)
    a, b = to_torch(a), to_torch(b)
    if dtype.is_floating_point:
        a["image"], b["image"] = a["image"].to(dtype) / 255, b["image"].to(dtype) / 255
    return a, b


@pytest.mark.parametrize("box", [(0, 0, 64, 48), (10, 5, 30, 40), (0, 0, 0, 0), (63, 47, 64, 48)])
def test_cutmix_pixels_equal_torchvision(rng, box):
    a, b = _pair(rng)
    batch = torch.stack([a["image"], b["image"]])
    labels = torch.tensor([0, 1])
    x1, y1, x2, y2 = box
    lam = 1 - (x2 - x1) * (y2 - y1) / (48 * 64)
    ref = v2.CutMix(num_classes=2).transform(batch, {"box": box, "lam_adjusted": lam, "labels": labels, "batch_size": 2})
    out = F.cutmix(a, b, box)
    torch.testing.assert_close(out["image"], ref[0], rtol=0, atol=0)
    assert out["lam"] == pytest.approx(lam)


@pytest.mark.parametrize("lam", [0.0, 0.27, 0.5, 1.0])
def test_mixup_pixels_equal_torchvision(rng, lam):
    a, b = _pair(rng)
    batch = torch.stack([a["image"], b["image"]])
    ref = v2.MixUp(num_classes=2).transform(batch, {"lam": lam, "labels": torch.tensor([0, 1]), "batch_size": 2})
    out = F.mixup(a, b, lam)
    torch.testing.assert_close(out["image"], ref[0], rtol=1e-6, atol=1e-6)


def test_uint8_mixup_is_torchvision_float_mixup_rounded(rng):
    a, b = _pair(rng, dtype=torch.uint8)
    ref = v2.MixUp(num_classes=2).transform(torch.stack([a["image"], b["image"]]).float(),
                                             {"lam": 0.35, "labels": torch.tensor([0, 1]), "batch_size": 2})
    out = F.mixup(a, b, 0.35)
    assert out["image"].dtype == torch.uint8
    assert (out["image"].float() - ref[0]).abs().max() <= 0.5 + 1e-4


def test_cut_box_rule_equals_torchvision_make_params(rng):
    """Same lam and centre: the same clipped box and adjusted lam as v2.CutMix.make_params."""
    height, width = 37, 53
    for seed in range(50):
        lam = float(rng.uniform())
        tv = v2.CutMix(num_classes=2)
        tv._dist = type("Fixed", (), {"sample": lambda self, shape, lam=lam: torch.tensor(lam)})()
        state = torch.random.get_rng_state()
        try:
            # torchvision draws the centre from the global generator: find it by seeding it
            torch.manual_seed(seed)
            rx, ry = int(torch.randint(width, (1,))), int(torch.randint(height, (1,)))
            torch.manual_seed(seed)
            params = tv.make_params([torch.zeros(2, 3, height, width)])
        finally:
            torch.random.set_rng_state(state)
        box, lam_adjusted = cut_box_for(lam, (rx, ry), height, width)
        assert box == params["box"]
        assert lam_adjusted == pytest.approx(params["lam_adjusted"])
