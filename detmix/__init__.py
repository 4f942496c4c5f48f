"""detmix: detection-aware mixing (CutMix, MixUp and the region family: Cutout, ResizeMix, FMix,
SaliencyMix; one unit each in :mod:`detmix.modes`).

Images are mixed together with their annotations: boxes, labels, instance masks and per-box
weights follow the pixels, and every input box is either kept or reported as dropped.

>>> from detmix import functional as F
>>> out = F.cutmix(a, b, cut_box=(x1, y1, x2, y2))   # doctest: +SKIP
>>> out = F.mixup(a, b, lam=0.6)                     # doctest: +SKIP
"""

from detmix import functional
from detmix.align import align_canvas, align_pair, canvas_size
from detmix.functional import DropReason, cutmix, mixup
from detmix.mix import RandomMix, apply_params, draw_params, mix_pair
from detmix.recipes import CutMixConfig, MixUpConfig, Recipe, builtin_recipes, load_recipe
from detmix.sampling import MixParams, sample_cut_box, sample_lam, sample_params

__version__ = "0.1.0"

__all__ = [
    "CutMixConfig",
    "DropReason",
    "MixParams",
    "MixUpConfig",
    "RandomMix",
    "Recipe",
    "align_canvas",
    "align_pair",
    "apply_params",
    "builtin_recipes",
    "canvas_size",
    "cutmix",
    "draw_params",
    "functional",
    "load_recipe",
    "mix_pair",
    "mixup",
    "sample_cut_box",
    "sample_lam",
    "sample_params",
]
