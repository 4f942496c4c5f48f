"""Field types shared by the recipe models and the modes' parameter records (internal).

Numbers are strict: ints and floats (numpy's too) pass, strings and Python booleans do not
(``alpha: yes`` is no 1.0). Every numeric field is bounded, and NaN/inf are refused.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

__all__ = [
    "RECIPE_FIELDS", "Alpha", "BoxRules", "MinArea", "MinSize", "MixConfig", "Number", "StrictModel", "Thresholds", "Unit", "WeightModeField",
]

#: The top-level keys of a recipe that are not mode sections (a mode may not take one as its name).
RECIPE_FIELDS = ("name", "description", "prob", "switch_prob", "odds", "align")

Number = Annotated[float, Strict()]
Unit = Annotated[Number, Field(ge=0.0, le=1.0)]
Alpha = Annotated[Number, Field(gt=0.0, le=100.0, description="Beta(alpha, alpha) concentration")]
MinArea = Annotated[Number, Field(ge=0.0, le=1e8)]
MinSize = Annotated[Number, Field(ge=0.0, le=1e4)]
WeightModeField = Literal["visibility", "lam", "hard"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MixConfig(StrictModel):
    """What every mode's recipe section has: lam ~ Beta(alpha, alpha), clipped to ``lam_clamp``,
    and the per-box weight mode."""

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


class Thresholds(StrictModel):
    """The CutMix box thresholds (:func:`detmix.functional.cutmix`) and the weight mode."""

    weight: WeightModeField = Field(default="visibility", description="per-box weights: visibility, lam or hard")
    min_visibility: Unit = 0.0
    min_area: MinArea = 0.0
    min_size: MinSize = 1.0


class BoxRules(Thresholds, MixConfig):
    """A Beta-drawn lam and the CutMix box thresholds: the section of CutMix and the region modes."""
