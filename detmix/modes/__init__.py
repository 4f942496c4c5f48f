"""Mixing modes as units, found through one registry by every face.

A mode is one module of this package holding its parameter checks, its sampler (drawing from the
injected generator), its kernel over an aligned pair of samples (the array API: numpy and torch
alike) and what the batch path needs. It subclasses :class:`Mode` and calls :func:`register`;
``RandomMix``, ``apply_params``/``mix_pair``, ``MixParams`` validation, ``BatchMix``, the
Albumentations adapter, the service and ``detmix preview`` find it by name through
:func:`get_mode`. Adding a mode is one new module (see ``docs/modes.md``)::

    from detmix.modes import Mode, register

    class Blackout(Mode):
        name = "blackout"
        config = BlackoutConfig          # its recipe section, a pydantic model
        def sample(self, rng, cfg, height, width, partners=()): ...
        def apply(self, a, partners, params, cfg, box_keys=None): ...

    register(Blackout())

Built-in modes: ``none`` (nothing mixed), ``cutmix``, ``mixup``, the region family ``cutout``,
``resizemix``, ``fmix``, ``saliencymix``, and ``copy_paste``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import BaseModel

    from detmix.sampling import MixParams

__all__ = ["BatchKind", "Mode", "get_mode", "mode_names", "register", "unregister"]

#: How :class:`detmix.torch.BatchMix` runs a mode: ``"cut"`` (pixels and rows by one cut box per
#: image, vectorised over the batch), ``"blend"`` (MixUp, vectorised), or ``None`` (pair by pair
#: through :meth:`Mode.apply` on the padded tensors).
BatchKind = Literal["cut", "blend"] | None


class Mode:
    """One mixing mode. Subclasses set the class attributes and implement :meth:`sample` and
    :meth:`apply`; the rest has defaults.

    Attributes:
        name: the name in recipes, ``MixParams.mode`` and the service's schemas.
        config: the pydantic model of the mode's recipe section (None: no section, as ``none``).
        extra_keys: ``MixParams`` keys of this mode beyond ``mode``, ``lam``, ``cut_box`` and
            ``canvas`` (e.g. ResizeMix's ``paste_box``), carried in ``MixParams.extra``.
        uses_cut_box: whether ``MixParams.cut_box`` is given (and only then).
        batch_kind: see :data:`BatchKind`. A mode that sets ``"cut"`` or ``"blend"`` promises
            that its :meth:`apply` is that kernel (the CutMix rule with its ``cut_box`` and its
            :meth:`row_rules`, or the MixUp blend): BatchMix applies the kernel, not ``apply``.
            Such a mode has no :attr:`extra_keys`.
        partners: how many samples besides ``a`` the kernel takes: 1 for the pair modes (Cutout
            takes one and reads none of it, so that every face can pair it), more for a mode
            that mixes several images into one (Mosaic: 3).
        reads_partner: the sampler looks at the partners' pixels or boxes (SaliencyMix).
        resizes_partner: the kernel reads the partner at its own size (ResizeMix): it is not
            aligned to the canvas first.
    """

    name: ClassVar[str]
    config: ClassVar[type[BaseModel] | None] = None
    extra_keys: ClassVar[tuple[str, ...]] = ()
    uses_cut_box: ClassVar[bool] = False
    batch_kind: ClassVar[BatchKind] = None
    partners: ClassVar[int] = 1
    reads_partner: ClassVar[bool] = False
    resizes_partner: ClassVar[bool] = False

    def sample(
        self, rng: Any, cfg: Any, height: int, width: int, partners: Sequence[dict[str, Any]] = ()
    ) -> MixParams:
        """Draw the parameters of one mix on a ``height x width`` canvas from the numpy
        generator ``rng`` (the only place this mode draws random numbers). ``partners`` are the
        partner samples on the same canvas, given when :attr:`reads_partner`."""
        raise NotImplementedError

    def apply(
        self, a: dict[str, Any], partners: Sequence[dict[str, Any]], params: MixParams, cfg: Any,
        box_keys: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Mix ``a`` with its :attr:`partners` samples (aligned to ``a``'s canvas unless
        :attr:`resizes_partner`) by ``params`` and the recipe section ``cfg``: a sample with the
        keys of :func:`detmix.functional.cutmix`'s result (``source`` 0 for ``a``, ``k`` for
        ``partners[k - 1]``)."""
        raise NotImplementedError

    def check(self, params: MixParams) -> None:
        """Refuse parameters this mode cannot apply with a ``ValueError`` naming the field
        (``lam``, ``cut_box``...); called by ``MixParams`` itself."""

    def window(self, params: MixParams) -> tuple[int, int, int, int] | None:
        """The part of the partner's image the mix reads (whole pixels on the canvas), so that
        alignment computes nothing else; None: all of it."""
        return None

    def partner_in_play(self, params: MixParams) -> bool:
        """Whether the partner's annotations took part (its dropped boxes are reported)."""
        return True

    def row_rules(self, cfg: Any, boxes: Any, visibility: Any, share: Any) -> tuple[Any, Any]:
        """``(reason, weight)`` of rows after the mix (the batch path applies each mode's own):
        by default the CutMix thresholds of ``cfg`` and its weight mode."""
        from detmix import functional as F

        reason = F.drop_reasons(boxes, visibility, min_visibility=cfg.min_visibility, min_area=cfg.min_area,
                                min_size=cfg.min_size)
        return reason, F.box_weights(cfg.weight, visibility, share)

    def outline(self, params: MixParams) -> tuple[int, int, int, int] | None:
        """The box a picture outlines (the cut box; ResizeMix's paste box), or None."""
        return params.cut_box

    def describe(self, params: MixParams) -> str:
        """A short caption (previews, logs)."""
        return f"{self.name}  lam={params.lam:.2f}"

    def __repr__(self) -> str:
        return f"<mode {self.name!r}>"


_REGISTRY: dict[str, Mode] = {}


def register(mode: Mode) -> Mode:
    """Add ``mode`` to the registry under ``mode.name`` (a new name, or the same object again)."""
    if not isinstance(mode, Mode):
        raise TypeError(f"mode must be a detmix.modes.Mode instance, got {type(mode).__name__}")
    name = getattr(mode, "name", None)
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"mode.name must be an identifier not starting with '_', got {name!r}")
    if mode.batch_kind not in ("cut", "blend", None):
        raise ValueError(f"mode.batch_kind must be 'cut', 'blend' or None, got {mode.batch_kind!r}")
    if mode.batch_kind is not None and mode.extra_keys:
        raise ValueError(
            f"mode {name!r} has its own parameters {list(mode.extra_keys)}, which the vectorised {mode.batch_kind!r} "
            "batch path cannot apply: set batch_kind = None (BatchMix then runs it pair by pair)"
        )
    if isinstance(mode.partners, bool) or not isinstance(mode.partners, int) or mode.partners < 0:
        raise ValueError(f"mode.partners must be an int >= 0, got {mode.partners!r}")
    from detmix._fields import RECIPE_FIELDS

    if name in RECIPE_FIELDS:
        raise ValueError(f"mode.name must not be a recipe field {sorted(RECIPE_FIELDS)}, got {name!r}")
    current = _REGISTRY.get(name)
    if current is not None and current is not mode:
        raise ValueError(f"a mode named {name!r} is already registered ({current!r}); unregister it first")
    _REGISTRY[name] = mode
    return mode


def unregister(name: str) -> None:
    """Remove a mode added with :func:`register` (built-in modes cannot be removed)."""
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in mode and cannot be unregistered")
    _REGISTRY.pop(name, None)


def get_mode(name: Any) -> Mode:
    """The registered mode called ``name``."""
    mode = _REGISTRY.get(name) if isinstance(name, str) else None
    if mode is None:
        raise ValueError(f"mode must be one of {mode_names()}, got {name!r}")
    return mode


def mode_names() -> tuple[str, ...]:
    """The registered names, in registration order (the built-ins first)."""
    return tuple(_REGISTRY)


# The built-in modes register themselves on import (they import Mode and register from here).
# Their order is that of the codes of detmix.torch.BatchParams.mode (none 0, mixup 1, cutmix 2).
from detmix.modes import none as _none  # noqa: E402,F401
from detmix.modes import mixup as _mixup  # noqa: E402,F401
from detmix.modes import cutmix as _cutmix  # noqa: E402,F401
from detmix.modes import cutout as _cutout  # noqa: E402,F401
from detmix.modes import resizemix as _resizemix  # noqa: E402,F401
from detmix.modes import fmix as _fmix  # noqa: E402,F401
from detmix.modes import saliencymix as _saliencymix  # noqa: E402,F401
from detmix.modes import copy_paste as _copy_paste  # noqa: E402,F401

_BUILTIN = frozenset(_REGISTRY)
