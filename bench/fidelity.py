"""Annotation fidelity of detection mixing, with the truth computed from instance masks.

    .venv/bin/python bench/fidelity.py                          # coco-mini, 200 pairs, seed 0
    .venv/bin/python bench/fidelity.py --pairs 500 --seed 1 \\
        --coco /data/coco/annotations/instances_val2017.json /data/coco/val2017

On real photographs with instance masks it draws random pairs and random mixing parameters, mixes
each pair with every mixer, computes what is really visible after the mix from the masks, and
scores the boxes each mixer returns against it. Writes ``bench/results/fidelity.json`` and prints
a table per comparison. Peers that are not installed (``ultralytics``, ``albumentations``) are
reported as such and left out; run it from the benchmark environment (``make bench``) to get them.

Data
----
Every image of the COCO folders (default: both coco-mini splits) is letterboxed to ``--size``
(640) square: the longer side scaled to 640 (bilinear for the image, nearest for the masks), the
rest padded with grey 114 at the bottom and right, as YOLO's ``LetterBox`` does; every mixer gets
the same 640x640 pair, so aligning two sizes is not part of the comparison. Crowd regions are not
objects and are left out. Each instance's input box is the tight box of its letterboxed mask (COCO
convention, as pycocotools ``toBbox``: right/bottom edge one past the last pixel), so that the
annotations agree with the masks before mixing and every error after it is the mixer's.

The truth
---------
* CutMix with cut ``R`` (half-open ``[x1, x2) x [y1, y2)``): an object of ``a`` shows
  ``mask & ~R``, an object of ``b`` shows ``mask & R``. Its true box is the tight box of those
  pixels, its visible fraction their count over its mask's count.
* MixUp with ratio ``lam``: every pixel of both images is in the blend, so every object of both
  images is visible, whole: its true box is its input box, its visible fraction 1 and its true
  weight its image's share (``lam`` for ``a``'s objects, ``1 - lam`` for ``b``'s; an image whose
  share is 0 shows nothing). A MixUp mixer can therefore only err by leaving objects out or by
  moving boxes; the per-box weight is scored apart (``weight MAE``) where a mixer gives one.
* The region family (issue 14): Cutout shows ``mask & ~R`` for ``a``'s objects and no object of
  another image (the cut is erased); FMix and SaliencyMix are CutMix over their region (FMix's
  Fourier-noise map, SaliencyMix's cut); ResizeMix shows ``a``'s objects outside the paste box and
  every object of ``b`` whole, its mask resized into the box by nearest neighbour at pixel centres
  (as the letterbox resizes masks: :func:`nearest`), gone when the resize keeps none of its pixels.
* Mosaic: the truth is read from a coordinate map carried through the transform as its ``mask``
  (for every output pixel: which input image and which source pixel), so each object's visible
  pixels are known exactly wherever the tiles put them.

Visible, sliver, gone (the same for every mixer)
------------------------------------------------
An object is **visible** when at least ``--min-pixels`` (16, a 4x4 patch) of its pixels are in the
output; a **sliver** when 1 to 15 pixels are: too little to ask a detector for, so a sliver is
*don't care*: no box for it is not a miss and a box on it is not a phantom (as COCO's ignore
regions); **gone** with 0 pixels. The strict reading (every visible pixel counts, no sliver band)
is computed in the same run and published next to it (``min_pixels = 1``).

Scores
------
Boxes are matched to visible objects of the same class, one to one, greedily by IoU (highest
first) at IoU >= 0.5 (to within 1e-4: float32 box coordinates must not turn an IoU of exactly 1/2
into a miss), as COCO's evaluation matches detections; boxes left over are then matched to
slivers (ignored). **Missed**: a visible object without a matched box. **Phantom**: a box matched
to nothing (an object that is gone, a duplicate, or a box too far from the visible part of its
object: then the object is also missed). **IoU**: mean IoU of matched boxes to the true visible
boxes. **Weight MAE**: mean |weight - true weight| over matched boxes, where the true weight is
the visible fraction for CutMix and the image's share for MixUp.

Mixers and how they are driven
------------------------------
One draw per trial is shared by every mixer whose API takes parameters:
``lam ~ Beta(1, 1)`` and a cut of area ``(1 - lam) * H * W`` centred uniformly (timm's and
torchvision's CutMix, :func:`detmix.sampling.sample_cut_box`); MixUp ``lam ~ Beta(1.5, 1.5)``.

* classification CutMix: pixels as CutMix, ``a``'s boxes as they were, none of ``b``'s (what
  ``torchvision.transforms.v2.CutMix`` or timm's mixup give a detection pipeline: they mix the
  image and the class target, never the boxes).
* classification MixUp: pixels blended, ``a``'s boxes only, unweighted: a classification MixUp
  mixes ``b``'s class into a soft label, which has no box to give; the image whose annotation the
  dataset returned keeps its boxes.
* detmix boxes only: :func:`detmix.functional.cutmix` without masks (defaults: no visibility
  threshold, min_size 1), and with the thresholds of ``configs/recipes/cutmix.yaml``
  (min_visibility 0.25, min_size 2).
* detmix with masks: :func:`detmix.functional.cutmix` with the instance masks.
* detmix through Albumentations: ``BoxCutMix`` / ``BoxMixUp`` in an ``A.ReplayCompose`` with
  ``BboxParams(format="pascal_voc")``; the shared draw is written into the replay record and applied
  with ``ReplayCompose.replay`` (the adapter's documented replay path).
* detmix MixUp: :func:`detmix.functional.mixup`.
* Ultralytics ``MixUp`` / ``CutMix`` (``ultralytics.data.augment``), called as YOLO's training
  pipeline calls them: ``transform(labels)`` with ``labels = {"img", "instances": Instances(xyxy,
  pixels), "cls"}`` and a minimal dataset object whose ``get_image_and_label`` returns the partner.
  They draw from Python's ``random`` and numpy's global generator (seeded per trial). Their draws
  cannot be set, so they are scored on their own draws: ``MixUp`` draws ``r ~ Beta(32, 32)``, which
  changes no box of the truth; ``CutMix`` picks, among 3 random cuts, one that overlaps *no box of
  ``a``* (else it does nothing), and keeps the partner's boxes whose intersection with the cut holds
  at least 10% of their area (1% when the labels have segments), clipped to the cut. The cut it
  used is read back from the pixels: the same call, same seeds, on a black ``a`` and a white ``b``
  (its draws depend on the boxes and sizes only), and the real output is checked against that
  cut. classification CutMix and detmix are then scored on the *same* cuts, in their own table.
  Both label kinds are run: box labels (YOLO detection datasets) and segment labels (polygons from
  the mask contours, which lower the threshold to 1%).
* The region family, each mode in a table of its own, on its own draw: the mode's named recipe's
  sampler (``detmix.mix.draw_params`` with ``RandomMix(name)``'s recipe, from a generator of its own
  seeded ``[seed, 14]``, so the draws of the tables above do not move), shared by four mixers: the
  classification version (the same pixels, ``a``'s boxes as they were, none of ``b``'s: what
  timm's, torchvision's or mmpretrain's Cutout / ResizeMix / FMix / SaliencyMix give a detection
  pipeline), detmix boxes only (``F.cutout``, ``F.resizemix``, ``F.cutmix(region=...)``,
  ``F.cutmix(cut_box)``, defaults), detmix boxes only through ``detmix.apply_params`` with the
  recipe's thresholds, and detmix with masks. Every detmix output's pixels are checked against the
  region the truth assumes. SaliencyMix is run twice: ``centre: saliency`` (the recipe) and
  ``centre: object``.
* Albumentations ``Mosaic`` (2.0.8): four images (``a``, ``b`` and two more) on a 2x2 grid of
  640x640 cells, a 640x640 view (``fit_mode="cover"``: no rescaling at this size), ``BboxParams``
  defaults. It is comparable in what matters here: it cuts objects with rectangles and must say
  which are left and where, by the same box rule as a CutMix without masks (box clipped to the
  visible tile). It is not comparable in parameters (no cut, no lam; four images), and detmix has
  no Mosaic, so it has a table of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers, also when loaded by path
from _env import cpu_name, package_versions  # noqa: E402

os.environ.setdefault("YOLO_OFFLINE", "1")  # never let ultralytics reach the network
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # nor albumentations look for updates

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"
DEFAULT_OUT = REPO / "bench" / "results" / "fidelity.json"
LETTERBOX_FILL = 114
MIN_IOU = 0.5
#: IoU is compared with MIN_IOU - IOU_TOLERANCE: whole-pixel boxes often have an IoU of exactly 1/2, which
#: the float32 coordinates of some pipelines (Albumentations normalises boxes in float32) put a hair below.
IOU_TOLERANCE = 1e-4
#: The thresholds of visibility scored in every run: the default, then the strict reading.
STRICT = 1

# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def letterbox(image: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(size, size, 3)`` image and ``(N, size, size)`` uint8 masks: the longer side scaled to
    ``size`` (bilinear / nearest at pixel centres), padded bottom-right with grey 114."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    out = np.full((size, size, 3), LETTERBOX_FILL, np.uint8)
    out[:new_h, :new_w] = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    resized = np.zeros((len(masks), size, size), np.uint8)
    if len(masks):
        resized[:, :new_h, :new_w] = nearest(masks, new_h, new_w)
    return out, resized


def nearest(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(N, h, w)`` masks resized to ``(N, height, width)`` by nearest neighbour at pixel centres:
    output pixel ``(i, j)`` reads input pixel ``(floor((i + 0.5) h / height), floor((j + 0.5) w /
    width))``."""
    src_h, src_w = masks.shape[-2:]
    rows = np.minimum(((np.arange(height) + 0.5) * (src_h / height)).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * (src_w / width)).astype(np.int64), src_w - 1)
    return masks[:, rows][:, :, cols]


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """``(N, 4)`` float64 tight xyxy boxes of ``(N, H, W)`` masks, COCO convention (right and
    bottom one past the last pixel); ``(0, 0, 0, 0)`` for an empty mask. Written here apart from
    detmix's own kernel, which is among the things being scored."""
    n = len(masks)
    boxes = np.zeros((n, 4), np.float64)
    if n == 0:
        return boxes
    on = masks.astype(bool, copy=False)
    rows, cols = on.any(axis=2), on.any(axis=1)
    for k in range(n):
        ys, xs = np.flatnonzero(rows[k]), np.flatnonzero(cols[k])
        if len(ys):
            boxes[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def pixel_counts(masks: np.ndarray) -> np.ndarray:
    """Foreground pixels of each of ``(N, H, W)`` masks."""
    return np.count_nonzero(masks, axis=(1, 2)).astype(np.int64).reshape(len(masks))


class Photographs:
    """Letterboxed samples of one or more COCO folders: ``image``, ``boxes`` (tight boxes of the
    masks), ``labels`` (category ids), ``masks``. Decoding is cached for ``cache`` images."""

    def __init__(self, folders: Sequence[tuple[Path, Path]], size: int, cache: int = 48) -> None:
        from detmix.coco import CocoDetectionSource

        self.size = size
        self.sources = [CocoDetectionSource(ann, images, masks=True) for ann, images in folders]
        self.index = [(s, i) for s, source in enumerate(self.sources) for i in range(len(source))]
        self._load = lru_cache(maxsize=cache)(self._letterboxed)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self._load(k)

    def _letterboxed(self, k: int) -> dict[str, Any]:
        s, i = self.index[k]
        raw = self.sources[s][i]
        image, masks = letterbox(raw["image"], raw["masks"], self.size)
        keep = pixel_counts(masks) > 0
        masks = np.ascontiguousarray(masks[keep])
        sample = {"image": image, "boxes": tight_boxes(masks), "labels": raw["labels"][keep].astype(np.int64),
                  "masks": masks, "pixels": pixel_counts(masks), "image_id": raw["image_id"]}
        for value in sample.values():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False  # shared through the cache: no mixer may change it
        return sample


def boxes_only(sample: dict[str, Any]) -> dict[str, Any]:
    return {"image": sample["image"], "boxes": sample["boxes"], "labels": sample["labels"]}


def with_masks(sample: dict[str, Any]) -> dict[str, Any]:
    return {**boxes_only(sample), "masks": sample["masks"]}


# --------------------------------------------------------------------------------------------
# The truth and the scores
# --------------------------------------------------------------------------------------------


@dataclass
class Truth:
    """What is visible after a mix: one row per input object of every image."""

    boxes: np.ndarray  # (M, 4) tight boxes of the visible pixels
    labels: np.ndarray  # (M,)
    pixels: np.ndarray  # (M,) visible pixels
    fraction: np.ndarray  # (M,) visible pixels / the object's pixels
    weight: np.ndarray  # (M,) the weight a perfect mixer would give

    def status(self, min_pixels: int) -> np.ndarray:
        """Per object: 2 visible, 1 sliver (don't care), 0 gone."""
        return np.where(self.pixels >= min_pixels, 2, np.where(self.pixels > 0, 1, 0))


def _concat_truth(parts: Sequence[Truth]) -> Truth:
    return Truth(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("boxes", "labels", "pixels",
                                                                             "fraction", "weight")))


def region(cut: Sequence[int], height: int, width: int) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in cut)
    r = np.zeros((height, width), bool)
    r[y1:y2, x1:x2] = True
    return r


def visible_truth(visible: np.ndarray, labels: np.ndarray, pixels_before: np.ndarray) -> Truth:
    """Truth of objects whose visible pixels are ``visible`` (N, H, W)."""
    pixels = pixel_counts(visible)
    fraction = np.where(pixels_before > 0, pixels / np.maximum(pixels_before, 1), 0.0)
    return Truth(tight_boxes(visible), np.asarray(labels, np.int64), pixels, fraction, fraction.copy())


def region_truth(a: dict[str, Any], b: dict[str, Any] | None, inside: np.ndarray) -> Truth:
    """The truth of a paste of ``b`` into ``a`` where the ``(H, W)`` bool map ``inside`` is True:
    ``a``'s objects show ``mask & ~inside``, ``b``'s ``mask & inside``. ``b`` None: nothing of
    another image shows there (Cutout), only ``a``'s objects are in the truth."""
    parts = []
    for sample, keep in ((a, ~inside), (b, inside)):
        if sample is None:
            continue
        masks = sample["masks"].astype(bool)
        parts.append(visible_truth(masks & keep[None], sample["labels"], pixel_counts(masks)))
    return _concat_truth(parts)


def cutmix_truth(a: dict[str, Any], b: dict[str, Any], cut: Sequence[int]) -> Truth:
    """The truth of a CutMix of ``b`` into ``a`` with cut ``(x1, y1, x2, y2)`` (half-open)."""
    height, width = a["image"].shape[:2]
    return region_truth(a, b, region(cut, height, width))


def resizemix_truth(a: dict[str, Any], b: dict[str, Any], paste_box: Sequence[int]) -> Truth:
    """The truth of a ResizeMix: all of ``b`` resized into ``paste_box`` (half-open, whole pixels)
    and pasted onto ``a``. ``a``'s objects show ``mask & ~paste_box``; each object of ``b`` shows
    its mask resized to the box by nearest neighbour at pixel centres (:func:`nearest`, as the
    letterbox resizes masks), all of it: visible fraction 1, or gone when the resize leaves none of
    its pixels."""
    height, width = a["image"].shape[:2]
    x1, y1, x2, y2 = (int(v) for v in paste_box)
    inside = region(paste_box, height, width)
    masks_a = a["masks"].astype(bool)
    masks_b = b["masks"].astype(bool)
    placed = np.zeros((len(masks_b), height, width), bool)
    if len(masks_b):
        placed[:, y1:y2, x1:x2] = nearest(masks_b, y2 - y1, x2 - x1)
    return _concat_truth([visible_truth(masks_a & ~inside[None], a["labels"], pixel_counts(masks_a)),
                          visible_truth(placed, b["labels"], pixel_counts(placed))])


def mixup_truth(a: dict[str, Any], b: dict[str, Any], lam: float) -> Truth:
    """The truth of a MixUp ``lam * a + (1 - lam) * b``: every object whole, weighted by its
    image's share; the objects of an image whose share is 0 are gone."""
    parts = []
    for sample, share in ((a, lam), (b, 1.0 - lam)):
        masks = sample["masks"].astype(bool)
        pixels = pixel_counts(masks) if share > 0 else np.zeros(len(masks), np.int64)
        boxes = tight_boxes(masks)
        n = len(masks)
        parts.append(Truth(boxes, np.asarray(sample["labels"], np.int64), pixels,
                           np.full(n, 1.0 if share > 0 else 0.0), np.full(n, float(share))))
    return _concat_truth(parts)


def iou_matrix(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """IoU of every box of ``p`` (P, 4) with every box of ``t`` (T, 4), xyxy."""
    p = np.asarray(p, np.float64).reshape(-1, 4)
    t = np.asarray(t, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(p[:, None, 2], t[None, :, 2]) - np.maximum(p[:, None, 0], t[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(p[:, None, 3], t[None, :, 3]) - np.maximum(p[:, None, 1], t[None, :, 1]), 0, None)
    inter = iw * ih
    area_p = np.clip(p[:, 2] - p[:, 0], 0, None) * np.clip(p[:, 3] - p[:, 1], 0, None)
    area_t = np.clip(t[:, 2] - t[:, 0], 0, None) * np.clip(t[:, 3] - t[:, 1], 0, None)
    union = area_p[:, None] + area_t[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _greedy(iou: np.ndarray, rows: np.ndarray, cols: np.ndarray, one_to_one_cols: bool) -> list[tuple[int, int]]:
    """Greedy matching of the allowed (row, col) pairs with IoU >= 0.5, highest first."""
    pairs: list[tuple[int, int]] = []
    if not len(rows) or not len(cols):
        return pairs
    sub = iou[np.ix_(rows, cols)]
    order = np.argsort(-sub, axis=None, kind="stable")
    used_r, used_c = set(), set()
    for flat in order:
        r, c = divmod(int(flat), sub.shape[1])
        if sub[r, c] < MIN_IOU - IOU_TOLERANCE:
            break
        if r in used_r or (one_to_one_cols and c in used_c):
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((int(rows[r]), int(cols[c])))
    return pairs


@dataclass
class Match:
    matched: list[tuple[int, int, float]]  # (box, object, IoU)
    missed: list[int]  # visible objects without a box
    phantom: list[int]  # boxes matched to nothing
    ignored: list[int]  # boxes on slivers


def match(boxes: np.ndarray, labels: np.ndarray, truth: Truth, min_pixels: int) -> Match:
    """Match output boxes to the truth (see the module docstring): same class, IoU >= 0.5, one to
    one, greedily by IoU; leftover boxes on slivers are ignored."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    status = truth.status(min_pixels)
    iou = iou_matrix(boxes, truth.boxes)
    same = labels[:, None] == truth.labels[None, :]
    iou = np.where(same, iou, 0.0)
    visible = np.flatnonzero(status == 2)
    pairs = _greedy(iou, np.arange(len(boxes)), visible, one_to_one_cols=True)
    used = {p for p, _ in pairs}
    left = np.array([k for k in range(len(boxes)) if k not in used], np.int64)
    slivers = np.flatnonzero(status == 1)
    ignored = [p for p, _ in _greedy(iou, left, slivers, one_to_one_cols=False)]
    matched_objects = {t for _, t in pairs}
    return Match(
        matched=[(p, t, float(iou[p, t])) for p, t in pairs],
        missed=[int(t) for t in visible if t not in matched_objects],
        phantom=[int(k) for k in left if k not in set(ignored)],
        ignored=ignored,
    )


@dataclass
class Tally:
    """The scores of one mixer in one comparison, at one visibility threshold."""

    trials: int = 0
    perfect: int = 0
    visible: int = 0
    boxes: int = 0
    missed: int = 0
    phantom: int = 0
    ignored: int = 0
    ious: list[float] = field(default_factory=list)
    weight_errors: list[float] = field(default_factory=list)

    def add(self, result: Match, n_boxes: int, n_visible: int, weights: np.ndarray | None, truth: Truth) -> None:
        self.trials += 1
        self.perfect += int(not result.missed and not result.phantom)
        self.visible += n_visible
        self.boxes += n_boxes
        self.missed += len(result.missed)
        self.phantom += len(result.phantom)
        self.ignored += len(result.ignored)
        self.ious += [iou for _, _, iou in result.matched]
        if weights is not None:
            self.weight_errors += [abs(float(weights[p]) - float(truth.weight[t])) for p, t, _ in result.matched]

    def summary(self) -> dict[str, Any]:
        ious = np.asarray(self.ious)
        return {
            "trials": self.trials,
            "perfect_trials": self.perfect,
            "visible_objects": self.visible,
            "boxes": self.boxes,
            "missed": self.missed,
            "missed_pct": 100.0 * self.missed / self.visible if self.visible else 0.0,
            "phantom": self.phantom,
            "phantom_pct": 100.0 * self.phantom / self.boxes if self.boxes else 0.0,
            "boxes_on_slivers": self.ignored,
            "matched": len(ious),
            "mean_iou": float(ious.mean()) if len(ious) else None,
            "min_iou": float(ious.min()) if len(ious) else None,
            "iou_ge_0.99_pct": 100.0 * float((ious >= 0.99).mean()) if len(ious) else None,
            "weight_mae": float(np.mean(self.weight_errors)) if self.weight_errors else None,
        }


# --------------------------------------------------------------------------------------------
# Mixers
# --------------------------------------------------------------------------------------------


@dataclass
class Output:
    """What a mixer returned: boxes (xyxy pixels), labels, weights (None when it gives none) and,
    for a mixer that drew its own parameters, what it drew."""

    boxes: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None = None
    drawn: dict[str, Any] | None = None
    image: np.ndarray | None = None


def classification_cutmix(a: dict, b: dict, cut: Sequence[int]) -> Output:
    return Output(np.asarray(a["boxes"], np.float64), a["labels"])


def classification_mixup(a: dict, b: dict, lam: float) -> Output:
    return Output(np.asarray(a["boxes"], np.float64), a["labels"])


def _detmix_output(out: dict[str, Any]) -> Output:
    return Output(np.asarray(out["boxes"], np.float64), out["labels"], np.asarray(out["weights"], np.float64))


def detmix_cutmix_boxes(a: dict, b: dict, cut: Sequence[int]) -> Output:
    from detmix import functional as F

    return _detmix_output(F.cutmix(boxes_only(a), boxes_only(b), tuple(cut)))


def detmix_cutmix_boxes_recipe(a: dict, b: dict, cut: Sequence[int]) -> Output:
    from detmix import functional as F
    from detmix.recipes import load_recipe

    cfg = load_recipe("cutmix").cutmix
    return _detmix_output(F.cutmix(boxes_only(a), boxes_only(b), tuple(cut), min_visibility=cfg.min_visibility,
                                   min_area=cfg.min_area, min_size=cfg.min_size, weight=cfg.weight))


def detmix_cutmix_masks(a: dict, b: dict, cut: Sequence[int]) -> Output:
    from detmix import functional as F

    return _detmix_output(F.cutmix(with_masks(a), with_masks(b), tuple(cut)))


def detmix_mixup(a: dict, b: dict, lam: float) -> Output:
    from detmix import functional as F

    return _detmix_output(F.mixup(boxes_only(a), boxes_only(b), float(lam)))


# -- the region family (issue 14): Cutout, ResizeMix, FMix, SaliencyMix ------------------------

#: The modes of the region family, scored each against its classification version.
FAMILY = ("cutout", "resizemix", "fmix", "saliencymix")
#: How each is called in the tables.
FAMILY_TITLES = {"cutout": "Cutout", "resizemix": "ResizeMix", "fmix": "FMix", "saliencymix": "SaliencyMix"}


@dataclass
class FamilyDraw:
    """One draw of a region mode, shared by every mixer of its table: the parameters (drawn by
    the mode's own sampler from its named recipe), and where the output shows something other than
    ``a`` (``inside``: the cut, the paste box or the FMix region)."""

    name: str
    params: Any  # detmix.MixParams
    inside: np.ndarray  # (H, W) bool

    @property
    def cut(self) -> tuple[int, int, int, int]:
        box = self.params["paste_box"] if self.name == "resizemix" else self.params.cut_box
        return tuple(int(v) for v in box)


def draw_family(rng: np.random.Generator, name: str, recipe: Any, a: dict, b: dict) -> FamilyDraw:
    """Draw the parameters of mode ``name`` for the pair as ``detmix.RandomMix(name)`` does
    (``detmix.mix.draw_params``; the recipe's ``prob`` is 1: always that mode), and the region they put
    ``b`` (or the fill) in."""
    from detmix.mix import draw_params
    from detmix.modes.fmix import fmix_region

    height, width = a["image"].shape[:2]
    params = draw_params(rng, recipe, boxes_only(a), boxes_only(b))
    if params.mode != name:
        raise RuntimeError(f"recipe {recipe.name!r} drew mode {params.mode!r}, not {name!r}")
    if name == "fmix":
        inside = fmix_region(params["seed"], params["decay"], params.lam, height, width)
    else:
        inside = region(params["paste_box"] if name == "resizemix" else params.cut_box, height, width)
    return FamilyDraw(name, params, inside)


def family_truth(a: dict, b: dict, draw: FamilyDraw) -> Truth:
    """The truth of a draw: Cutout shows ``a`` outside the cut and nothing inside; ResizeMix all
    of ``b`` scaled into the paste box (:func:`resizemix_truth`); FMix and SaliencyMix are a paste of
    ``b`` over their region (:func:`region_truth`)."""
    if draw.name == "cutout":
        return region_truth(a, None, draw.inside)
    if draw.name == "resizemix":
        return resizemix_truth(a, b, draw.cut)
    return region_truth(a, b, draw.inside)


def classification_family(a: dict, b: dict, draw: FamilyDraw) -> Output:
    """The classification version of every region mode (timm's / torchvision's / mmpretrain's
    Cutout, ResizeMix, FMix, SaliencyMix): the pixels are mixed, the annotation of the image the
    dataset returned is left as it was: ``a``'s boxes, none of ``b``'s."""
    return Output(np.asarray(a["boxes"], np.float64), a["labels"])


def _check_family_pixels(image: np.ndarray, a: dict, b: dict, draw: FamilyDraw, fill: float = 0) -> None:
    """The output's pixels must be where the truth says: ``a`` outside the region; inside, the
    fill (Cutout) or ``b`` (FMix, SaliencyMix); ResizeMix's inside is ``b`` resized, not checked."""
    outside = ~draw.inside
    if not np.array_equal(image[outside], a["image"][outside]):
        raise RuntimeError(f"detmix {draw.name} changed pixels of a outside its region")
    if draw.name == "cutout":
        ok = bool((image[draw.inside] == fill).all())
    elif draw.name == "resizemix":
        ok = True
    else:
        ok = np.array_equal(image[draw.inside], b["image"][draw.inside])
    if not ok:
        raise RuntimeError(f"detmix {draw.name} put other pixels in its region than the truth assumes")


def detmix_family(a: dict, b: dict, draw: FamilyDraw, masks: bool) -> Output:
    """The mode's kernel from :mod:`detmix.functional` with its defaults (no visibility threshold,
    min_size 1): ``F.cutout(a, cut_box)``, ``F.resizemix(a, b, paste_box)``, ``F.cutmix(a, b,
    region=...)`` over FMix's region, ``F.cutmix(a, b, cut_box)`` over SaliencyMix's cut."""
    from detmix import functional as F

    pick = with_masks if masks else boxes_only
    sa, sb = pick(a), pick(b)
    if draw.name == "cutout":
        out = F.cutout(sa, draw.cut)
    elif draw.name == "resizemix":
        out = F.resizemix(sa, sb, draw.cut)
    elif draw.name == "fmix":
        out = F.cutmix(sa, sb, region=draw.inside)
    else:
        out = F.cutmix(sa, sb, draw.cut)
    _check_family_pixels(out["image"], a, b, draw)
    return _detmix_output(out)


def detmix_family_recipe(a: dict, b: dict, draw: FamilyDraw, recipe: Any) -> Output:
    """The draw applied by ``detmix.apply_params`` with the mode's named recipe (its thresholds:
    min_visibility 0.25, min_size 2), boxes only: the path of ``RandomMix(name)``."""
    from detmix import apply_params

    out = apply_params(boxes_only(a), boxes_only(b), draw.params, recipe)
    section = recipe.section(draw.name)
    _check_family_pixels(out["image"], a, b, draw, getattr(section, "fill", 0))
    return _detmix_output(out)


class AlbumentationsReplay:
    """A detmix Albumentations transform in an ``A.ReplayCompose``; the shared draw is written into
    the replay record and applied by ``ReplayCompose.replay``."""

    def __init__(self, kind: str, masks: bool) -> None:
        import albumentations as A

        from detmix.albumentations import BoxCutMix, BoxMixUp

        self.A = A
        self.masks = masks
        self.kind = kind
        transform = BoxCutMix(p=1.0) if kind == "cutmix" else BoxMixUp(p=1.0)
        self.compose = A.ReplayCompose([transform], bbox_params=A.BboxParams(format="pascal_voc",
                                                                            label_fields=["labels"]))

    def _item(self, sample: dict) -> dict[str, Any]:
        item = {"image": sample["image"], "bboxes": sample["boxes"], "labels": sample["labels"]}
        if self.masks:
            item["masks"] = sample["masks"]
        return item

    def __call__(self, a: dict, b: dict, param: Any) -> Output:
        from detmix.sampling import MixParams

        height, width = a["image"].shape[:2]
        if self.kind == "cutmix":
            cut = tuple(int(v) for v in param)
            lam = 1.0 - (cut[2] - cut[0]) * (cut[3] - cut[1]) / (height * width)
            mix = MixParams("cutmix", lam, cut, (height, width))
        else:
            mix = MixParams("mixup", float(param), None, (height, width))
        data = {**self._item(a), "mix_metadata": [self._item(b)]}
        record = self.compose(**data)["replay"]
        record["transforms"][0]["params"]["mix"] = mix.to_dict()
        out = self.A.ReplayCompose.replay(record, **data)
        return Output(np.asarray(out["bboxes"], np.float64).reshape(-1, 4), np.asarray(out["labels"]),
                      np.asarray(out["mix_weights"], np.float64))


class _Partner:
    """The smallest dataset an Ultralytics mix transform accepts: one item, the partner."""

    def __init__(self, make: Callable[[], dict[str, Any]]) -> None:
        self.make = make

    def __len__(self) -> int:
        return 1

    def get_image_and_label(self, index: int) -> dict[str, Any]:
        return self.make()


def _contour_segments(masks: np.ndarray, points: int = 1000) -> np.ndarray:
    """One polygon per mask (its largest outer contour) resampled to ``points`` points, as
    Ultralytics' datasets resample segment labels."""
    import cv2
    from ultralytics.utils.ops import resample_segments

    segments = []
    for mask in masks:
        contours, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        biggest = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float32)
        segments.append(biggest)
    if not segments:
        return np.zeros((0, points, 2), np.float32)
    return np.stack(resample_segments(segments, n=points), axis=0).astype(np.float32)


class Ultralytics:
    """Ultralytics' ``MixUp`` / ``CutMix`` driven as YOLO's training pipeline drives them."""

    def __init__(self, kind: str, segments: bool = False) -> None:
        from ultralytics.data.augment import CutMix, MixUp
        from ultralytics.utils.instance import Instances

        self.kind, self.segments = kind, segments
        self.Instances = Instances
        self.cls = CutMix if kind == "cutmix" else MixUp
        self._segments_cache: dict[int, np.ndarray] = {}

    def _labels(self, sample: dict, image: np.ndarray) -> dict[str, Any]:
        segments = None
        if self.segments:
            key = int(sample["image_id"])
            if key not in self._segments_cache:
                self._segments_cache[key] = _contour_segments(sample["masks"])
            segments = self._segments_cache[key].copy()
        instances = self.Instances(np.array(sample["boxes"], np.float32).reshape(-1, 4), segments=segments,
                                   bbox_format="xyxy", normalized=False)
        return {"img": image, "instances": instances,
                "cls": np.asarray(sample["labels"], np.float32).reshape(-1, 1)}

    def _call(self, a: dict, b: dict, image_a: np.ndarray, image_b: np.ndarray, seed: int) -> dict[str, Any]:
        transform = self.cls(_Partner(lambda: self._labels(b, image_b.copy())), p=1.0)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return transform(self._labels(a, image_a.copy()))

    def __call__(self, a: dict, b: dict, seed: int) -> Output:
        out = self._call(a, b, a["image"], b["image"], seed)
        boxes = np.asarray(out["instances"].bboxes, np.float64).reshape(-1, 4)
        labels = np.asarray(out["cls"]).reshape(-1).astype(np.int64)
        drawn: dict[str, Any]
        if self.kind == "cutmix":
            probe = self._call(a, b, np.zeros_like(a["image"]), np.full_like(b["image"], 255), seed)["img"]
            ys, xs = np.nonzero(probe[..., 0])
            cut = None if not len(xs) else (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            if cut is not None:  # the white pixels must be exactly that rectangle
                if not (probe[..., 0] > 0).sum() == (cut[2] - cut[0]) * (cut[3] - cut[1]):
                    raise RuntimeError("Ultralytics CutMix pasted something other than one rectangle")
                from detmix.functional import cutmix_image

                expected = cutmix_image(a["image"], b["image"], cut, "HWC")
            else:
                expected = a["image"]
            if not np.array_equal(out["img"], expected):
                raise RuntimeError("Ultralytics CutMix output does not match the cut read back from the probe")
            drawn = {"cut": cut}
        else:
            fa, fb = a["image"].astype(np.float64), b["image"].astype(np.float64)
            diff = fa - fb
            denom = float((diff * diff).sum())
            r = float(((out["img"].astype(np.float64) + 0.5 - fb) * diff).sum() / denom) if denom else 0.5
            drawn = {"r": r}
        return Output(boxes, labels, None, drawn)


class AlbumentationsMosaic:
    """Albumentations' ``Mosaic`` of four 640x640 images; the truth comes from a coordinate map
    carried as its ``mask``."""

    def __init__(self, size: int, seed: int) -> None:
        import albumentations as A

        self.size = size
        self.compose = A.Compose(
            [A.Mosaic(grid_yx=(2, 2), target_size=(size, size), cell_shape=(size, size), fit_mode="cover", p=1.0)],
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]),
            seed=seed,
        )
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        self._yy, self._xx = yy, xx

    def _coordinates(self, k: int) -> np.ndarray:
        return np.stack([np.full_like(self._yy, k + 1), self._yy, self._xx], axis=-1)

    def __call__(self, samples: Sequence[dict]) -> tuple[Output, Truth]:
        items = [{"image": s["image"], "bboxes": s["boxes"], "labels": s["labels"], "mask": self._coordinates(k)}
                 for k, s in enumerate(samples)]
        out = self.compose(**items[0], mosaic_metadata=items[1:])
        where = out["mask"]
        source = np.rint(where[..., 0]).astype(np.int64) - 1
        parts = []
        for k, sample in enumerate(samples):
            sel = source == k
            ys = np.rint(where[..., 1][sel]).astype(np.int64)
            xs = np.rint(where[..., 2][sel]).astype(np.int64)
            if not np.array_equal(out["image"][sel], sample["image"][ys, xs]):  # the map must tell the truth
                raise RuntimeError("Albumentations Mosaic moved pixels other than its coordinate map says")
            masks = sample["masks"].astype(bool)
            visible = np.zeros((len(masks), self.size, self.size), bool)
            if sel.any() and len(masks):
                visible[:, sel] = masks[:, ys, xs]
            parts.append(visible_truth(visible, sample["labels"], pixel_counts(masks)))
        truth = _concat_truth(parts)
        output = Output(np.asarray(out["bboxes"], np.float64).reshape(-1, 4),
                        np.rint(np.asarray(out["labels"], np.float64)).astype(np.int64))
        return output, truth


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    mixer: str
    how: str
    tallies: dict[int, Tally]


class Comparison:
    """One table: mixers scored on the same draws."""

    def __init__(self, key: str, title: str, note: str, thresholds: Sequence[int]) -> None:
        self.key, self.title, self.note = key, title, note
        self.thresholds = tuple(thresholds)
        self.rows: dict[str, Row] = {}
        self.extra: dict[str, Any] = {}

    def row(self, mixer: str, how: str) -> Row:
        if mixer not in self.rows:
            self.rows[mixer] = Row(mixer, how, {t: Tally() for t in self.thresholds})
        return self.rows[mixer]

    def score(self, mixer: str, how: str, output: Output, truth: Truth) -> None:
        row = self.row(mixer, how)
        for t in self.thresholds:
            result = match(output.boxes, output.labels, truth, t)
            row.tallies[t].add(result, len(output.boxes), int((truth.status(t) == 2).sum()), output.weights, truth)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "note": self.note,
            **self.extra,
            "rows": [
                {"mixer": r.mixer, "how": r.how,
                 "by_min_pixels": {str(t): tally.summary() for t, tally in r.tallies.items()}}
                for r in self.rows.values()
            ],
        }


def _available(module: str) -> str | None:
    """None when ``module`` imports, else why not."""
    try:
        __import__(module)
    except Exception as error:  # noqa: BLE001 - any failure to import means: not available here
        return f"{type(error).__name__}: {error}"
    return None


def _versions() -> dict[str, Any]:
    return package_versions(("detmix", "numpy", "albumentations", "ultralytics", "opencv-python-headless",
                             "opencv-python", "pycocotools", "torch"))


def machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "system": f"{platform.system()} {platform.release()}"}


def run(folders: Sequence[tuple[Path, Path]], pairs: int, seed: int, size: int = 640, min_pixels: int = 16,
        progress: bool = True) -> dict[str, Any]:
    """Score every available mixer on ``pairs`` random pairs; returns the JSON document."""
    from detmix.recipes import load_recipe
    from detmix.sampling import sample_cut_box, sample_lam

    started = time.perf_counter()
    photos = Photographs(folders, size)
    if len(photos) < 4:
        raise ValueError(f"the COCO folders must hold at least 4 images, got {len(photos)}")
    thresholds = sorted({int(min_pixels), STRICT}, reverse=True)
    missing = {"albumentations": _available("albumentations"), "ultralytics": _available("ultralytics")}
    have_alb = missing["albumentations"] is None and _available("detmix.albumentations") is None
    have_ul = missing["ultralytics"] is None

    shared_cut = Comparison(
        "cutmix", "CutMix, shared cut",
        "lam ~ Beta(1, 1), cut centred uniformly (timm / torchvision); every mixer gets the same cut", thresholds)
    shared_mixup = Comparison(
        "mixup", "MixUp, shared lam",
        "lam ~ Beta(1.5, 1.5) for the mixers that take it; Ultralytics MixUp draws its own r ~ Beta(32, 32), "
        "which changes no box of the truth", thresholds)
    ul_cuts = {
        False: Comparison("ultralytics-cutmix-boxes", "CutMix on Ultralytics' cuts (box labels)",
                          "the cut Ultralytics CutMix chose (read back from the pixels), trials where it mixed; "
                          "the other mixers get the same cut", thresholds),
        True: Comparison("ultralytics-cutmix-segments", "CutMix on Ultralytics' cuts (segment labels)",
                         "as above, with segment labels (polygons of the mask contours): Ultralytics keeps the "
                         "partner's boxes with >= 1% of their area in the cut instead of 10%", thresholds),
    }
    mosaic = Comparison("mosaic", "Albumentations Mosaic (own draws)",
                        "4 images on a 2x2 grid of 640x640 cells, a 640x640 view; truth from a coordinate map",
                        thresholds)
    family_recipes = {name: load_recipe(name) for name in FAMILY}
    object_centred = family_recipes["saliencymix"].model_dump(exclude_none=True)
    object_centred["saliencymix"]["centre"] = "object"
    family_recipes["saliencymix-object"] = load_recipe({**object_centred, "name": "saliencymix-object"})
    family = {key: Comparison(key, title, note, thresholds) for key, title, note in (
        ("cutout", "Cutout, shared cut",
         ("the cutout recipe's draw: lam ~ Beta(1, 1) clipped to [0.75, 0.95], a box of area (1 - lam) HW centred "
          "uniformly, erased to 0; nothing pasted, so only a's objects are in the truth")),
        ("resizemix", "ResizeMix, shared paste box",
         ("the resizemix recipe's draw: sides tau ~ U(0.1, 0.8) of the canvas's, the box placed uniformly; all of b "
          "resized into it (truth: b's masks resized by nearest neighbour at pixel centres)")),
        ("fmix", "FMix, shared region",
         ("the fmix recipe's draw: lam ~ Beta(1, 1), a low-frequency Fourier-noise region (decay 3) covering 1 - lam "
          "of the canvas (detmix.modes.fmix.fmix_region)")),
        ("saliencymix", "SaliencyMix, shared cut",
         ("the saliencymix recipe's draw: lam ~ Beta(1, 1), the cut centred on b's most salient point (spectral "
          "residual)")),
        ("saliencymix-object", "SaliencyMix (centre: object), shared cut",
         ("as above with centre: object, the cut centred on one of b's objects drawn uniformly (detmix's "
          "detection-aware option)")),
    )}
    for comparison in family.values():
        comparison.extra["issue"] = 14
    comparisons = [shared_cut, shared_mixup, ul_cuts[False], ul_cuts[True], mosaic, *family.values()]

    adapters = {}
    if have_alb:
        adapters = {("cutmix", True): AlbumentationsReplay("cutmix", True),
                    ("cutmix", False): AlbumentationsReplay("cutmix", False),
                    ("mixup", False): AlbumentationsReplay("mixup", False)}
        mosaic_transform = AlbumentationsMosaic(size, seed)
    peers = {}
    if have_ul:
        peers = {"mixup": Ultralytics("mixup"), "cutmix-boxes": Ultralytics("cutmix", segments=False),
                 "cutmix-segments": Ultralytics("cutmix", segments=True)}
    ul_stats = {False: {"mixed": 0, "skipped": 0, "cut_area_pct": []},
                True: {"mixed": 0, "skipped": 0, "cut_area_pct": []}}
    ul_r: list[float] = []

    rng = np.random.default_rng(seed)
    # The region family draws from a generator of its own, so that the draws of the tables above
    # stay those of earlier runs with the same seed.
    family_rng = np.random.default_rng([seed, 14])
    for trial in range(pairs):
        picks = [int(k) for k in rng.choice(len(photos), size=4, replace=False)]
        a, b = photos[picks[0]], photos[picks[1]]
        height, width = a["image"].shape[:2]
        cut, _ = sample_cut_box(rng, sample_lam(rng, 1.0), height, width)
        lam = sample_lam(rng, 1.5)
        peer_seed = int(rng.integers(2**31))

        # -- CutMix on the shared cut
        truth = cutmix_truth(a, b, cut)
        shared_cut.score("classification CutMix (a's boxes as they were)", "pixels as CutMix; a's boxes unchanged",
                         classification_cutmix(a, b, cut), truth)
        shared_cut.score("detmix boxes only", "detmix.functional.cutmix, no masks, defaults",
                         detmix_cutmix_boxes(a, b, cut), truth)
        shared_cut.score("detmix boxes only, cutmix recipe", "min_visibility 0.25, min_size 2 (configs/recipes/cutmix)",
                         detmix_cutmix_boxes_recipe(a, b, cut), truth)
        shared_cut.score("detmix with masks", "detmix.functional.cutmix with instance masks",
                         detmix_cutmix_masks(a, b, cut), truth)
        if have_alb:
            shared_cut.score("detmix boxes only, Albumentations", "BoxCutMix in A.ReplayCompose, replayed with the cut",
                             adapters[("cutmix", False)](a, b, cut), truth)
            shared_cut.score("detmix with masks, Albumentations", "BoxCutMix + masks in A.ReplayCompose, replayed",
                             adapters[("cutmix", True)](a, b, cut), truth)

        # -- MixUp on the shared lam
        truth = mixup_truth(a, b, lam)
        shared_mixup.score("classification MixUp (a's boxes only)", "pixels blended; a's boxes unchanged, b's none",
                           classification_mixup(a, b, lam), truth)
        shared_mixup.score("detmix MixUp", "detmix.functional.mixup (weights = share)", detmix_mixup(a, b, lam), truth)
        if have_alb:
            shared_mixup.score("detmix MixUp, Albumentations", "BoxMixUp in A.ReplayCompose, replayed with lam",
                               adapters[("mixup", False)](a, b, lam), truth)
        if have_ul:
            out = peers["mixup"](a, b, peer_seed)
            ul_r.append(out.drawn["r"])
            shared_mixup.score("Ultralytics MixUp", "ultralytics.data.augment.MixUp(dataset, p=1) on its own r",
                               out, mixup_truth(a, b, out.drawn["r"]))

        # -- Ultralytics CutMix on its own cuts, the others on the same cuts
        if have_ul:
            for segments in (False, True):
                out = peers["cutmix-segments" if segments else "cutmix-boxes"](a, b, peer_seed)
                ul_cut = out.drawn["cut"]
                mixed = ul_cut is not None and len(out.boxes) > len(a["boxes"])
                stats = ul_stats[segments]
                if not mixed:
                    stats["skipped"] += 1
                    continue
                stats["mixed"] += 1
                area = (ul_cut[2] - ul_cut[0]) * (ul_cut[3] - ul_cut[1])
                stats["cut_area_pct"].append(100.0 * area / (height * width))
                table = ul_cuts[segments]
                truth = cutmix_truth(a, b, ul_cut)
                table.score(f"Ultralytics CutMix ({'segment' if segments else 'box'} labels)",
                            "ultralytics.data.augment.CutMix(dataset, p=1), beta 1, num_areas 3", out, truth)
                table.score("classification CutMix (a's boxes as they were)", "same cut",
                            classification_cutmix(a, b, ul_cut), truth)
                table.score("detmix boxes only", "same cut", detmix_cutmix_boxes(a, b, ul_cut), truth)
                table.score("detmix boxes only, cutmix recipe", "same cut, min_visibility 0.25, min_size 2",
                            detmix_cutmix_boxes_recipe(a, b, ul_cut), truth)
                table.score("detmix with masks", "same cut", detmix_cutmix_masks(a, b, ul_cut), truth)

        # -- Albumentations Mosaic
        if have_alb:
            out, truth = mosaic_transform([photos[k] for k in picks])
            mosaic.score("Albumentations Mosaic", "A.Mosaic(grid 2x2, 640 cells, 640 view) in A.Compose, BboxParams "
                         "defaults", out, truth)

        # -- the region family, each mode on its own draw, shared by its mixers
        for key, table in family.items():
            name = key.split("-")[0]
            recipe = family_recipes[key]
            draw = draw_family(family_rng, name, recipe, a, b)
            truth = family_truth(a, b, draw)
            title = FAMILY_TITLES[name]
            kernel = {"cutout": "detmix.functional.cutout", "resizemix": "detmix.functional.resizemix",
                      "fmix": "detmix.functional.cutmix(region=the FMix region)",
                      "saliencymix": "detmix.functional.cutmix on the cut"}[name]
            table.score(f"classification {title} (a's boxes as they were)",
                        f"pixels as {title}; a's boxes unchanged" + ("" if name == "cutout" else ", b's none"),
                        classification_family(a, b, draw), truth)
            table.score("detmix boxes only", f"{kernel}, no masks, defaults", detmix_family(a, b, draw, False),
                        truth)
            table.score(f"detmix boxes only, {name} recipe",
                        f"detmix.apply_params with recipe {name!r} (min_visibility 0.25, min_size 2)",
                        detmix_family_recipe(a, b, draw, recipe), truth)
            table.score("detmix with masks", f"{kernel} with instance masks, defaults",
                        detmix_family(a, b, draw, True), truth)

        if progress and (trial + 1) % 20 == 0:
            print(f"  {trial + 1}/{pairs} pairs, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    for segments, table in ul_cuts.items():
        stats = ul_stats[segments]
        table.extra["ultralytics_mixed_trials"] = stats["mixed"]
        table.extra["ultralytics_skipped_trials"] = stats["skipped"]
        table.extra["ultralytics_mean_cut_area_pct"] = (float(np.mean(stats["cut_area_pct"]))
                                                        if stats["cut_area_pct"] else None)
    if ul_r:
        shared_mixup.extra["ultralytics_mean_r"] = float(np.mean(ul_r))
    shared_cut.extra["note_lam"] = "mean share of a in the output is 0.5 over Beta(1, 1) before clipping"

    instances = sum(len(source.coco.getAnnIds(imgIds=list(source.image_ids), iscrowd=False))
                    for source in photos.sources)
    return {
        "benchmark": "fidelity",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": _versions(),
        "command": " ".join(["python bench/fidelity.py", *sys.argv[1:]]) if sys.argv and
        sys.argv[0].endswith("fidelity.py") else None,
        "config": {
            "pairs": pairs, "seed": seed, "size": size, "min_pixels": int(min_pixels), "thresholds": thresholds,
            "min_iou": MIN_IOU, "datasets": [[str(a), str(b)] for a, b in folders], "images": len(photos),
            "annotations_not_crowd": instances,
        },
        "not_available": {k: v for k, v in missing.items() if v is not None},
        "seconds": round(time.perf_counter() - started, 1),
        "comparisons": [c.to_dict() for c in comparisons if c.rows],
    }


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_lines(result: dict[str, Any], min_pixels: int | None = None) -> list[str]:
    """A plain-text table per comparison at ``min_pixels`` (default: the run's own)."""
    threshold = str(min_pixels if min_pixels is not None else result["config"]["min_pixels"])
    lines = []
    head = (f"{'mixer':<52} {'trials':>6} {'visible':>7} {'missed':>13} {'boxes':>6} {'phantom':>13} "
            f"{'mean IoU':>8} {'w MAE':>6}")
    for comparison in result["comparisons"]:
        lines += ["", f"{comparison['title']}  ({comparison['note']})", head]
        for row in comparison["rows"]:
            s = row["by_min_pixels"][threshold]
            lines.append(
                f"{row['mixer']:<52} {s['trials']:>6} {s['visible_objects']:>7} "
                f"{s['missed']:>6} {s['missed_pct']:5.1f}% {s['boxes']:>6} {s['phantom']:>6} {s['phantom_pct']:5.1f}% "
                f"{_fmt(s['mean_iou'], '8.4f')} {_fmt(s['weight_mae'], '6.3f')}"
            )
        for key in ("ultralytics_mixed_trials", "ultralytics_skipped_trials", "ultralytics_mean_cut_area_pct",
                    "ultralytics_mean_r"):
            if comparison.get(key) is not None:
                value = comparison[key]
                lines.append(f"  {key}: {_fmt(value, '.3g') if isinstance(value, float) else value}")
    return lines


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--coco", nargs=2, action="append", metavar=("ANNOTATIONS", "IMAGES"), type=Path,
                        help="a COCO instances JSON and its image folder (repeat for more); default: both coco-mini "
                        "splits")
    parser.add_argument("--pairs", type=int, default=200, help="number of random pairs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pairs and of every draw")
    parser.add_argument("--size", type=int, default=640, help="images are letterboxed to size x size")
    parser.add_argument("--min-pixels", type=int, default=16,
                        help="visible pixels from which an object must have a box (below: a sliver, don't care); "
                        "the strict reading (1) is always computed too")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file of the figures")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.pairs < 1 or args.size < 8 or args.min_pixels < 1:
        get_args_parser().error("--pairs must be >= 1, --size >= 8 and --min-pixels >= 1")
    folders = [tuple(pair) for pair in args.coco] if args.coco else [
        (COCO_MINI / "annotations" / f"instances_{split}2017.json", COCO_MINI / f"{split}2017")
        for split in ("train", "val")
    ]
    for annotation_file, image_dir in folders:
        if not annotation_file.is_file() or not image_dir.is_dir():
            get_args_parser().error(f"--coco: {annotation_file} must be a file and {image_dir} a folder")
    result = run(folders, args.pairs, args.seed, args.size, args.min_pixels, progress=not args.quiet)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for line in table_lines(result):
        print(line)
    if result["config"]["min_pixels"] != STRICT:
        print(f"\nStrict reading (every visible pixel counts, min_pixels = {STRICT}):")
        for line in table_lines(result, STRICT):
            print(line)
    if result["not_available"]:
        print(f"\nnot available here: {result['not_available']}")
    print(f"\n{result['config']['images']} images, {args.pairs} pairs, {result['seconds']} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
