"""Render the README's pictures: ``make docs``.

* ``docs/images/preview.png``: ``detmix preview`` with the deit recipe (embedded synthetic dataset);
* ``docs/images/rules.png``: one pair and one cut, shown as classification CutMix leaves the
  boxes and as detmix mixes them (boxes only, then with masks), plus detection MixUp (the same);
* ``docs/images/family-<mode>.png``: the region family, one picture per mode (``cutout``,
  ``resizemix``, ``fmix``, ``saliencymix``, ``copy_paste``): ``preview_dataset`` with the mode's named recipe over
  the real photographs of ``../shared/data/coco-mini`` (val2017, instance masks), skipped with a
  message where that folder is absent.

``python docs/make_figures.py --only family`` renders the family alone (``--only rules preview`` the
others).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from detmix import functional as F
from detmix.coco import CocoDetectionSource
from detmix.synthetic import default_dataset
from detmix.preview import draw_sample, dropped_input_boxes, make_grid, preview_dataset, save

OUT = Path(__file__).resolve().parent / "images"
TILE = 360
COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"
#: The region family's pictures: mode (= recipe name) -> file under docs/images.
FAMILY = {name: f"family-{name}.png" for name in ("cutout", "resizemix", "fmix", "saliencymix", "copy_paste")}
FIGURES = ("rules", "preview", "family")
#: The seed of the family pictures: the first whose three FMix pairs all show both images (seed 0 draws
#: lam 0.02 and 1.00 for two of them: one image all but alone).
FAMILY_SEED = 1


def _without_masks(sample):
    return {k: v for k, v in sample.items() if k != "masks"}


def _pick(source):
    """The first pair and cut (scanning deterministically) that shows every rule at once:
    an object of a covered (dropped), one cut along its side (shrunk), one of b clipped."""
    for i in range(len(source)):
        for j in range(len(source)):
            if i == j:
                continue
            a, b = _without_masks(source[i]), _without_masks(source[j])
            height, width = a["image"].shape[:2]
            for cx in range(40, width - 40, 20):
                for cy in range(40, height - 40, 20):
                    cut = (cx - 60, max(cy - 50, 0), min(cx + 60, width), min(cy + 50, height))
                    cut = (max(cut[0], 0), cut[1], cut[2], cut[3])
                    out = F.cutmix(a, b, cut)
                    src, idx = out["source"], out["index"]
                    dropped_a = (out["dropped"]["source"] == 0).any()
                    shrunk = any(s == 0 and not np.array_equal(out["boxes"][k], a["boxes"][idx[k]])
                                 for k, s in enumerate(src))
                    clipped = any(s == 1 and not np.array_equal(out["boxes"][k], b["boxes"][idx[k]])
                                  for k, s in enumerate(src))
                    if dropped_a and shrunk and clipped and (src == 1).sum() >= 2:
                        return i, j, cut
    raise RuntimeError("no pair shows every rule")


def rules_figure(source) -> None:
    i, j, cut = _pick(source)
    a, b = source[i], source[j]
    names = source.category_names
    boxes_only = F.cutmix(_without_masks(a), _without_masks(b), cut)
    with_masks = F.cutmix(a, b, cut)
    naive = {"image": boxes_only["image"], "boxes": a["boxes"], "labels": a["labels"]}
    mixup = F.mixup(a, b, 0.6)
    tiles = [
        draw_sample(_without_masks(a), names, width=TILE, title="a"),
        draw_sample({**_without_masks(b), "source": np.ones(len(b["boxes"]), np.int64)}, names, width=TILE,
                    title="b (the cut outlined)", cut_box=cut),
        draw_sample(naive, names, width=TILE, cut_box=cut,
                    title="classification CutMix: a's boxes as they were, b's lost"),
        draw_sample(boxes_only, names, width=TILE, cut_box=cut,
                    dropped_boxes=dropped_input_boxes(a, b, boxes_only),
                    title="detmix, boxes: shrink, clip, weight, drop"),
        draw_sample(with_masks, names, width=TILE, cut_box=cut,
                    dropped_boxes=dropped_input_boxes(a, b, with_masks),
                    title="detmix, masks: exact boxes and weights"),
        draw_sample(mixup, names, width=TILE, title="detmix MixUp lam=0.6: union, weights 0.6 / 0.4"),
    ]
    save(make_grid(tiles, cols=3), OUT / "rules.png")


def family_figures(coco: Path = COCO_MINI) -> list[Path]:
    """One picture per mode of the region family: three pairs of coco-mini photographs (with their
    instance masks) mixed by ``preview_dataset`` with the mode's named recipe, seed
    :data:`FAMILY_SEED`."""
    annotations, images = coco / "annotations" / "instances_val2017.json", coco / "val2017"
    if not annotations.is_file() or not images.is_dir():
        print(f"skipped the family pictures: no COCO folder at {coco}", file=sys.stderr)
        return []
    source = CocoDetectionSource(annotations, images, masks=True)
    written = []
    for name, file in FAMILY.items():
        grid, records = preview_dataset(source, name, num=3, cols=3, seed=FAMILY_SEED, tile_width=300,
                                        category_names=source.category_names)
        written.append(save(grid, OUT / file))
        for record in records:
            print(f"  {name}: pair {record['a']}, {record['b']}: {record['kept']} kept, {record['dropped']} dropped, "
                  f"{record['params']}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the README's pictures under docs/images.")
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES), help="the figures to render")
    only = set(parser.parse_args(argv).only)
    written: list[Path] = []
    dataset = default_dataset() if only & {"rules", "preview"} else None
    if "rules" in only:
        source = CocoDetectionSource(dataset.val_annotations, dataset.val_images, masks=True)
        rules_figure(source)
        written.append(OUT / "rules.png")
    if "preview" in only:
        train = CocoDetectionSource(dataset.train_annotations, dataset.train_images, masks=True)
        grid, _ = preview_dataset(train, "deit", num=8, cols=4, seed=0, tile_width=300,
                                  category_names=train.category_names)
        written.append(save(grid, OUT / "preview.png"))
    if "family" in only:
        written += family_figures()
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
