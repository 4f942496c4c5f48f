"""Render ``docs/images/albumentations-preview.png``: detmix's mixes inside an Albumentations pipeline.

    .venv/bin/python docs/make_albumentations_figure.py

Random pairs of the embedded synthetic dataset (never COCO photographs) go through
``A.Compose([HorizontalFlip, OneOfMix.from_recipe("deit"), Affine, RandomBrightnessContrast])`` by
:func:`detmix.preview.preview_grid`, which draws each tile from the pipeline's output alone:
boxes converted back from the pipeline's format, captioned with class and ``mix_weights``, orange
for the sample and blue for its partner (an extra label field that rides through the pipeline).
"""

from __future__ import annotations

from pathlib import Path

from detmix.preview import preview_grid
from detmix.coco import CocoDetectionSource
from detmix.synthetic import default_dataset
from detmix.preview import save

OUT = Path(__file__).resolve().parent / "images" / "albumentations-preview.png"


def main() -> Path:
    data = default_dataset()
    source = CocoDetectionSource(data.train_annotations, data.train_images)
    grid, records = preview_grid(source, "deit", num=8, cols=4, seed=0, tile_width=320, bbox_format="coco",
                                 category_names=source.category_names)
    path = save(grid, OUT)
    for k, record in enumerate(records):
        params = record["params"]
        print(f"tile {k}: images {record['a']}+{record['b']} {params['mode']:<6} lam={params['lam']:.3f} "
              f"kept={record['kept']}")
    print(f"wrote {path} ({grid.width}x{grid.height})")
    return path


if __name__ == "__main__":
    main()
