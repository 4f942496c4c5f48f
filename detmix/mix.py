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

from detmix.align import align_canvas, align_pair, canvas_size
from detmix.modes import get_mode
from detmix.recipes import Recipe, load_recipe
from detmix.sampling import MixParams, sample_params

__all__ = ["RandomMix", "apply_params", "draw_params", "mix_pair"]


def _bare(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample's image, boxes and labels only: what a draw or a canvas needs."""
    return {k: sample[k] for k in ("image", "boxes", "labels")}


def _partners(b: Any) -> tuple[dict[str, Any], ...]:
    """The partner samples: ``b`` itself, or each of a list or tuple of them."""
    return tuple(b) if isinstance(b, (list, tuple)) else (b,)


def apply_params(
    a: dict[str, Any], b: Any, params: MixParams, recipe: Recipe, *, box_keys: Sequence[str] | None = None
) -> dict[str, Any]:
    """Apply drawn ``params`` to ``a`` and its partner ``b`` (a sequence of partners for a mode
    that takes several, :attr:`detmix.modes.Mode.partners`), aligned, with the thresholds and
    weight mode of ``recipe``'s section for ``params.mode`` (``box_keys`` as in
    :func:`detmix.functional.cutmix`): the mode's kernel (:mod:`detmix.modes`), whose result is
    :func:`detmix.functional.cutmix`'s keys, plus ``params``. Mode ``"none"`` returns ``a`` with
    weight 1 on every box and ``b``'s boxes in ``dropped``."""
    if not isinstance(params, MixParams):
        raise TypeError(f"params must be a MixParams, got {type(params).__name__}")
    if params.canvas is not None and tuple(params.canvas) != canvas_size(a):
        raise ValueError(f"params were drawn for canvas {tuple(params.canvas)} but a has canvas {canvas_size(a)}")
    mode = get_mode(params.mode)
    partners = _partners(b)
    if len(partners) != mode.partners:
        raise ValueError(f"mode {params.mode!r} mixes a with {mode.partners} partner sample(s), got {len(partners)}")
    cfg = recipe.section(params.mode) if mode.config is not None else None
    if mode.config is not None and cfg is None:
        raise ValueError(f"params ask for mode {params.mode!r} but recipe {recipe.name!r} has no {params.mode!r} section")
    out = mode.apply(a, partners, params, cfg, box_keys)
    out["params"] = params
    return out


def mix_pair(
    a: dict[str, Any],
    b: Any,
    params: MixParams,
    recipe: Recipe,
    *,
    fill: float = 0,
    box_keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Align ``b`` to ``a`` as ``recipe.align`` says and apply ``params``: the same result as
    ``apply_params(*align_pair(a, b, recipe.align, fill=fill), params, recipe)``, but only the
    part of ``b``'s image that the mode reads is aligned (:meth:`detmix.modes.Mode.window`: a
    CutMix's cut box, nothing for ``none``; see :func:`detmix.align_pair`'s ``window``), which is
    most of the work when ``b`` is resized. A mode that reads its partners at their own size
    (:attr:`~detmix.modes.Mode.resizes_partner`: ResizeMix; every mode with several partners)
    gets them as they are, and only ``a`` is brought onto the canvas."""
    if not isinstance(params, MixParams):
        raise TypeError(f"params must be a MixParams, got {type(params).__name__}")
    mode = get_mode(params.mode)
    partners = _partners(b)
    if mode.resizes_partner:  # only a is brought onto the canvas; the partner's size is all it needs
        a = align_pair(a, _bare(partners[0]), recipe.align, fill=fill, window=(0, 0, 0, 0))[0] if len(partners) == 1 else a
    elif len(partners) != 1:
        raise ValueError(f"mode {params.mode!r} takes {len(partners)} partners but does not place them itself "
                         "(resizes_partner): only a pair can be aligned")
    else:
        a, partners = align_pair(a, partners[0], recipe.align, fill=fill, window=mode.window(params))
    return apply_params(a, partners, params, recipe, box_keys=box_keys)


def draw_params(generator: Any, recipe: Recipe, a: dict[str, Any], b: Any) -> MixParams:
    """:func:`detmix.sample_params` for the canvas of ``a`` and its partner ``b`` (or partners)
    (:func:`detmix.align_canvas`). When one of the recipe's modes reads the partners to draw
    (SaliencyMix), they are aligned first and handed to it; otherwise nothing is aligned here."""
    partners = _partners(b)
    height, width = canvas_size(a, "a")
    for k, partner in enumerate(partners):
        height, width = align_canvas((height, width), canvas_size(partner, f"partners[{k}]"), recipe.align)
    aligned: tuple[dict[str, Any], ...] = ()
    if any(get_mode(name).reads_partner for name in recipe.sections()):  # its pixels and boxes, no masks
        aligned = tuple(align_pair(_bare(a), _bare(partner), recipe.align)[1] for partner in partners)
    return sample_params(generator, recipe, height, width, partners=aligned)


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
        params = draw_params(generator, self.recipe, a, b)
        return mix_pair(a, b, params, self.recipe, box_keys=self.box_keys)
