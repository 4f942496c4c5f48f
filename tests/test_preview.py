"""The preview pictures and the ``detmix`` command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, make_sample
from detmix import functional as F
from detmix.cli import main
from detmix.preview import CROWD_COLOUR, DROPPED_COLOUR, SOURCE_COLOURS, draw_sample, make_grid, preview_dataset


def test_draw_sample_draws_boxes_in_their_source_colour():
    a = make_sample(60, 80, [[10, 10, 30, 40]], fill=0)
    b = make_sample(60, 80, [[50, 20, 70, 50]], fill=0)
    out = F.cutmix(a, b, (40, 0, 80, 60))
    picture = np.asarray(draw_sample(out, {1: "cat"}))
    assert picture.shape == (60, 80, 3)
    assert tuple(picture[25, 10]) == SOURCE_COLOURS[0]  # left edge of a's box
    assert tuple(picture[35, 50]) == SOURCE_COLOURS[1]  # left edge of b's box
    dropped = np.asarray(draw_sample(out, dropped_boxes=np.array([[2, 2, 8, 50]])))
    assert (dropped[:, 2] == DROPPED_COLOUR).all(axis=1).any()
    scaled = draw_sample(out, width=160, title="t")
    assert scaled.size == (160, 120 + 16)


def test_crowd_regions_are_shaded_and_outlined():
    a = make_sample(60, 80, [[10, 10, 30, 40]], fill=0, crowd_boxes=[[40, 10, 70, 50]])
    a["crowd_mask"] = np.zeros((60, 80), np.uint8)
    a["crowd_mask"][10:50, 40:70] = 1
    b = make_sample(60, 80, [], fill=0, crowd_boxes=np.zeros((0, 4)), crowd_mask=np.zeros((60, 80), np.uint8))
    out = F.cutmix(a, b, (55, 0, 80, 60))  # takes the right half of the crowd region away
    picture = np.asarray(draw_sample(out))
    np.testing.assert_allclose(out["crowd_boxes"], [[40, 10, 55, 50]])
    assert tuple(picture[30, 50]) == (127, 127, 127)  # shaded: half black, half white
    assert tuple(picture[30, 60]) == (0, 0, 0)  # the part the cut took is not
    assert (picture[10, 40:55] == CROWD_COLOUR).all(axis=1).any()  # the dashed outline


def test_preview_of_real_photographs_with_crowd_shows_it(coco_mini):
    from detmix.coco import CocoDetectionSource

    annotations = coco_mini / "annotations" / "instances_val2017.json"
    raw = json.loads(annotations.read_text())
    crowd_ids = sorted({a["image_id"] for a in raw["annotations"] if a["iscrowd"]})
    source = CocoDetectionSource(annotations, coco_mini / "val2017", image_ids=crowd_ids)
    grid, records = preview_dataset(source, "mixup", num=2, seed=0)
    assert all(r["crowd"] >= 1 for r in records)  # every tile of a mixup of crowd images keeps crowd regions
    assert grid.width == 2 * 320 + 3 * 4


def test_make_grid_tiles_row_by_row():
    tiles = [Image.new("RGB", (10, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    grid = np.asarray(make_grid(tiles, cols=2, pad=1))
    assert grid.shape == (2 * 8 + 3, 2 * 10 + 3, 3)
    assert tuple(grid[1, 1]) == (255, 0, 0) and tuple(grid[1, 12]) == (0, 255, 0) and tuple(grid[10, 1]) == (0, 0, 255)
    with pytest.raises(ValueError, match="images must hold at least one picture"):
        make_grid([])


def test_preview_command_on_the_embedded_dataset(tmp_path, capsys):
    out, log = tmp_path / "p.png", tmp_path / "p.json"
    assert main(["preview", "--num", "6", "--cols", "3", "--tile-width", "200", "--out", str(out),
                 "--log", str(log)]) == 0
    with Image.open(out) as opened:
        picture = np.asarray(opened)
    assert picture.shape[1] == 3 * 200 + 4 * 4
    records = json.loads(log.read_text())
    assert len(records) == 6 and {r["params"]["mode"] for r in records} <= {"cutmix", "mixup", "none"}
    printed = capsys.readouterr().out
    assert printed.count("tile ") == 6 and f"wrote {out}" in printed
    # same seed, same picture
    again = tmp_path / "again.png"
    main(["preview", "--num", "6", "--cols", "3", "--tile-width", "200", "--out", str(again)])
    with Image.open(again) as opened:
        assert np.array_equal(np.asarray(opened), picture)


def test_preview_command_on_real_photographs(tmp_path, coco_mini):
    out = tmp_path / "coco.png"
    code = main(["preview", "--annotations", str(coco_mini / "annotations" / "instances_val2017.json"),
                 "--images", str(coco_mini / "val2017"), "--recipe", "cutmix", "--num", "2", "--out", str(out)])
    assert code == 0
    with Image.open(out) as opened:
        assert opened.width == 2 * 320 + 3 * 4


def test_preview_errors_are_clear(tmp_path, capsys):
    assert main(["preview", "--recipe", "nope", "--out", str(tmp_path / "x.png")]) == 2
    assert "recipe must be one of" in capsys.readouterr().err
    assert main(["preview", "--num", "0", "--out", str(tmp_path / "x.png")]) == 2
    assert "num must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--annotations and --images go together"):
        main(["preview", "--annotations", "x.json"])


def test_module_entry_point_lists_recipes():
    result = subprocess.run([sys.executable, "-m", "detmix", "recipes"], capture_output=True, text=True,
                            cwd=REPO, check=True)
    assert {"deit", "cutmix", "mixup"} <= {line.split()[0] for line in result.stdout.splitlines()}
