"""The ``detmix`` command.

    detmix preview [--annotations A.json --images DIR] [--recipe deit] [--num 8] [--seed 0] [--out F.png]
    detmix serve [--host H --port P --workers N --settings F]   the REST service (detmix[service])
    detmix data [--out DIR]          write the embedded synthetic COCO dataset
    detmix recipes                   list the named recipes
    detmix train [--config configs/train/X.yaml] [options]     train a detector (see detmix train --help)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _add_preview(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preview", help="render a grid PNG of mixed samples with their boxes",
                       description="Mix random pairs of a COCO dataset (default: the embedded synthetic one) "
                                   "and draw the results: boxes from a orange, from b blue, captioned with "
                                   "class and weight; dropped boxes dashed grey; the cut outlined.")
    p.add_argument("--annotations", type=Path, help="COCO instances JSON (default: the embedded dataset)")
    p.add_argument("--images", type=Path, help="image folder of --annotations")
    p.add_argument("--recipe", default="deit", help="recipe name (see: detmix recipes) or a YAML path (default: deit)")
    p.add_argument("--num", type=int, default=8, help="number of mixed pairs (default: 8)")
    p.add_argument("--cols", type=int, default=4, help="tiles per row (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair and parameter draws (default: 0)")
    p.add_argument("--tile-width", type=int, default=320, help="width of each tile in pixels (default: 320)")
    p.add_argument("--no-masks", action="store_true", help="mix boxes only, without instance masks")
    p.add_argument("--adapter", choices=("core", "albumentations"), default="core",
                   help="mix with the core functions or through an Albumentations pipeline (default: core)")
    p.add_argument("--format", choices=("coco", "pascal_voc", "albumentations", "yolo"), default="coco",
                   help="bbox format of the Albumentations pipeline, with --adapter albumentations (default: coco)")
    p.add_argument("--out", type=Path, default=Path("out/preview.png"), help="PNG to write (default: out/preview.png)")
    p.add_argument("--log", type=Path, help="also write the drawn parameters of every tile as JSON")


def _preview(args: argparse.Namespace) -> int:
    from detmix.coco import CocoDetectionSource
    from detmix.preview import preview_dataset, save

    if (args.annotations is None) != (args.images is None):
        raise SystemExit("detmix preview: --annotations and --images go together")
    if args.annotations is None:
        from detmix.synthetic import default_dataset

        dataset = default_dataset()
        args.annotations, args.images = dataset.train_annotations, dataset.train_images
    source = CocoDetectionSource(args.annotations, args.images, masks=not args.no_masks)
    if args.adapter == "albumentations":
        from detmix.preview import preview_grid as render
        options = {"bbox_format": args.format}
    else:
        render, options = preview_dataset, {}
    grid, records = render(source, args.recipe, num=args.num, cols=args.cols, seed=args.seed,
                           tile_width=args.tile_width, category_names=source.category_names, **options)
    path = save(grid, args.out)
    for k, r in enumerate(records):
        p = r["params"]
        dropped = f" dropped={r['dropped']}" if "dropped" in r else ""
        print(f"tile {k}: images {r['a']}+{r['b']} {p['mode']:<6} lam={p['lam']:.3f} kept={r['kept']}{dropped}")
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text(json.dumps(records, indent=1))
    print(f"wrote {path} ({grid.width}x{grid.height}) from {args.annotations}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from detmix.synthetic import default_dataset, make_synthetic_coco

    dataset = default_dataset() if args.out is None else make_synthetic_coco(args.out, seed=args.seed)
    print(f"synthetic COCO dataset at {dataset.root}")
    print(f"  train: {dataset.train_annotations}\n  val:   {dataset.val_annotations}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from detmix.recipes import builtin_recipes

    for name, recipe in builtin_recipes().items():
        print(f"{name:<10} {recipe.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detmix", description="Detection-aware CutMix and MixUp.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_preview(sub)
    d = sub.add_parser("data", help="write the embedded synthetic COCO dataset")
    d.add_argument("--out", type=Path, help="folder to write (default: the cache the other commands use)")
    d.add_argument("--seed", type=int, default=0)
    sub.add_parser("recipes", help="list the named recipes")
    sub.add_parser("serve", add_help=False,
                   help="start the REST service on the embedded dataset (see: detmix serve --help)")
    sub.add_parser("train", add_help=False,
                   help="train a torchvision detector with mixing on the device (see: detmix train --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # the service parses its own options
        try:
            from detmix_service import main as serve
        except ImportError as exc:
            print(f'detmix serve: the service is not installed ({exc}); pip install "detmix[service]"', file=sys.stderr)
            return 2
        return serve(argv[1:])
    if argv[:1] == ["train"]:  # the training script parses its own options and config files
        from detmix.train import cli as train

        return train(argv[1:], prog="detmix train")
    args = build_parser().parse_args(argv)
    handler = {"preview": _preview, "data": _data, "recipes": _recipes}[args.command]
    try:
        return handler(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"detmix {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
