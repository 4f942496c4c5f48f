"""Random parameters of a mix, drawn in one place from an injected generator.

Every function takes a ``numpy.random.Generator`` or a ``torch.Generator`` and never touches a
global random state. The result of a draw is a :class:`MixParams`, a small frozen record that can
be logged (``to_dict``), sent over the wire and replayed exactly (``MixParams.from_dict`` and
:func:`detmix.apply_params`).

``torch.Generator`` support: torch has no Beta sampler that takes a generator, so one 63-bit
integer is drawn from the torch generator and seeds a numpy generator for that call. Draws are
therefore reproducible from the torch generator's state, but differ from a numpy generator with
the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from detmix.recipes import Recipe

__all__ = ["MixParams", "as_numpy_generator", "sample_cut_box", "sample_lam", "sample_params"]

@dataclass(frozen=True)
class MixParams:
    """What one mix did: enough to replay it exactly.

    Attributes:
        mode: the name of a registered mode (:func:`detmix.modes.mode_names`): ``"cutmix"``,
            ``"mixup"``, ``"none"`` (the sample passed through unmixed), ``"cutout"``...
        lam: share of the output that comes from ``a`` (for the cut modes, recomputed from what
            was cut: ``1 - area(cut_box) / (H * W)``).
        cut_box: ``(x1, y1, x2, y2)`` half-open whole pixels, for the modes that cut a box.
        canvas: ``(height, width)`` the parameters were drawn for.
        extra: the mode's own parameters (:attr:`detmix.modes.Mode.extra_keys`, e.g. ResizeMix's
            ``paste_box``, FMix's ``seed`` and ``decay``); written flat by :meth:`to_dict`.

    Built, it is checked by its mode (``ValueError`` naming the field): a record that exists can be
    applied.
    """

    mode: str
    lam: float
    cut_box: tuple[int, int, int, int] | None = None
    canvas: tuple[int, int] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from detmix.modes import get_mode, mode_names

        mode = get_mode(self.mode)
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not (0.0 <= self.lam <= 1.0):
            raise ValueError(f"lam must be in [0, 1], got {self.lam}")
        object.__setattr__(self, "lam", float(self.lam))
        if self.cut_box is not None:
            object.__setattr__(self, "cut_box", _whole(self.cut_box, "cut_box", 4))
        if self.canvas is not None:
            object.__setattr__(self, "canvas", _whole(self.canvas, "canvas", 2))
            if min(self.canvas) < 1:
                raise ValueError(f"canvas must be (height, width) >= 1, got {list(self.canvas)}")
        if (self.cut_box is not None) != mode.uses_cut_box:
            cut_modes = [n for n in mode_names() if get_mode(n).uses_cut_box]
            raise ValueError(f"cut_box must be given for the modes {cut_modes} and only then, got mode={self.mode!r}, "
                             f"cut_box={self.cut_box!r}")
        extra = dict(self.extra)
        unknown = sorted(set(extra) - set(mode.extra_keys))
        missing = sorted(set(mode.extra_keys) - set(extra))
        takes = f"mode {self.mode!r} takes {list(mode.extra_keys)} besides lam, cut_box and canvas"
        if unknown:
            raise ValueError(f"{unknown[0]} is not a parameter of mode {self.mode!r} ({takes})")
        if missing:
            raise ValueError(f"{missing[0]} must be given for mode {self.mode!r} ({takes})")
        object.__setattr__(self, "extra", MappingProxyType(extra))
        mode.check(self)

    def __getitem__(self, key: str) -> Any:
        """A parameter of the mode's own (:attr:`extra`)."""
        return self.extra[key]

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers, for JSON or YAML logs; :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "lam": self.lam,
            "cut_box": None if self.cut_box is None else list(self.cut_box),
            "canvas": None if self.canvas is None else list(self.canvas),
        }
        out.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.extra.items()})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MixParams:
        """The :class:`MixParams` that :meth:`to_dict` wrote (records of earlier versions too)."""
        if not isinstance(data, Mapping) or "mode" not in data or "lam" not in data:
            raise ValueError(f"params must be a dict with 'mode' and 'lam', got {data!r:.120}")
        extra = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
                 if k not in ("mode", "lam", "cut_box", "canvas")}
        return cls(
            mode=data["mode"],
            lam=float(data["lam"]),
            cut_box=_whole(data.get("cut_box"), "cut_box", 4),
            canvas=_whole(data.get("canvas"), "canvas", 2),
            extra=extra,
        )


def _whole(value: Any, name: str, length: int) -> tuple[int, ...] | None:
    """A record's list of whole pixels as ints (a fraction is refused, never truncated)."""
    if value is None:
        return None
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {length} whole numbers, got {value!r}") from None
    if len(values) != length or not all(math.isfinite(v) and v == int(v) for v in values):
        raise ValueError(f"{name} must be {length} whole numbers, got {list(value)!r}")
    return tuple(int(v) for v in values)


def as_numpy_generator(generator: Any) -> np.random.Generator:
    """The numpy generator to draw from: ``generator`` itself, or one seeded by a single draw
    from a ``torch.Generator``. Anything else (an int seed, None, the ``random`` module) is a
    ``TypeError``: pass ``np.random.default_rng(seed)`` instead."""
    if isinstance(generator, np.random.Generator):
        return generator
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional
        torch = None
    if torch is not None and isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=generator.device).item())
        return np.random.default_rng(seed)
    raise TypeError(
        "generator must be a numpy.random.Generator or a torch.Generator, got "
        f"{type(generator).__name__} (use np.random.default_rng(seed))"
    )


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0 < float(alpha) < math.inf):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def _check_clamp(clamp: tuple[float, float] | None) -> tuple[float, float] | None:
    if clamp is None:
        return None
    try:
        lo, hi = (float(v) for v in clamp)
    except (TypeError, ValueError):
        raise ValueError(f"lam_clamp must be a pair (low, high), got {clamp!r}") from None
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"lam_clamp must satisfy 0 <= low <= high <= 1, got {clamp!r}")
    return lo, hi


def sample_lam(generator: Any, alpha: float, clamp: tuple[float, float] | None = None) -> float:
    """``lam ~ Beta(alpha, alpha)``, clipped to ``clamp = (low, high)`` when given."""
    alpha = _check_alpha(alpha)
    clamp = _check_clamp(clamp)
    lam = float(as_numpy_generator(generator).beta(alpha, alpha))
    if clamp is not None:
        lam = min(max(lam, clamp[0]), clamp[1])
    return lam


def cut_box_for(lam: float, center: tuple[int, int], height: int, width: int) -> tuple[tuple[int, int, int, int], float]:
    """The cut box of area ``(1 - lam) * H * W`` centred on ``center = (cx, cy)``, clipped to the
    canvas, and the ``lam`` recomputed from the clipped box (the rule of torchvision's and timm's
    CutMix: sides ``sqrt(1 - lam)`` of the canvas's)."""
    ratio = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(ratio * width), int(ratio * height)
    cx, cy = center
    x1, y1 = max(cx - half_w, 0), max(cy - half_h, 0)
    x2, y2 = min(cx + half_w, width), min(cy + half_h, height)
    return (x1, y1, x2, y2), 1.0 - (x2 - x1) * (y2 - y1) / (height * width)


def sample_cut_box(generator: Any, lam: float, height: int, width: int) -> tuple[tuple[int, int, int, int], float]:
    """A cut box for ``lam`` with its centre uniform over the canvas; returns ``(box, lam)``
    with ``lam`` recomputed from the clipped box."""
    if not (0.0 <= lam <= 1.0):
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got height={height}, width={width}")
    rng = as_numpy_generator(generator)
    cx, cy = int(rng.integers(width)), int(rng.integers(height))
    return cut_box_for(lam, (cx, cy), height, width)


def sample_params(
    generator: Any, recipe: Recipe, height: int, width: int, partners: Sequence[dict[str, Any]] = ()
) -> MixParams:
    """Draw one mix for a ``height x width`` canvas according to ``recipe``.

    With probability ``1 - recipe.prob`` nothing is mixed (mode ``none``); otherwise the recipe
    picks one of its modes (:meth:`detmix.recipes.Recipe.choose`: the DeiT switch for CutMix and
    MixUp) and the mode's sampler draws the rest. All draws come from ``generator``, in a fixed
    order (apply?, which?, then the mode's own). ``partners`` (the partner samples, on the
    canvas) are read by the modes whose draw looks at them (SaliencyMix); the others ignore them."""
    from detmix.modes import get_mode

    rng = as_numpy_generator(generator)
    if rng.random() >= recipe.prob:
        return get_mode("none").sample(rng, None, height, width)
    name = recipe.choose(rng)
    return get_mode(name).sample(rng, recipe.section(name), int(height), int(width), tuple(partners))
