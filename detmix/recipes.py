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
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

__all__ = ["PACKAGED_RECIPES", "CutMixConfig", "MixUpConfig", "Recipe", "builtin_recipes", "load_recipe", "recipe_dirs"]

#: Numbers are strict: ints and floats (numpy's too) pass, strings and Python booleans do not
#: (``alpha: yes`` is no 1.0).
Number = Annotated[float, Strict()]
Unit = Annotated[Number, Field(ge=0.0, le=1.0)]
Alpha = Annotated[Number, Field(gt=0.0, le=100.0, description="Beta(alpha, alpha) concentration")]
MinArea = Annotated[Number, Field(ge=0.0, le=1e8)]
MinSize = Annotated[Number, Field(ge=0.0, le=1e4)]
WeightModeField = Literal["visibility", "lam", "hard"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _MixConfig(_Strict):
    alpha: Alpha = 1.0
    lam_clamp: tuple[Unit, Unit] | None = Field(
        default=None, description="clip lam ~ Beta(alpha, alpha) into [low, high], e.g. [0.3, 0.7]"
    )
    weight: WeightModeField = Field(default="visibility", description="per-box weights: visibility, lam or hard")

    @field_validator("lam_clamp")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"lam_clamp must be [low, high] with low <= high, got {list(value)}")
        return value


class MixUpConfig(_MixConfig):
    """MixUp parameters; ``alpha`` 1.5 is the detection MixUp of "Bag of Freebies"."""

    alpha: Alpha = 1.5
    min_weight: Unit = Field(default=0.0, description="drop the boxes of an image whose share is below this")


class CutMixConfig(_MixConfig):
    """CutMix parameters; the thresholds are those of :func:`detmix.functional.cutmix`."""

    min_visibility: Unit = 0.0
    min_area: MinArea = 0.0
    min_size: MinSize = 1.0


class Recipe(_Strict):
    """A complete mixing recipe."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "custom"
    description: Annotated[str, Field(max_length=500)] = ""
    prob: Unit = Field(default=1.0, description="probability that a sample is mixed at all")
    switch_prob: Unit = Field(default=0.5, description="probability of CutMix rather than MixUp when both are set")
    mixup: MixUpConfig | None = None
    cutmix: CutMixConfig | None = None
    align: Literal["pad", "resize"] = Field(
        default="pad", description="how a partner of another size is brought onto the canvas"
    )

    @model_validator(mode="after")
    def _some_mix(self) -> Recipe:
        if self.mixup is None and self.cutmix is None:
            raise ValueError("a recipe needs 'mixup', 'cutmix' or both")
        return self


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
