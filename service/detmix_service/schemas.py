"""The API's request and response models (the OpenAPI schema is generated from them).

Requests are strict (unknown keys refused, JSON numbers not coerced from strings, NaN/inf
refused) and every number is bounded; inline recipes are validated by detmix's own
:class:`~detmix.recipes.Recipe` model, the one the YAML recipes go through.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from detmix.recipes import Recipe
from detmix_service.cocoio import MAX_ID, MAX_SIDE, CocoBatch, CocoCategory, Id

__all__ = [
    "DatasetBatchRequest",
    "DatasetInfo",
    "DroppedAnnotation",
    "ErrorResponse",
    "ImageParams",
    "MixParamsModel",
    "MixRequest",
    "MixResponse",
    "MixedAnnotation",
    "MixedImage",
    "OutputOptions",
    "Status",
]

RECIPE_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
Seed = Annotated[int, Field(ge=0, le=MAX_ID, description="seed of the pairing and of every draw")]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def _recipe_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "named"
    if isinstance(value, (dict, Recipe)):
        return "inline"
    return None


RecipeRef = Annotated[
    Annotated[str, Field(pattern=RECIPE_NAME), Tag("named")] | Annotated[Recipe, Tag("inline")],
    Discriminator(
        _recipe_kind,
        custom_error_type="recipe_type",
        custom_error_message="recipe must be the name of a recipe (GET /v1/recipes) or a recipe object",
    ),
]


class OutputOptions(_Request):
    format: Literal["jpeg", "png"] = Field(default="jpeg", description="encoding of the mixed images")
    quality: Annotated[int, Field(ge=1, le=95)] = Field(default=90, description="JPEG quality")


class MixParamsModel(_Request):
    """:class:`detmix.MixParams` on the wire (``MixParams.to_dict()``): a mode's own parameters
    (ResizeMix's ``paste_box``, FMix's ``seed`` and ``decay``...) are further keys, checked by the
    mode when the call is replayed."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False, frozen=True)

    mode: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", description="a mode of GET /v1/recipes' recipes")
    lam: Unit = Field(description="share of the output that comes from the image itself")
    cut_box: Annotated[list[Annotated[int, Field(ge=0, le=MAX_SIDE)]], Field(min_length=4, max_length=4)] | None = Field(
        default=None, description="[x1, y1, x2, y2] half-open pixels, for the modes that cut a box"
    )
    canvas: Annotated[list[Annotated[int, Field(ge=1, le=MAX_SIDE)]], Field(min_length=2, max_length=2)] | None = Field(
        default=None, description="[height, width] the parameters were drawn for"
    )

    @model_validator(mode="after")
    def _small_extras(self) -> MixParamsModel:
        for key, value in (self.__pydantic_extra__ or {}).items():
            values = value if isinstance(value, list) else [value]
            if len(values) > 8 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"params.{key} must be a number or a list of at most 8 numbers, got {value!r:.80}")
        return self


class ImageParams(_Request):
    """How one output image was made: its own image, the partner mixed into it, the params."""

    image_id: Id
    partner_id: Id
    params: MixParamsModel


class MixOptions(_Request):
    recipe: RecipeRef = Field(default="deit", description="a recipe name (GET /v1/recipes) or an inline recipe")
    seed: Seed | None = Field(default=None, description="omitted: the server draws one and returns it")
    params: Annotated[list[ImageParams], Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="replay: the 'mix' of every image of an earlier answer; the seed is then unused"
    )
    output: OutputOptions = Field(default_factory=OutputOptions)


class MixRequest(MixOptions, CocoBatch):
    """A COCO batch to mix (JSON: images carry ``data``; multipart: ``file_name`` names a file part)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    info: dict[str, Any] | None = Field(default=None, description="COCO 'info', ignored")
    licenses: list[Any] | None = Field(default=None, description="COCO 'licenses', ignored")


class DatasetBatchRequest(MixOptions):
    batch_size: Annotated[int, Field(ge=1, le=256)] | None = Field(
        default=None, description="images drawn from the dataset (default 8); omit with image_ids"
    )
    image_ids: Annotated[list[Id], Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="these images, in this order, instead of a draw"
    )


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


class RleOut(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="compressed COCO RLE, as pycocotools writes it")


class MixedImage(BaseModel):
    id: int = Field(description="the id of the input image whose canvas this output keeps")
    width: int
    height: int
    file_name: str
    format: Literal["jpeg", "png"]
    data: str = Field(description="the encoded image, base64; no EXIF or other metadata")
    mix: ImageParams = Field(description="give these back as 'params' to replay the call")


class MixedAnnotation(BaseModel):
    id: int = Field(description="new id, unique within the answer")
    image_id: int
    category_id: int
    bbox: list[float] = Field(description="[x, y, w, h]")
    area: float = Field(description="mask pixels when masks were given, else w * h")
    iscrowd: int = Field(description="1 for a crowd region: a region to ignore, never a target (no mix_weight)")
    segmentation: RleOut | None = Field(default=None, description="present when the request had masks")
    mix_weight: float | None = Field(
        default=None, description="per-box loss weight of the recipe's weight mode; absent for crowd regions"
    )
    source_image_id: int
    source_annotation_id: int


class DroppedAnnotation(BaseModel):
    image_id: int = Field(description="the output image it would have been in")
    source_image_id: int
    source_annotation_id: int
    category_id: int
    visibility: float = Field(description="share of the object left (CutMix) or its image's share (MixUp)")
    reason: Literal["invisible", "min_visibility", "min_area", "min_size", "min_weight", "not_selected"]


class ClippedBox(BaseModel):
    image_id: int = Field(description="the input image")
    annotation_id: int = Field(description="the input annotation whose bbox was clipped onto its image")
    overshoot: float = Field(description="how far (pixels, at most 1) the bbox reached out of its image")


class MixResponse(BaseModel):
    images: list[MixedImage]
    annotations: list[MixedAnnotation]
    categories: list[CocoCategory]
    dropped: list[DroppedAnnotation]
    clipped: list[ClippedBox] = Field(
        description="input boxes that poked out of their image by at most 1 px and were clipped onto it"
    )
    recipe: Recipe
    seed: int | None = Field(description="the seed used (null when the call replayed params)")


class DatasetInfo(BaseModel):
    name: str
    images: int = Field(description="images served")
    annotations: int
    categories: list[CocoCategory]
    masks: bool
    excluded_images: int = Field(description="images left out: file_name outside the folder, missing, too large")
    excluded_annotations: int = Field(description="annotations left out as invalid (the log names them)")


class Status(BaseModel):
    status: str
    detail: str | None = None


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorDetail]
