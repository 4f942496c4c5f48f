"""Pictures of mixed samples: boxes drawn and labelled with class and weight, masks tinted.

People judge augmentation by looking at it. :func:`draw_sample` renders one result of
:func:`detmix.cutmix` / :func:`detmix.mixup` / :class:`detmix.RandomMix`; :func:`make_grid`
tiles several; :func:`preview_dataset` is what ``detmix preview`` runs; :func:`preview_grid` draws
the output of an Albumentations pipeline holding a detmix transform.

Colours: boxes from ``a`` (the kept canvas) are orange, boxes from ``b`` (the partner) are
blue; boxes that were dropped are drawn dashed in grey where their input geometry is given.
Crowd regions (regions to ignore, never targets) are shaded white with a dashed white box and
the caption ``crowd``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_sample", "dropped_input_boxes", "make_grid", "preview_dataset", "preview_grid", "to_numpy_image"]

SOURCE_COLOURS = ((255, 140, 0), (30, 144, 255))  # a, b
DROPPED_COLOUR = (160, 160, 160)
CROWD_COLOUR = (255, 255, 255)


def to_numpy_image(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 from a numpy HWC/HW or torch CHW image (floats taken as 0..1 when their
    maximum is at most 1, else as 0..255)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu()
        image = image.float().numpy() if image.dtype.is_floating_point else image.numpy()
        image = np.moveaxis(image, 0, -1)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8:
        scale = 255.0 if image.size and float(np.nanmax(image)) <= 1.0 else 1.0
        image = np.clip(np.rint(image.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], colour: tuple, dash: int = 5) -> None:
    x1, y1, x2, y2 = box
    for (sx, sy), (ex, ey) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(ex - sx), abs(ey - sy))
        steps = max(int(length // dash), 1)
        for k in range(0, steps, 2):
            t0, t1 = k / steps, min((k + 1) / steps, 1.0)
            draw.line([(sx + (ex - sx) * t0, sy + (ey - sy) * t0), (sx + (ex - sx) * t1, sy + (ey - sy) * t1)],
                      fill=colour, width=1)


def draw_sample(
    sample: Mapping[str, Any],
    category_names: Mapping[int, str] | None = None,
    *,
    width: int | None = None,
    title: str | None = None,
    dropped_boxes: Any = None,
    cut_box: Sequence[int] | None = None,
) -> Image.Image:
    """Render a mixed (or plain) sample.

    Args:
        sample: a sample dict; ``weights`` and ``source`` are used when present.
        category_names: ``{label: name}`` for the box captions (else the label number).
        width: scale the picture to this width (boxes and masks follow).
        title: a caption bar above the picture.
        dropped_boxes: ``(M, 4)`` input boxes of the dropped annotations, drawn dashed grey.
        cut_box: outline the CutMix region.
    """
    image = to_numpy_image(sample["image"])
    height0, width0 = image.shape[:2]
    scale = 1.0 if width is None else width / width0
    size = (max(round(width0 * scale), 1), max(round(height0 * scale), 1))
    boxes = _numpy(sample.get("boxes", np.zeros((0, 4)))).reshape(-1, 4).astype(np.float64) * scale
    n = len(boxes)
    labels = _numpy(sample.get("labels", np.zeros(n, np.int64)))
    source = _numpy(sample["source"]) if "source" in sample else np.zeros(n, np.int64)
    weights = _numpy(sample["weights"]) if "weights" in sample else None

    canvas = Image.fromarray(image).convert("RGB")
    if scale != 1.0:
        canvas = canvas.resize(size, Image.Resampling.BILINEAR)
    if sample.get("masks") is not None and n:
        masks = _numpy(sample["masks"]).astype(bool)
        tint = np.asarray(canvas, dtype=np.float32)
        for i in range(n):
            mask = Image.fromarray(masks[i].astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
            on = np.asarray(mask) > 0
            tint[on] = 0.6 * tint[on] + 0.4 * np.asarray(SOURCE_COLOURS[int(source[i]) % 2], np.float32)
        canvas = Image.fromarray(tint.astype(np.uint8))
    if sample.get("crowd_mask") is not None:
        crowd = Image.fromarray((_numpy(sample["crowd_mask"]) != 0).astype(np.uint8) * 255).resize(
            size, Image.Resampling.NEAREST)
        on = np.asarray(crowd) > 0
        tint = np.asarray(canvas, dtype=np.float32)
        tint[on] = 0.5 * tint[on] + 0.5 * np.asarray(CROWD_COLOUR, np.float32)
        canvas = Image.fromarray(tint.astype(np.uint8))

    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if cut_box is not None:
        x1, y1, x2, y2 = (v * scale for v in cut_box)
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=(255, 255, 255), width=1)
    if dropped_boxes is not None:
        for box in _numpy(dropped_boxes).reshape(-1, 4) * scale:
            _dashed_rectangle(draw, box, DROPPED_COLOUR)
    crowd_boxes = sample.get("crowd_boxes")
    for box in (np.zeros((0, 4)) if crowd_boxes is None else _numpy(crowd_boxes).reshape(-1, 4) * scale):
        _dashed_rectangle(draw, box, CROWD_COLOUR)
        draw.text((box[0] + 2, box[1] + 1), "crowd", fill=CROWD_COLOUR, font=font)
    for i in range(n):
        colour = SOURCE_COLOURS[int(source[i]) % 2]
        x1, y1, x2, y2 = boxes[i]
        draw.rectangle([x1, y1, max(x2 - 1, x1), max(y2 - 1, y1)], outline=colour, width=2)
        name = (category_names or {}).get(int(labels[i]), str(int(labels[i])))
        text = name if weights is None else f"{name} {float(weights[i]):.2g}"
        tx, ty = x1 + 1, max(y1 - 11, 0)
        left, top, right, bottom = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=colour)
        draw.text((tx, ty), text, fill=(0, 0, 0), font=font)

    if title:
        bar = Image.new("RGB", (canvas.width, 16), (24, 24, 24))
        ImageDraw.Draw(bar).text((4, 2), title, fill=(240, 240, 240), font=font)
        framed = Image.new("RGB", (canvas.width, canvas.height + bar.height))
        framed.paste(bar, (0, 0))
        framed.paste(canvas, (0, bar.height))
        canvas = framed
    return canvas


def make_grid(images: Sequence[Image.Image], cols: int = 4, *, pad: int = 4,
              background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Tile pictures row by row; cells take the largest width and height."""
    if not images:
        raise ValueError("images must hold at least one picture, got none")
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    cols = min(cols, len(images))
    rows = -(-len(images) // cols)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * cell_w + (cols + 1) * pad, rows * cell_h + (rows + 1) * pad), background)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        grid.paste(im, (pad + c * (cell_w + pad), pad + r * (cell_h + pad)))
    return grid


def dropped_input_boxes(
    a: Mapping[str, Any], b: Mapping[str, Any], out: Mapping[str, Any], *, partner: bool = True
) -> np.ndarray:
    """Input boxes of the annotations a mix dropped that are worth showing: every dropped box
    of ``a`` (objects that were covered) and the boxes of ``b`` that reached into the cut but
    fell under a threshold (``b``'s boxes that were simply not pasted are left out; all of them
    with ``partner=False``, for a mode that moved the partner's geometry)."""
    from detmix.functional import DropReason

    dropped = out["dropped"]
    boxes = [
        _numpy((a, b)[int(s)]["boxes"])[int(i)]
        for s, i, r in zip(_numpy(dropped["source"]), _numpy(dropped["index"]), _numpy(dropped["reason"]))
        if int(s) == 0 or (partner and int(r) != DropReason.INVISIBLE)
    ]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def preview_dataset(
    source: Sequence[Mapping[str, Any]],
    recipe: Any = "deit",
    *,
    num: int = 8,
    cols: int = 4,
    seed: int = 0,
    tile_width: int = 320,
    category_names: Mapping[int, str] | None = None,
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Mix ``num`` random pairs from ``source`` (a sequence of samples) and tile the results.

    Returns the grid and one record per tile (indices of the pair, the drawn parameters, how
    many boxes were kept and dropped), so a caller can log what the picture shows."""
    from detmix.align import align_pair
    from detmix.mix import RandomMix
    from detmix.modes import get_mode

    if len(source) < 2:
        raise ValueError(f"source must hold at least 2 samples to mix, got {len(source)}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    rng = np.random.default_rng(seed)
    mixer = RandomMix(recipe)
    tiles, records = [], []
    for _ in range(num):
        i, j = (int(v) for v in rng.choice(len(source), size=2, replace=False))
        a, b = source[i], source[j]
        out = mixer(a, b, rng)  # it aligns b as the mode needs (ResizeMix resizes it once, itself)
        params = out["params"]
        mode = get_mode(params.mode)
        # Dropped boxes are drawn where they were on the canvas; a resized partner's were elsewhere.
        a, b = align_pair(a, b, mixer.recipe.align)
        dropped = dropped_input_boxes(a, b, out, partner=not mode.resizes_partner)
        tiles.append(draw_sample(out, category_names, width=tile_width, title=mode.describe(params),
                                 dropped_boxes=dropped, cut_box=mode.outline(params)))
        records.append({"a": i, "b": j, "params": params.to_dict(), "kept": int(len(out["boxes"])),
                        "dropped": int(len(out["dropped"]["index"])),
                        "crowd": int(len(out["crowd_boxes"])) if "crowd_boxes" in out else 0})
    return make_grid(tiles, cols), records


def preview_grid(
    source: Any,
    recipe: Any = "deit",
    *,
    num: int = 8,
    cols: int = 4,
    seed: int = 0,
    tile_width: int = 320,
    bbox_format: str = "coco",
    category_names: Mapping[int, str] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Mix ``num`` random pairs of ``source`` through an Albumentations pipeline and tile them.

    The pipeline is ``HorizontalFlip -> from_recipe(recipe, p=1) -> Affine ->
    RandomBrightnessContrast`` in ``bbox_format``; each tile is drawn by
    :func:`detmix.preview.draw_sample` from the pipeline's output alone (boxes converted back from the
    format, captioned with class and ``mix_weights``). An extra label field ``origin`` (0 for the
    sample, 1 for its partner) rides through the pipeline and colours the boxes as in
    ``detmix preview``: orange for the sample, blue for the partner.

    Args:
        source: a map-style dataset of items :func:`detmix.datasets.to_albumentations_item` reads,
            e.g. :class:`detmix.coco.CocoDetectionSource`; at least 2 items.
        recipe: the recipe of the mix (name, path, dict or Recipe).
        num, cols, seed, tile_width: as in :func:`detmix.preview.preview_dataset`.
        bbox_format: the ``BboxParams`` format of the pipeline.
        category_names: ``{label: name}`` for the captions.

    Returns:
        ``(grid, records)``: the picture and one record per tile (``a``, ``b``: the pair's indices,
        ``params``: the drawn :class:`~detmix.sampling.MixParams` as a dict, ``kept``: output boxes).
    """
    import albumentations as A

    from detmix.albumentations import CROWD_KEY, WEIGHTS_KEY, from_recipe
    from detmix.datasets import from_bbox_format, to_albumentations_item

    if len(source) < 2:
        raise ValueError(f"source must hold at least 2 samples to mix, got {len(source)}")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be an int >= 1, got {num!r}")
    mix = from_recipe(recipe, p=1.0)
    transform = A.Compose(
        [A.HorizontalFlip(), mix, A.Affine(scale=(0.85, 1.15), translate_percent=(-0.05, 0.05), p=0.7),
         A.RandomBrightnessContrast(p=0.5)],
        bbox_params=A.BboxParams(format=bbox_format, label_fields=["labels", "origin"], min_visibility=0.1),
        additional_targets={CROWD_KEY: "mask"},
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    tiles, records = [], []
    for _ in range(num):
        i, j = (int(v) for v in rng.choice(len(source), size=2, replace=False))
        item, partner = (to_albumentations_item(source[k], bbox_format=bbox_format) for k in (i, j))
        item["origin"] = np.zeros(len(item["bboxes"]), np.int64)
        partner["origin"] = np.ones(len(partner["bboxes"]), np.int64)
        out = transform(**item, mix_metadata=[partner])
        params = mix.params["mix"]
        height, width = out["image"].shape[:2]
        drawn = {"image": out["image"], "boxes": from_bbox_format(out["bboxes"], bbox_format, height, width),
                 "labels": out["labels"], "weights": out[WEIGHTS_KEY], "source": out["origin"]}
        if "masks" in out:
            drawn["masks"] = out["masks"]
        title = f"{params['mode']}  lam={params['lam']:.2f}  ({len(out['bboxes'])} boxes)"
        tiles.append(draw_sample(drawn, category_names, width=tile_width, title=title))
        records.append({"a": i, "b": j, "params": params, "kept": len(out["bboxes"])})
    return make_grid(tiles, cols), records


def save(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
