"""Detection CutMix and MixUp as Albumentations 2.0.8 transforms.

>>> import albumentations as A
>>> from detmix.albumentations import BoxCutMix
>>> tf = A.Compose(
...     [A.HorizontalFlip(), BoxCutMix(alpha=1.0, min_visibility=0.25, p=0.5), A.RandomBrightnessContrast()],
...     bbox_params=A.BboxParams(format="coco", label_fields=["labels"], min_visibility=0.1),
...     seed=7,
... )
>>> out = tf(image=img, bboxes=boxes, labels=labels, masks=masks,
...          mix_metadata=[{"image": img2, "bboxes": boxes2, "labels": labels2, "masks": masks2}])  # doctest: +SKIP
>>> out["bboxes"], out["labels"], out["mix_weights"]  # doctest: +SKIP

The transforms follow Albumentations' own convention for transforms that need other images
(``A.Mosaic``): the partner samples arrive under ``metadata_key`` (default ``"mix_metadata"``) as a
list of dicts with ``image`` and optionally ``bboxes``, the ``BboxParams`` label fields and
``masks``. The partner's boxes go through the Compose's own bbox processor (its format and its label
encoders), so boxes in any format and labels of any kind (ints, strings) come out right.

Nothing here decides which box survives or what it weighs: the parameters are drawn by
:func:`detmix.sample_params` for the canvas of :func:`detmix.align_canvas` from the transform's
``random_generator`` (the numpy Generator that ``Compose(seed=...)`` seeds) and applied by
:func:`detmix.mix_pair`, which aligns the partner (only its cut box, for a CutMix) and applies the
core's rules.

How per-box values survive the rest of the pipeline
----------------------------------------------------
Inside a Compose, Albumentations keeps boxes as one array: 4 normalized coordinates, then any extra
columns, then one column per label field, and it filters rows after every transform. When a detmix
transform joins a Compose it upgrades the Compose's bbox processor (:class:`MixBboxProcessor`) to
append two hidden columns after the label columns:

* the box's **mix weight** (1 until a mix writes it), returned as ``out["mix_weights"]`` (float32,
  one per output box) whether or not a mix happened, so every sample has the key;
* the box's **row in** ``masks`` (0..N-1), used at the end of the pipeline to keep ``masks[i]`` the
  instance mask of ``bboxes[i]``: masks of boxes that any transform dropped are removed.

Both ride in the bbox array, so every later transform and every filter moves them with their box.
``masks`` must therefore hold one instance mask per box, in the order of ``bboxes``.

Replay: the drawn :class:`~detmix.sampling.MixParams` (as a dict), the partner's index and the
prepared partner are the transform's params, so ``ReplayCompose.replay`` repeats the mix exactly.

The transforms need ``albumentations==2.0.8`` (the last MIT release); see ``docs/albumentations.md``
for what differs in AlbumentationsX.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

try:
    from albumentations.core.bbox_utils import BboxProcessor, denormalize_bboxes, normalize_bboxes
    from albumentations.core.transforms_interface import BaseTransformInitSchema, BasicTransform, DualTransform
    from albumentations.core.type_definitions import Targets
except ImportError as error:  # pragma: no cover - exercised only without albumentations
    raise ImportError(
        'detmix.albumentations needs albumentations==2.0.8; install it with pip install "detmix[albumentations]"'
    ) from error

if "get_params_dependent_on_data" in getattr(BasicTransform, "_removed_sampling_hooks", ()):  # pragma: no cover
    raise ImportError(
        "detmix.albumentations is written for albumentations 2.0.x (MIT); the installed AlbumentationsX removed "
        "get_params_dependent_on_data. Install albumentations==2.0.8 (see docs/albumentations.md)"
    )


from detmix.functional import masks_to_boxes
from detmix.datasets import METADATA_KEY as _METADATA_KEY
from detmix.mix import draw_params, mix_pair
from detmix._fields import Alpha, MinArea, MinSize, Unit, WeightModeField
from detmix.recipes import CutMixConfig, MixUpConfig, Recipe, load_recipe
from detmix.sampling import MixParams

__all__ = [
    "METADATA_KEY",
    "WEIGHTS_KEY",
    "BoxCutMix",
    "BoxMixUp",
    "MixBboxProcessor",
    "OneOfMix",
    "RecipeMix",
    "from_recipe",
]

#: Where the partner samples are looked up by default (Albumentations' Mosaic uses "mosaic_metadata");
#: defined with the datasets that put them there.
METADATA_KEY = _METADATA_KEY
#: The output key of the per-box weights.
WEIGHTS_KEY = "mix_weights"
#: Hidden columns appended after the label columns: the box's weight, then its row in ``masks``.
_HIDDEN_COLUMNS = 2

_SUPPORTED_TARGETS = frozenset({"image", "bboxes", "masks", "crowd_mask"})
#: The crowd regions (COCO ``iscrowd=1``) of a sample: one (H, W) mask, registered in the Compose as
#: a mask target (``additional_targets={"crowd_mask": "mask"}``) so that every transform moves it.
CROWD_KEY = "crowd_mask"
#: Box coordinates this close to a whole pixel, and stored as exactly its float32 fraction, are put on it.
_SNAP_PIXELS = 1e-3


# --------------------------------------------------------------------------------------------
# The Compose's bbox processor, upgraded when a detmix transform joins the pipeline
# --------------------------------------------------------------------------------------------


class MixBboxProcessor(BboxProcessor):
    """Albumentations' ``BboxProcessor`` plus two hidden per-box columns: weight and mask row.

    A detmix transform installs it in place of the Compose's processor when the Compose hands it
    its processors (``set_processors``); users never build one. At preprocess it checks that
    ``masks`` hold one instance mask per box and appends, after the label columns, the column of
    weights (1) and the column of rows in ``masks`` (0..N-1). At postprocess, after Albumentations
    has filtered and converted the boxes, it pops both: the weights become ``data["mix_weights"]``
    and ``data["masks"]`` is reordered to the surviving rows, so ``masks[i]`` belongs to
    ``bboxes[i]``. Serialization is unchanged: its params are the user's ``BboxParams``.
    """

    def ensure_data_valid(self, data: dict[str, Any]) -> None:
        """Albumentations' checks, plus: ``masks`` (when given with ``bboxes``) has one mask per box."""
        super().ensure_data_valid(data)
        boxes, masks = data.get("bboxes"), data.get("masks")
        if boxes is not None and masks is not None and len(masks) != len(boxes):
            raise ValueError(
                f"masks must hold one instance mask per box when a detmix transform is in the pipeline, got "
                f"{len(masks)} masks for {len(boxes)} bboxes; pass a semantic mask as 'mask' instead"
            )

    def add_label_fields_to_data(self, data: dict[str, Any]) -> dict[str, Any]:
        """Append the label columns (Albumentations), then the weight and mask-row columns."""
        data = super().add_label_fields_to_data(data)
        boxes = data.get("bboxes")
        if isinstance(boxes, np.ndarray) and boxes.size:
            n = len(boxes)
            hidden = np.stack([np.ones(n), np.arange(n)], axis=1).astype(boxes.dtype)
            data["bboxes"] = np.hstack([boxes, hidden])
        return data

    def remove_label_fields_from_data(self, data: dict[str, Any]) -> dict[str, Any]:
        """Pop the hidden columns (weights out, masks reordered), then split the label columns."""
        boxes = data.get("bboxes")
        if boxes is not None:
            boxes = np.asarray(boxes)
            if boxes.size:
                weights, rows = boxes[:, -2], np.rint(boxes[:, -1]).astype(np.int64)
                data["bboxes"] = boxes[:, :-_HIDDEN_COLUMNS]
            else:
                weights, rows = np.zeros(0), np.zeros(0, np.int64)
            data[WEIGHTS_KEY] = weights.astype(np.float32)
            masks = data.get("masks")
            if isinstance(masks, np.ndarray) and masks.ndim >= 3:
                if rows.size and int(rows.max()) >= len(masks):
                    raise RuntimeError(
                        f"a transform changed the number of masks ({len(masks)}) without their boxes; "
                        f"box rows point to mask {int(rows.max())}"
                    )
                data["masks"] = masks[rows]
        return super().remove_label_fields_from_data(data)


def _install_processor(processors: Mapping[str, Any]) -> None:
    processor = processors.get("bboxes")
    if processor is None or isinstance(processor, MixBboxProcessor):
        return
    if type(processor) is not BboxProcessor:
        raise TypeError(
            f"detmix transforms need the Compose's bbox processor to be albumentations' BboxProcessor, got "
            f"{type(processor).__name__}"
        )
    # Same object, same state (its label encoders are shared with the Compose); new behaviour.
    processor.__class__ = MixBboxProcessor


# --------------------------------------------------------------------------------------------
# Argument schemas
# --------------------------------------------------------------------------------------------


class _MixSchema(BaseTransformInitSchema):
    align: Literal["pad", "resize"]
    fill: Annotated[float, Field(allow_inf_nan=False)]
    metadata_key: Annotated[str, Field(min_length=1)]


class _CutMixSchema(_MixSchema):
    model_config = ConfigDict(title="BoxCutMix")

    alpha: Alpha
    lam_clamp: tuple[Unit, Unit] | None
    min_visibility: Unit
    min_area: MinArea
    min_size: MinSize
    weight: WeightModeField

    @model_validator(mode="after")
    def _as_config(self) -> _CutMixSchema:  # the core's own rules (e.g. lam_clamp low <= high)
        CutMixConfig(**_config_fields(self, CutMixConfig))
        return self


class _MixUpSchema(_MixSchema):
    model_config = ConfigDict(title="BoxMixUp")

    alpha: Alpha
    lam_clamp: tuple[Unit, Unit] | None
    min_weight: Unit
    weight: WeightModeField

    @model_validator(mode="after")
    def _as_config(self) -> _MixUpSchema:
        MixUpConfig(**_config_fields(self, MixUpConfig))
        return self


class _RecipeMixSchema(_MixSchema):
    model_config = ConfigDict(title="RecipeMix")

    recipe: Any  # a name, a path, a dict or a Recipe
    align: Literal["pad", "resize"] | None = None  # None: the recipe's
    p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None  # None: the recipe's prob

    @model_validator(mode="after")
    def _as_recipe(self) -> _RecipeMixSchema:
        load_recipe(self.recipe)  # refused with the recipe's own message, naming the field
        return self


def _config_fields(schema: Any, config: type) -> dict[str, Any]:
    return {name: getattr(schema, name) for name in config.model_fields}


# --------------------------------------------------------------------------------------------
# The transforms
# --------------------------------------------------------------------------------------------


class _BoxMix(DualTransform):
    """What BoxCutMix, BoxMixUp and OneOfMix share: partner handling, alignment and application."""

    _targets = (Targets.IMAGE, Targets.MASK, Targets.BBOXES)

    def __init__(self, align: Literal["pad", "resize"], fill: float, metadata_key: str, p: float) -> None:
        super().__init__(p=p)
        self.align = align
        self.fill = fill
        self.metadata_key = metadata_key
        self._available_keys.add(metadata_key)  # a known key for Compose(strict=True)
        self._warned_no_partner = False

    # -- the recipe the transform's arguments describe ------------------------------------------

    @property
    def recipe(self) -> Recipe:
        """The :class:`~detmix.recipes.Recipe` that the arguments describe (``prob`` is 1:
        whether the transform runs at all is Albumentations' ``p``)."""
        raise NotImplementedError

    # -- Albumentations hooks --------------------------------------------------------------------

    def __call__(self, *args: Any, force_apply: bool = False, **kwargs: Any) -> Any:
        """Albumentations' call, after refusing a ``crowd_mask`` that the Compose does not move.

        Checked on every call, mixed or not: an unregistered ``crowd_mask`` is left where it was by
        every other transform (a flip, a resize), so it no longer matches the image either way."""
        if kwargs.get(CROWD_KEY) is not None and self._additional_targets.get(CROWD_KEY) != "mask":
            raise ValueError(
                f"{type(self).__name__}: the data has {CROWD_KEY!r} but the Compose does not register it as a mask "
                f"target, so its transforms leave it behind while they move the image; register it: "
                f"A.Compose(..., additional_targets={{{CROWD_KEY!r}: 'mask'}})"
            )
        return super().__call__(*args, force_apply=force_apply, **kwargs)

    def set_processors(self, processors: dict[str, Any]) -> None:
        """Take the Compose's processors and upgrade its bbox processor to :class:`MixBboxProcessor`."""
        _install_processor(processors)
        super().set_processors(processors)

    def apply(self, img: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        """Not used: every target is mixed at once in :meth:`apply_with_params`."""
        raise NotImplementedError(f"{type(self).__name__} mixes all targets at once in apply_with_params")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Pick a partner, bring it onto the canvas and draw the mix.

        Draws, in this order, from ``self.random_generator``: the partner's index (only when more
        than one is given), then :func:`detmix.sample_params`.

        Returns:
            dict: ``mix`` (:meth:`MixParams.to_dict`, or None when no partner was given),
            ``partner_index``, ``partner_item`` (the partner as given, for replays) and ``partner``
            (the partner as a detmix sample, its boxes run through the Compose's processor).
        """
        if "image" not in data:
            raise ValueError(f"{type(self).__name__} needs 'image' (a numpy array); 'images' batches are not supported")
        items = self._partner_items(data)
        if not items:
            self._warn_no_partner()
            return {"mix": None, "partner_index": None, "partner_item": None, "partner": None}
        index = int(self.random_generator.integers(len(items))) if len(items) > 1 else 0
        item = self._partner_item(items[index], index)
        partner = self._prepare_partner(item, index, data)
        primary = {"image": data["image"], "boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}
        mix = draw_params(self.random_generator, self.recipe, primary, {k: v for k, v in partner.items() if k != "columns"})
        return {"mix": mix.to_dict(), "partner_index": index, "partner_item": item, "partner": partner}

    def apply_with_params(self, params: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Mix the call's image, bboxes and masks with the partner in ``params``, by
        :func:`detmix.mix_pair`. Also the replay path of ``ReplayCompose``."""
        if not params or params.get("mix") is None:
            return dict(kwargs)
        self._check_targets(kwargs)
        image = kwargs["image"]
        rows = kwargs.get("bboxes")
        masks = kwargs.get("masks")
        if masks is not None and rows is None:
            raise ValueError(
                f"{type(self).__name__} treats masks as instance masks, one per box: pass bboxes (with bbox_params) "
                "along with masks"
            )
        primary, primary_columns = _to_sample(image, rows, masks, "masks")
        crowd = kwargs.get(CROWD_KEY)
        if crowd is not None:
            primary.update(_crowd_sample(crowd, image, CROWD_KEY))
        if self.replay_mode:  # a replayed Compose has its own label encoders: encode the partner again
            partner = self._prepare_partner(params["partner_item"], params["partner_index"], kwargs)
        else:
            partner = dict(params["partner"])
        partner_columns = partner.pop("columns")
        if masks is None:
            partner.pop("masks", None)
        columns = _merge_columns(primary_columns, partner_columns, self.metadata_key, params.get("partner_index"))
        primary["columns"], partner["columns"] = columns
        out = mix_pair(primary, partner, MixParams.from_dict(params["mix"]), self.recipe, fill=self.fill,
                       box_keys=("columns",))

        result = dict(kwargs)
        result["image"] = np.ascontiguousarray(out["image"])
        if rows is not None:
            result["bboxes"] = _to_rows(out, _rows_dtype(rows))
        if masks is not None:
            result["masks"] = np.ascontiguousarray(out["masks"])
        if "crowd_mask" in out:
            result[CROWD_KEY] = np.ascontiguousarray(out["crowd_mask"])
        return result

    # -- helpers ---------------------------------------------------------------------------------

    def _partner_items(self, data: Mapping[str, Any]) -> list[Any]:
        value = data.get(self.metadata_key)
        if value is None:
            return []
        if isinstance(value, Mapping):
            return [value]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise TypeError(
            f"{self.metadata_key} must be a list of dicts (each with 'image' and optionally 'bboxes', the label "
            f"fields and 'masks'), got {type(value).__name__}"
        )

    def _warn_no_partner(self) -> None:
        if self._warned_no_partner:
            return
        self._warned_no_partner = True
        warnings.warn(
            f"{type(self).__name__}: no partner sample under '{self.metadata_key}', so nothing is mixed; pass "
            f"{self.metadata_key}=[{{'image': ..., 'bboxes': ..., <label fields>: ..., 'masks': ...}}] or wrap the "
            "dataset in detmix.datasets.MixDataset (this warning is shown once per transform)",
            UserWarning,
            stacklevel=2,
        )

    def _check_targets(self, kwargs: Mapping[str, Any]) -> None:
        for key, value in kwargs.items():
            if value is None or key not in self._key2func:
                continue
            target = self._additional_targets.get(key, key)
            if key not in _SUPPORTED_TARGETS:
                raise ValueError(
                    f"{type(self).__name__} mixes 'image', 'bboxes' and instance 'masks' only, got the target "
                    f"{key!r}" + (f" (an additional {target!r})" if target != key else "")
                )

    def _partner_item(self, item: Any, index: int) -> dict[str, Any]:
        """The keys of partner ``index`` that the mix reads (a shallow copy: arrays are shared)."""
        where = f"{self.metadata_key}[{index}]"
        if not isinstance(item, Mapping):
            raise TypeError(f"{where} must be a dict with 'image' and optionally 'bboxes', the label fields and "
                            f"'masks', got {type(item).__name__}")
        processor = self.get_processor("bboxes")
        fields = list(processor.params.label_fields or []) if processor is not None else []
        return {key: item[key] for key in ("image", "bboxes", "masks", CROWD_KEY, *fields) if key in item}

    def _prepare_partner(self, item: Mapping[str, Any], index: int, data: Mapping[str, Any]) -> dict[str, Any]:
        """The partner as a detmix sample on its own canvas (aligned when applied, see
        :func:`detmix.mix_pair`), its boxes run through the Compose's processor (format, label
        encoders, hidden columns) and its masks in box order."""
        where = f"{self.metadata_key}[{index}]"
        image, primary = item.get("image"), data["image"]
        if not isinstance(image, np.ndarray):
            raise TypeError(f"{where}['image'] must be a numpy array like 'image', got {type(image).__name__}")
        if image.ndim != primary.ndim or image.shape[2:] != primary.shape[2:]:
            raise ValueError(
                f"{where}['image'] must have the layout of 'image' (shape {primary.shape}: same number of "
                f"dimensions and channels), got shape {image.shape}"
            )
        if image.dtype != primary.dtype:
            raise TypeError(f"{where}['image'] must have the dtype of 'image' ({primary.dtype}), got {image.dtype}")
        if data.get("masks") is not None and item.get("masks") is None and data.get("bboxes") is not None:
            raise ValueError(f"{where} has no 'masks' but the sample has instance masks; give masks for every partner")

        processor = self.get_processor("bboxes")
        rows, masks = None, item.get("masks")
        if processor is not None and item.get("bboxes") is not None:
            fields = list(processor.params.label_fields or [])
            missing = [name for name in fields if name not in item]
            if missing:
                raise ValueError(
                    f"{where} has 'bboxes' but lacks the label field(s) {missing} of BboxParams(label_fields={fields})"
                )
            if masks is not None and len(masks) != len(item["bboxes"]):
                raise ValueError(
                    f"{where}['masks'] must hold one instance mask per box, got {len(masks)} masks for "
                    f"{len(item['bboxes'])} bboxes"
                )
            rows = _preprocess(processor, {"image": image, "bboxes": item["bboxes"], **{f: item[f] for f in fields}},
                               where)
        if masks is not None and not isinstance(masks, np.ndarray):
            masks = np.stack(masks) if len(masks) else np.zeros((0, *image.shape[:2]), np.uint8)
        sample, columns = _to_sample(image, rows, masks, f"{where}['masks']")
        if item.get(CROWD_KEY) is not None:
            sample.update(_crowd_sample(item[CROWD_KEY], image, f"{where}[{CROWD_KEY!r}]"))
        sample["columns"] = columns
        return sample


def _preprocess(processor: BboxProcessor, temp: dict[str, Any], where: str) -> np.ndarray:
    """Run the partner's boxes through the Compose's processor (format, label encoders, hidden
    columns) without disturbing what the processor remembers about the primary sample."""
    remembered = dict(processor.is_sequence_input)
    try:
        processor.preprocess(temp)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{where}['bboxes']: {error}") from error
    finally:
        processor.is_sequence_input = remembered
    return np.asarray(temp["bboxes"])


def _to_sample(image: np.ndarray, rows: Any, masks: Any, masks_name: str) -> tuple[dict[str, Any], np.ndarray | None]:
    """A detmix sample of one side: pixel xyxy boxes, the other columns apart (None when there
    are no boxes, so their number is unknown) and the masks put in box order."""
    height, width = image.shape[:2]
    if rows is None or np.asarray(rows).size == 0:
        boxes, columns = np.zeros((0, 4)), None
    else:
        stored = np.asarray(rows)
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] < 4 + _HIDDEN_COLUMNS:
            raise ValueError(
                f"bboxes must come from a Compose with bbox_params (N, 4 + extra columns), got shape {rows.shape}; "
                "detmix transforms run inside A.Compose"
            )
        # Albumentations keeps boxes normalized in float32: undo its rounding (an edge on a whole
        # pixel must meet a cut edge there) and its excursions outside the canvas. Only a stored
        # fraction that is exactly the float32 fraction of a whole pixel is put on it: a true
        # 381.0004 px is stored otherwise, and kept.
        boxes = denormalize_bboxes(rows[:, :4], (height, width))
        nearest = np.rint(boxes)
        sides = np.array([width, height, width, height], np.float64)
        whole = (nearest / sides).astype(np.float32) == stored[:, :4].astype(np.float32)
        boxes = np.where(whole & (np.abs(boxes - nearest) < _SNAP_PIXELS), nearest, boxes)
        boxes = np.clip(boxes, 0, [width, height, width, height])
        columns = rows[:, 4:]
    sample: dict[str, Any] = {"image": image, "boxes": boxes, "labels": np.arange(len(boxes))}
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[1:] != (height, width):
            if masks.size == 0 and len(boxes) == 0:
                masks = np.zeros((0, height, width), np.uint8)
            else:
                raise ValueError(f"{masks_name} must have shape (N, {height}, {width}), got {masks.shape}")
        if masks.dtype not in (np.uint8, np.bool_):
            raise TypeError(f"{masks_name} must be uint8 or bool instance masks, got dtype {masks.dtype}")
        order = np.zeros(0, np.int64) if columns is None else np.rint(columns[:, -1]).astype(np.int64)
        sample["masks"] = masks[order]
    return sample, columns


def _crowd_sample(crowd: Any, image: np.ndarray, name: str) -> dict[str, Any]:
    """The core's crowd keys for a ``crowd_mask``: the mask, and its tight box as the one region
    (the union's pixels under that box are the whole union)."""
    crowd = np.asarray(crowd)
    height, width = image.shape[:2]
    if crowd.shape != (height, width):
        raise ValueError(
            f"{name} must be one (H, W) mask on the image's canvas ({height}, {width}), got shape {crowd.shape}; "
            f"register it as a mask target so that every transform moves it: "
            f"A.Compose(..., additional_targets={{{CROWD_KEY!r}: 'mask'}})"
        )
    if crowd.dtype not in (np.uint8, np.bool_):
        raise TypeError(f"{name} must be a uint8 or bool mask, got dtype {crowd.dtype}")
    box = masks_to_boxes(crowd[None], np.float64)
    boxes = box if crowd.any() else np.zeros((0, 4))
    return {"crowd_boxes": boxes, "crowd_mask": crowd}


def _merge_columns(a: np.ndarray | None, b: np.ndarray | None, key: str, index: Any) -> tuple[np.ndarray, np.ndarray]:
    """The extra columns of both sides with one width (a side without boxes takes the other's)."""
    width = a.shape[1] if a is not None else b.shape[1] if b is not None else 0
    if a is not None and b is not None and a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{key}[{index}]['bboxes'] carry {b.shape[1] - _HIDDEN_COLUMNS} values after the 4 coordinates "
            f"(extra columns and label fields) but bboxes carry {a.shape[1] - _HIDDEN_COLUMNS}; give both the same"
        )
    empty = np.zeros((0, width))
    return (empty if a is None else a), (empty if b is None else b)


def _rows_dtype(rows: Any) -> np.dtype:
    rows = np.asarray(rows)
    return rows.dtype if rows.size and np.issubdtype(rows.dtype, np.floating) else np.dtype(np.float32)


def _to_rows(out: Mapping[str, Any], dtype: np.dtype) -> np.ndarray:
    """Albumentations rows from a mixed sample: normalized boxes, the columns, the new weights and
    the boxes' rows in the new masks."""
    height, width = out["image"].shape[:2]
    boxes = np.asarray(out["boxes"], dtype=np.float64).reshape(-1, 4)
    columns = np.asarray(out["columns"], dtype=np.float64)
    if columns.shape[1] == 0:
        return np.zeros((0, 4), dtype)
    rows = np.hstack([normalize_bboxes(boxes, (height, width)) if len(boxes) else boxes, columns])
    rows[:, -2] = out["weights"]
    rows[:, -1] = np.arange(len(rows))
    return np.ascontiguousarray(rows.astype(dtype))


class BoxCutMix(_BoxMix):
    """Paste a rectangle of a partner image, with its boxes, masks and per-box weights.

    The cut box of area ``(1 - lam) * H * W`` is centred uniformly on the canvas with
    ``lam ~ Beta(alpha, alpha)`` (timm's and torchvision's CutMix); boxes of the image are cut to
    what is left of them, the partner's boxes to their part inside the cut, both by the rules of
    :func:`detmix.functional.cutmix` (from the instance masks when they are given).

    Args:
        alpha (float): ``lam ~ Beta(alpha, alpha)``, in (0, 100]. Default: 1.0.
        lam_clamp (tuple[float, float] | None): clip the drawn ``lam`` to ``[low, high]`` before
            the cut is placed. Default: None.
        min_visibility (float): drop boxes whose visible share is below this, in [0, 1]. Default: 0.0.
        min_area (float): drop boxes whose new area in pixels is below this. Default: 0.0.
        min_size (float): drop boxes whose new width or height in pixels is below this. Default: 1.0.
        weight (str): per-box weights written to ``mix_weights``: ``"visibility"`` (visible share),
            ``"lam"`` (share of the box's image in the output) or ``"hard"`` (1). Default: "visibility".
        align (str): how a partner of another size is brought onto the canvas: ``"resize"`` (to the
            image's size) or ``"pad"`` (both padded to the larger size; the output grows).
            Default: "resize".
        fill (float): padding value of ``align="pad"``. Default: 0.
        metadata_key (str): the key of the partner samples. Default: "mix_metadata".
        p (float): probability of applying the transform. Default: 0.5.

    Targets:
        image, bboxes, masks (instance masks, one per box)

    Image types:
        uint8, float32

    Note:
        The output gains ``mix_weights`` (float32, one per box, 1 for boxes of a sample that was not
        mixed), aligned with ``bboxes`` after every later transform; dropped instances' masks are
        removed from ``masks``. Without a partner the transform does nothing and warns once.

    Examples:
        >>> import albumentations as A
        >>> tf = A.Compose([BoxCutMix(min_visibility=0.25, p=1.0)],
        ...                bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]), seed=0)
        >>> out = tf(image=image, bboxes=boxes, labels=labels,
        ...          mix_metadata=[{"image": image2, "bboxes": boxes2, "labels": labels2}])  # doctest: +SKIP
        >>> out["mix_weights"]  # doctest: +SKIP
    """

    InitSchema = _CutMixSchema

    def __init__(
        self,
        alpha: float = 1.0,
        lam_clamp: tuple[float, float] | None = None,
        min_visibility: float = 0.0,
        min_area: float = 0.0,
        min_size: float = 1.0,
        weight: Literal["visibility", "lam", "hard"] = "visibility",
        align: Literal["pad", "resize"] = "resize",
        fill: float = 0,
        metadata_key: str = METADATA_KEY,
        p: float = 0.5,
    ) -> None:
        super().__init__(align=align, fill=fill, metadata_key=metadata_key, p=p)
        self.alpha = alpha
        self.lam_clamp = lam_clamp
        self.min_visibility = min_visibility
        self.min_area = min_area
        self.min_size = min_size
        self.weight = weight

    @property
    def recipe(self) -> Recipe:
        cutmix = CutMixConfig(**{name: getattr(self, name) for name in CutMixConfig.model_fields})
        return Recipe(name="BoxCutMix", prob=1.0, cutmix=cutmix, align=self.align)

    @classmethod
    def from_recipe(cls, recipe: str | Recipe | dict, **overrides: Any) -> BoxCutMix:
        """The CutMix of a recipe with only a ``cutmix`` section (``p`` is the recipe's ``prob``)."""
        recipe = load_recipe(recipe)
        if set(recipe.sections()) != {"cutmix"}:
            raise ValueError(f"recipe {recipe.name!r} must have only a 'cutmix' section for BoxCutMix, got "
                             f"{sorted(recipe.sections())}; use detmix.albumentations.from_recipe for any recipe")
        return cls(**{**recipe.cutmix.model_dump(), "align": recipe.align, "p": recipe.prob, **overrides})


class BoxMixUp(_BoxMix):
    """Blend a partner image, ``lam * image + (1 - lam) * partner``, and keep the boxes of both.

    ``lam ~ Beta(alpha, alpha)``; each box's weight is the share of its image in the blend (the
    detection MixUp of "Bag of Freebies for Training Object Detection Neural Networks"), by the
    rules of :func:`detmix.functional.mixup`. Boxes and masks are not changed.

    Args:
        alpha (float): ``lam ~ Beta(alpha, alpha)``, in (0, 100]. Default: 1.5.
        lam_clamp (tuple[float, float] | None): clip the drawn ``lam`` to ``[low, high]``. Default: None.
        min_weight (float): drop the boxes of an image whose share is below this, in [0, 1]. Default: 0.0.
        weight (str): per-box weights: ``"visibility"`` or ``"lam"`` (both the share of the box's
            image) or ``"hard"`` (1). Default: "visibility".
        align (str): ``"resize"`` or ``"pad"``, as in :class:`BoxCutMix`. Default: "resize".
        fill (float): padding value of ``align="pad"``. Default: 0.
        metadata_key (str): the key of the partner samples. Default: "mix_metadata".
        p (float): probability of applying the transform. Default: 0.5.

    Targets:
        image, bboxes, masks (instance masks, one per box)

    Image types:
        uint8, float32
    """

    InitSchema = _MixUpSchema

    def __init__(
        self,
        alpha: float = 1.5,
        lam_clamp: tuple[float, float] | None = None,
        min_weight: float = 0.0,
        weight: Literal["visibility", "lam", "hard"] = "visibility",
        align: Literal["pad", "resize"] = "resize",
        fill: float = 0,
        metadata_key: str = METADATA_KEY,
        p: float = 0.5,
    ) -> None:
        super().__init__(align=align, fill=fill, metadata_key=metadata_key, p=p)
        self.alpha = alpha
        self.lam_clamp = lam_clamp
        self.min_weight = min_weight
        self.weight = weight

    @property
    def recipe(self) -> Recipe:
        mixup = MixUpConfig(**{name: getattr(self, name) for name in MixUpConfig.model_fields})
        return Recipe(name="BoxMixUp", prob=1.0, mixup=mixup, align=self.align)

    @classmethod
    def from_recipe(cls, recipe: str | Recipe | dict, **overrides: Any) -> BoxMixUp:
        """The MixUp of a recipe with only a ``mixup`` section (``p`` is the recipe's ``prob``)."""
        recipe = load_recipe(recipe)
        if set(recipe.sections()) != {"mixup"}:
            raise ValueError(f"recipe {recipe.name!r} must have only a 'mixup' section for BoxMixUp, got "
                             f"{sorted(recipe.sections())}; use detmix.albumentations.from_recipe for any recipe")
        return cls(**{**recipe.mixup.model_dump(), "align": recipe.align, "p": recipe.prob, **overrides})


class _OneOfMixSchema(_MixSchema):
    model_config = ConfigDict(title="OneOfMix")

    mixup: MixUpConfig | None
    cutmix: CutMixConfig | None
    switch_prob: Unit


class OneOfMix(_BoxMix):
    """CutMix or MixUp, switched per sample as in DeiT / timm (``switch_prob`` is CutMix's share).

    Args:
        mixup (dict | None): the MixUp parameters (``alpha``, ``lam_clamp``, ``min_weight``,
            ``weight``), as in :class:`detmix.recipes.MixUpConfig`; None for its defaults.
        cutmix (dict | None): the CutMix parameters (``alpha``, ``lam_clamp``, ``min_visibility``,
            ``min_area``, ``min_size``, ``weight``), as in :class:`detmix.recipes.CutMixConfig`; None
            for its defaults.
        switch_prob (float): probability of CutMix rather than MixUp. Default: 0.5.
        align (str): ``"resize"`` or ``"pad"``, as in :class:`BoxCutMix`. Default: "resize".
        fill (float): padding value of ``align="pad"``. Default: 0.
        metadata_key (str): the key of the partner samples. Default: "mix_metadata".
        p (float): probability of mixing at all. Default: 0.5.

    Targets:
        image, bboxes, masks (instance masks, one per box)

    Image types:
        uint8, float32

    Examples:
        >>> OneOfMix.from_recipe("deit")  # doctest: +SKIP
        >>> OneOfMix(mixup={"alpha": 0.8}, cutmix={"alpha": 1.0, "min_visibility": 0.25}, p=1.0)  # doctest: +SKIP
    """

    InitSchema = _OneOfMixSchema

    def __init__(
        self,
        mixup: dict[str, Any] | None = None,
        cutmix: dict[str, Any] | None = None,
        switch_prob: float = 0.5,
        align: Literal["pad", "resize"] = "resize",
        fill: float = 0,
        metadata_key: str = METADATA_KEY,
        p: float = 0.5,
    ) -> None:
        super().__init__(align=align, fill=fill, metadata_key=metadata_key, p=p)
        # Stored in full, so A.to_dict writes every value the transform uses.
        self.mixup = MixUpConfig.model_validate(mixup or {}).model_dump()
        self.cutmix = CutMixConfig.model_validate(cutmix or {}).model_dump()
        self.switch_prob = switch_prob

    @property
    def recipe(self) -> Recipe:
        return Recipe(name="OneOfMix", prob=1.0, switch_prob=self.switch_prob, mixup=MixUpConfig(**self.mixup),
                      cutmix=CutMixConfig(**self.cutmix), align=self.align)

    @classmethod
    def from_recipe(cls, recipe: str | Recipe | dict, **overrides: Any) -> OneOfMix:
        """The switch of a recipe with both sections, e.g. ``OneOfMix.from_recipe("deit")``
        (``p`` is the recipe's ``prob``)."""
        recipe = load_recipe(recipe)
        if set(recipe.sections()) != {"cutmix", "mixup"} or recipe.odds is not None:
            raise ValueError(f"recipe {recipe.name!r} must have exactly 'mixup' and 'cutmix' (and no odds) for OneOfMix, "
                             f"got {sorted(recipe.sections())}; use detmix.albumentations.from_recipe for any recipe")
        return cls(**{"mixup": recipe.mixup.model_dump(), "cutmix": recipe.cutmix.model_dump(),
                      "switch_prob": recipe.switch_prob, "align": recipe.align, "p": recipe.prob, **overrides})


class RecipeMix(_BoxMix):
    """Any recipe as one transform: every mode of the registry (:mod:`detmix.modes`: CutMix,
    MixUp, Cutout, ResizeMix, FMix, SaliencyMix...), drawn as the recipe says.

    Args:
        recipe (str | dict | Recipe): the recipe (name, path, dict or
            :class:`~detmix.recipes.Recipe`); stored as a dict, so ``A.to_dict`` writes it.
        align (str): ``"resize"`` or ``"pad"``; default: the recipe's.
        fill (float): padding value of ``align="pad"``. Default: 0.
        metadata_key (str): the key of the partner samples. Default: "mix_metadata".
        p (float): probability of mixing at all. Default: the recipe's ``prob``.

    Targets:
        image, bboxes, masks (instance masks, one per box)

    Examples:
        >>> RecipeMix("fmix")  # doctest: +SKIP
        >>> RecipeMix({"cutout": {"area": [0.1, 0.2]}, "fmix": {}, "odds": {"cutout": 1, "fmix": 2}})  # doctest: +SKIP
    """

    InitSchema = _RecipeMixSchema

    def __init__(
        self,
        recipe: str | Recipe | dict[str, Any] = "deit",
        align: Literal["pad", "resize"] | None = None,
        fill: float = 0,
        metadata_key: str = METADATA_KEY,
        p: float | None = None,
    ) -> None:
        loaded = load_recipe(recipe if not isinstance(recipe, dict) else dict(recipe))
        super().__init__(align=align or loaded.align, fill=fill, metadata_key=metadata_key,
                         p=loaded.prob if p is None else p)
        self.recipe_dict = loaded.model_dump(mode="json")

    @property
    def recipe(self) -> Recipe:
        return load_recipe({**self.recipe_dict, "prob": 1.0, "align": self.align})

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("align", "fill", "metadata_key")

    def to_dict_private(self) -> dict[str, Any]:
        out = super().to_dict_private()
        out["recipe"] = self.recipe_dict
        return out


def from_recipe(recipe: str | Recipe | dict, **overrides: Any) -> BoxCutMix | BoxMixUp | OneOfMix | RecipeMix:
    """The transform a recipe describes: the classic classes when it has CutMix and/or MixUp only
    (:class:`OneOfMix` for both, else :class:`BoxCutMix` or :class:`BoxMixUp`), :class:`RecipeMix`
    for any other. ``overrides`` are passed to the constructor (``metadata_key``, ``p``, ...)."""
    recipe = load_recipe(recipe)
    classic = {"cutmix": BoxCutMix, "mixup": BoxMixUp}
    names = set(recipe.sections())
    if names == set(classic) and recipe.odds is None:
        return OneOfMix.from_recipe(recipe, **overrides)
    if len(names) == 1 and names <= set(classic):
        return classic[names.pop()].from_recipe(recipe, **overrides)
    return RecipeMix(recipe, **{"align": recipe.align, "p": recipe.prob, **overrides})
