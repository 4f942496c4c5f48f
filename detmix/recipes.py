"""Mixing recipes: YAML files validated by pydantic models.

The named recipes (``cutmix``, ``deit``, ``mixup``) ship inside the package, in
``detmix/_recipes/`` (the project's ``configs/recipes`` is a link to that folder); the folder
named by ``$DETMIX_RECIPES_DIR`` adds its ``*.yaml`` files to them, and one of the same name as a
packaged recipe replaces it.

A recipe names which mixes may happen and with which parameters, in timm's terms: ``prob`` is
the probability that a sample is mixed at all, ``switch_prob`` the probability of CutMix rather
than MixUp when both are configured. The same models validate the REST API's inline recipes, so
every numeric field is bounded, NaN/inf are refused, and a number must be written as one: a
string such as ``"0.5"`` or a boolean is an error, not coerced. Recipe files read numbers as
YAML 1.2 does, so ``1e-3`` and ``1.0e3`` are numbers (PyYAML alone, YAML 1.1, reads them as
strings).

Example (``detmix/_recipes/deit.yaml``)::

    name: deit
    prob: 1.0
    switch_prob: 0.5
    mixup: {alpha: 0.8}
    cutmix: {alpha: 1.0}
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import ConfigDict, Field, ValidationError, create_model, model_serializer, model_validator

from detmix._fields import RECIPE_FIELDS, Number, StrictModel, Unit
from detmix.modes import get_mode, mode_names
from detmix.modes.cutmix import CutMixConfig
from detmix.modes.mixup import MixUpConfig

__all__ = ["PACKAGED_RECIPES", "CutMixConfig", "MixUpConfig", "Recipe", "builtin_recipes", "load_recipe", "recipe_dirs"]



class _RecipeBase(StrictModel):
    """What every recipe has besides its mode sections (see :class:`Recipe`)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    name: str = Field(default="custom", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = Field(default="", max_length=500)
    prob: Unit = Field(default=1.0, description="probability that a sample is mixed at all")
    switch_prob: Unit = Field(
        default=0.5, description="probability of CutMix rather than MixUp when a recipe has both and no odds (DeiT)"
    )
    odds: dict[str, Number] | None = Field(
        default=None,
        description="relative odds of the recipe's modes, e.g. {cutmix: 2, fmix: 1}; default: even (CutMix and "
        "MixUp alone: switch_prob)",
    )
    align: Literal["pad", "resize"] = Field(
        default="pad", description="how a partner of another size is brought onto the canvas"
    )

    @model_validator(mode="after")
    def _sections(self) -> _RecipeBase:
        extras = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        for key, value in list(extras.items()):
            mode = _mode_or_none(key)
            if mode is None or mode.config is None:
                raise ValueError(
                    f"unknown recipe key {key!r}: a recipe has {list(RECIPE_FIELDS)} and one section per mode "
                    f"{[n for n in mode_names() if get_mode(n).config is not None]}"
                )
            if value is not None and not isinstance(value, mode.config):
                try:
                    extras[key] = mode.config.model_validate(value)
                except ValidationError as error:
                    raise ValueError(f"section {key!r}: {error}") from None
        present = self.sections()
        if not present:
            names = [n for n in mode_names() if get_mode(n).config is not None]
            raise ValueError(f"a recipe needs at least one mode section of {names} (e.g. 'mixup', 'cutmix' or both)")
        deit = set(present) == {"cutmix", "mixup"} and self.odds is None
        if self.switch_prob != 0.5 and not deit:
            raise ValueError(
                f"switch_prob is the DeiT switch of a recipe of CutMix and MixUp alone (and no odds); this recipe has "
                f"{list(present)}" + (" and odds" if self.odds is not None else "") + ": give the modes' odds instead"
            )
        if self.odds is not None:
            unknown = sorted(set(self.odds) - set(present))
            if unknown:
                raise ValueError(f"odds names {unknown}, which the recipe has no section for (it has {list(present)})")
            missing = sorted(set(present) - set(self.odds))
            if missing:
                raise ValueError(f"odds must give every mode of the recipe its odds (0 to never draw it), missing {missing}")
            if any(v < 0 or not np.isfinite(v) for v in self.odds.values()) or sum(self.odds.values()) <= 0:
                raise ValueError(f"odds must be finite numbers >= 0 with a positive sum, got {self.odds}")
        return self

    @model_serializer(mode="wrap")
    def _without_empty_sections(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None or (k not in _section_names() and k != "odds")}

    def section(self, name: str) -> Any:
        """The recipe's section for mode ``name`` (None when it has none)."""
        if name in type(self).model_fields:
            return getattr(self, name)
        return (self.__pydantic_extra__ or {}).get(name)

    def sections(self) -> dict[str, Any]:
        """``{mode name: section}`` of the modes this recipe can draw, in registry order."""
        return {n: self.section(n) for n in mode_names() if self.section(n) is not None}

    def mode_odds(self) -> dict[str, float]:
        """The probability of each of the recipe's modes when it mixes, in drawing order:
        :attr:`odds` normalised; without them, CutMix with ``switch_prob`` and MixUp with the
        rest when those are the two modes (DeiT), else even odds."""
        present = list(self.sections())
        if self.odds is not None:
            raw = {n: float(self.odds.get(n, 0.0)) for n in self.odds}
        elif set(present) == {"cutmix", "mixup"}:  # the DeiT switch: CutMix first, as timm draws it
            raw = {"cutmix": self.switch_prob, "mixup": 1.0 - self.switch_prob}
        else:
            raw = {n: 1.0 for n in present}
        total = sum(raw.values())
        return {n: v / total for n, v in raw.items()}

    def choose(self, rng: np.random.Generator) -> str:
        """Draw which mode mixes: one ``rng.random()`` when the recipe has more than one mode
        (:meth:`mode_odds`), none otherwise."""
        odds = self.mode_odds()
        names = list(odds)
        if len(self.sections()) == 1:
            return next(iter(self.sections()))
        u = rng.random()
        cumulative = 0.0
        for name in names:
            cumulative += odds[name]
            if u < cumulative:
                return name
        return next(n for n in reversed(names) if odds[n] > 0)


def _mode_or_none(name: str) -> Any:
    try:
        return get_mode(name)
    except ValueError:
        return None


def _section_names() -> set[str]:
    return {n for n in mode_names() if get_mode(n).config is not None}


#: A complete mixing recipe: :class:`_RecipeBase`'s fields and one optional section per mode (the
#: built-in modes as typed fields, a mode registered later as a validated extra key).
Recipe = create_model(
    "Recipe",
    __base__=_RecipeBase,
    __module__=__name__,
    **{n: (get_mode(n).config | None, None) for n in mode_names() if get_mode(n).config is not None},
)
Recipe.__doc__ = """A complete mixing recipe: ``prob`` (that a sample is mixed at all), the modes it
draws from (one section per mode: ``cutmix``, ``mixup``, ``cutout``...), their ``odds`` (CutMix
and MixUp alone: ``switch_prob``, the DeiT switch) and ``align``. Validated strictly: unknown keys,
NaN and out-of-range values are refused with the field's name."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: an exponent needs neither a dot nor a sign."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


#: The folder of the recipes shipped with the package (package data, in the wheel too).
PACKAGED_RECIPES = Path(__file__).resolve().parent / "_recipes"


def recipe_dirs(extra: str | os.PathLike | None = None) -> list[Path]:
    """The folders the named recipes are read from, in order: the packaged ones, then ``extra``
    (default ``$DETMIX_RECIPES_DIR``, when set). A later folder's recipe replaces an earlier
    one of the same name."""
    if extra is None:
        extra = os.environ.get("DETMIX_RECIPES_DIR") or None
    if extra is None:
        return [PACKAGED_RECIPES]
    extra = Path(extra)
    if not extra.is_dir():
        raise ValueError(
            f"DETMIX_RECIPES_DIR must be a folder of recipe YAML files, got {str(extra)!r}, which is not a folder"
        )
    return [PACKAGED_RECIPES, extra]


def _named_paths(extra: str | os.PathLike | None = None) -> dict[str, Path]:
    return {p.stem: p for folder in recipe_dirs(extra) for p in sorted(folder.glob("*.yaml"))}


def _read(path: Path) -> Recipe:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a scalar that looks like a number and is not
        raise ValueError(f"recipe file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe file {path} must hold a mapping, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"recipe file {path} is invalid:\n{exc}") from None


def builtin_recipes(extra: str | os.PathLike | None = None) -> dict[str, Recipe]:
    """The named recipes, by name (sorted): the packaged ones and those of ``extra`` (default
    ``$DETMIX_RECIPES_DIR``); see :func:`recipe_dirs`."""
    return {name: _read(path) for name, path in sorted(_named_paths(extra).items())}


def load_recipe(recipe: str | os.PathLike | Recipe | dict) -> Recipe:
    """A :class:`Recipe` from a name (:func:`builtin_recipes`), a YAML path, a dict or a Recipe."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.model_validate(recipe)
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ValueError(f"recipe file {path} does not exist")
        return _read(path)
    named = _named_paths()
    if str(recipe) not in named:
        raise ValueError(f"recipe must be one of {sorted(named)} or a path to a YAML file, got {str(recipe)!r}")
    return _read(named[str(recipe)])
