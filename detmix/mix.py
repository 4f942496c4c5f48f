"""One mix end to end: draw parameters for the pair's canvas, align the pair, apply them.

>>> mixer = RandomMix("deit")
>>> out = mixer(a, b, np.random.default_rng(0))      # doctest: +SKIP
>>> out["params"].to_dict()                          # doctest: +SKIP
{'mode': 'cutmix', 'lam': 0.7998828125, 'cut_box': [0, 131, 141, 240], 'canvas': [240, 320]}
>>> again = mix_pair(a, b, out["params"], mixer.recipe)                      # same output
>>> again = apply_params(*align_pair(a, b, "pad"), out["params"], mixer.recipe)  # the same too
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from detmix import functional as F
from detmix.align import align_canvas, align_pair, canvas_size
from detmix.recipes import Recipe, load_recipe
from detmix.sampling import MixParams, sample_params

__all__ = ["RandomMix", "apply_params", "mix_pair"]


def apply_params(
    a: dict[str, Any], b: dict[str, Any], params: MixParams, recipe: Recipe, *, box_keys: Sequence[str] | None = None
) -> dict[str, Any]:
    """Apply drawn ``params`` to an aligned pair with the thresholds and weight mode of
    ``recipe`` (``box_keys`` as in :func:`detmix.functional.cutmix`). The result is :func:`detmix.functional.cutmix`'s plus ``params``. Mode
    ``"none"`` returns ``a`` with weight 1 on every box and ``b``'s boxes in ``dropped``."""
    if not isinstance(params, MixParams):
        raise TypeError(f"params must be a MixParams, got {type(params).__name__}")
    if params.canvas is not None and tuple(params.canvas) != canvas_size(a):
        raise ValueError(f"params were drawn for canvas {tuple(params.canvas)} but a has canvas {canvas_size(a)}")
    if params.mode == "cutmix":
        if recipe.cutmix is None:
            raise ValueError(f"params ask for CutMix but recipe {recipe.name!r} has no 'cutmix' section")
        cfg = recipe.cutmix
        out = F.cutmix(
            a, b, params.cut_box,
            min_visibility=cfg.min_visibility, min_area=cfg.min_area, min_size=cfg.min_size, weight=cfg.weight,
            box_keys=box_keys,
        )
    elif params.mode == "mixup":
        if recipe.mixup is None:
            raise ValueError(f"params ask for MixUp but recipe {recipe.name!r} has no 'mixup' section")
        out = F.mixup(
            a, b, params.lam, min_weight=recipe.mixup.min_weight, weight=recipe.mixup.weight, box_keys=box_keys
        )
    else:
        out = F.cutmix(
            a, b, (0, 0, 0, 0), min_visibility=0.0, min_area=0.0, min_size=0.0, weight="hard", box_keys=box_keys
        )
    out["params"] = params
    return out


def mix_pair(
    a: dict[str, Any],
    b: dict[str, Any],
    params: MixParams,
    recipe: Recipe,
    *,
    fill: float = 0,
    box_keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Align ``b`` to ``a`` as ``recipe.align`` says and apply ``params``: the same result as
    ``apply_params(*align_pair(a, b, recipe.align, fill=fill), params, recipe)``, but for a
    CutMix only the cut box of ``b``'s image is aligned (see :func:`detmix.align_pair`'s
    ``window``), which is most of the work when ``b`` is resized."""
    if not isinstance(params, MixParams):
        raise TypeError(f"params must be a MixParams, got {type(params).__name__}")
    window = params.cut_box if params.mode == "cutmix" else (0, 0, 0, 0) if params.mode == "none" else None
    a, b = align_pair(a, b, recipe.align, fill=fill, window=window)
    return apply_params(a, b, params, recipe, box_keys=box_keys)


class RandomMix:
    """Mix pairs according to a recipe (a name that ``detmix recipes`` lists, a path, a dict or a
    :class:`~detmix.recipes.Recipe`). Randomness comes only from the generator passed to each
    call; the drawn :class:`~detmix.sampling.MixParams` are returned under ``"params"``."""

    def __init__(self, recipe: str | Recipe | dict = "deit", *, box_keys: Sequence[str] | None = None) -> None:
        self.recipe = load_recipe(recipe)
        self.box_keys = None if box_keys is None else tuple(box_keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(recipe={self.recipe.name!r})"

    def __call__(self, a: dict[str, Any], b: dict[str, Any], generator: Any) -> dict[str, Any]:
        height, width = align_canvas(canvas_size(a, "a"), canvas_size(b, "b"), self.recipe.align)
        params = sample_params(generator, self.recipe, height, width)
        return mix_pair(a, b, params, self.recipe, box_keys=self.box_keys)
