"""Mixing recipes: YAML files under ``configs/recipes/`` validated by pydantic models.

A recipe names which mixes may happen and with which parameters, in timm's terms: ``prob`` is
the probability that a sample is mixed at all, ``switch_prob`` the probability of CutMix rather
than MixUp when both are configured. The same models validate the REST API's inline recipes, so
every numeric field is bounded, NaN/inf are refused, and a number must be written as one: a
string such as ``"0.5"`` or a boolean is an error, not coerced. Recipe files read numbers as
YAML 1.2 does, so ``1e-3`` and ``1.0e3`` are numbers (PyYAML alone, YAML 1.1, reads them as
strings).

Example (``configs/recipes/deit.yaml``)::

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

__all__ = ["CutMixConfig", "MixUpConfig", "Recipe", "builtin_recipes", "load_recipe", "recipes_dir"]

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


def recipes_dir() -> Path:
    """Where the named recipes live: ``$DETMIX_RECIPES_DIR`` or the project's
    ``configs/recipes``."""
    env = os.environ.get("DETMIX_RECIPES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "configs" / "recipes"


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


def builtin_recipes() -> dict[str, Recipe]:
    """All recipes in :func:`recipes_dir`, by name."""
    return {p.stem: _read(p) for p in sorted(recipes_dir().glob("*.yaml"))}


def load_recipe(recipe: str | os.PathLike | Recipe | dict) -> Recipe:
    """A :class:`Recipe` from a name in :func:`recipes_dir`, a YAML path, a dict or a Recipe."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.model_validate(recipe)
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ValueError(f"recipe file {path} does not exist")
        return _read(path)
    named = recipes_dir() / f"{recipe}.yaml"
    if not named.is_file():
        known = sorted(p.stem for p in recipes_dir().glob("*.yaml"))
        raise ValueError(f"recipe must be one of {known} or a path to a YAML file, got {str(recipe)!r}")
    return _read(named)
