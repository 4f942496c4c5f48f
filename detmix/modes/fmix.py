"""FMix (Harris et al. 2020): CutMix over a region of any shape, low-frequency Fourier noise
thresholded so that it covers ``1 - lam`` of the canvas.

The region is not stored: it is regenerated from ``(seed, decay, lam, canvas)`` by
:func:`fmix_region` (numpy FFT; the same map for numpy and torch samples), so a record stays a
few numbers. Boxes and masks follow the region CutMix rules of :func:`detmix.functional.cutmix`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from detmix._fields import BoxRules, Number
from detmix._parse import parse_sample
from detmix.modes import Mode, register
from detmix.modes.cutmix import cutmix
from detmix.sampling import MixParams, sample_lam

__all__ = ["FMix", "FMixConfig", "fmix_region"]


class FMixConfig(BoxRules):
    """FMix parameters: lam's Beta, the decay power of the spectrum (3 in the paper) and the
    CutMix thresholds."""

    decay: Number = Field(default=3.0, gt=0.0, le=10.0, description="frequency decay power of the noise")


def fmix_region(seed: int, decay: float, lam: float, height: int, width: int) -> np.ndarray:
    """The ``(H, W)`` bool region of an FMix: complex Gaussian noise (from
    ``numpy.random.default_rng(seed)``) with amplitudes ``1 / f ** decay``, back to the image by
    an inverse real FFT, and the ``round((1 - lam) H W)`` highest pixels (ties by position) True."""
    rng = np.random.default_rng(int(seed))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freq = np.maximum(np.sqrt(fx * fx + fy * fy), 1.0 / max(height, width))
    scale = freq ** (-float(decay))
    spectrum = (rng.standard_normal(freq.shape) + 1j * rng.standard_normal(freq.shape)) * scale
    grey = np.fft.irfft2(spectrum, s=(height, width))
    count = int(round((1.0 - lam) * height * width))
    region = np.zeros(height * width, bool)
    if count:
        region[np.argsort(-grey.reshape(-1), kind="stable")[:count]] = True
    return region.reshape(height, width)


class FMix(Mode):
    name = "fmix"
    config = FMixConfig
    extra_keys = ("seed", "decay")

    def sample(self, rng: Any, cfg: FMixConfig, height: int, width: int, partners: Any = ()) -> MixParams:
        lam = sample_lam(rng, cfg.alpha, cfg.lam_clamp)
        count = int(round((1.0 - lam) * height * width))
        seed = int(rng.integers(0, 2**53))  # exact as a JSON number anywhere (a double holds 53 bits)
        return MixParams(self.name, 1.0 - count / (height * width), None, (int(height), int(width)),
                         {"seed": seed, "decay": float(cfg.decay)})

    def check(self, params: MixParams) -> None:
        seed, decay = params["seed"], params["decay"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not (0 <= seed < 2**53):
            raise ValueError(f"seed must be an int in [0, 2**53) (a JSON number's exact range), got {seed!r}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (0 < decay <= 10):
            raise ValueError(f"decay must be a number in (0, 10], got {decay!r}")
        if params.canvas is None:
            raise ValueError("canvas must be given for mode 'fmix' (the region is drawn for it)")
        height, width = params.canvas
        count = round((1.0 - params.lam) * height * width)
        if abs(params.lam - (1.0 - count / (height * width))) > 1e-9:
            raise ValueError(f"lam must be 1 - k / (height * width) for a whole number of pixels k, got {params.lam!r}")

    def region(self, params: MixParams) -> np.ndarray:
        """The region of ``params`` (True where the partner shows)."""
        return fmix_region(params["seed"], params["decay"], params.lam, *params.canvas)

    def apply(self, a: dict, partners: Any, params: MixParams, cfg: FMixConfig, box_keys: Any = None) -> dict:
        region = self.region(params)
        p = parse_sample(a, "a", check_values=False)
        if p.kind == "torch":
            import torch

            region = torch.from_numpy(region).to(p.image.device)
        return cutmix(a, partners[0], region=region, min_visibility=cfg.min_visibility, min_area=cfg.min_area,
                      min_size=cfg.min_size, weight=cfg.weight, box_keys=box_keys)


register(FMix())
