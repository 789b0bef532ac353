"""Run grids show the claim: target items first, then a few of every other class, rows aligned by item id."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from evaluation.benchmarks import Benchmark, Item
from evaluation.grids import GridLayout, concept_grid, pick_items

LABELS = ("apple", "bear", "cat")  # benchmark order; the target is "bear", not the first class


def _bench(labels=LABELS, per=4, labelled=True) -> Benchmark:
    items = [Item(f"{lab}-{k:03d}", f"a {lab}", 10 + k, lab if labelled else None)
             for lab in labels for k in range(per)]
    return Benchmark("tiny", 1, tuple(items))


def _colour(variant: int, n: int) -> tuple[int, int, int]:
    """A distinct colour for each (variant, item index): a pixel says which image was pasted where."""
    return (40 * variant + 20, (7 * n) % 256, 255 - 9 * n)


def _folders(tmp_path, bench, variants=("original", "edited", "random-0"), size=32, skip=()):
    folders = {}
    for v, name in enumerate(variants):
        folder = tmp_path / name
        folder.mkdir()
        for n, item in enumerate(bench.items):
            if (name, item.id) not in skip:
                Image.new("RGB", (size, size), _colour(v, n)).save(folder / f"{item.id}.png")
        folders[name] = folder
    return folders


def test_target_first_then_per_class(tmp_path):
    bench = _bench()
    pick = pick_items(bench, "bear", n_target=3, per_other=2)
    assert [i.id for i in pick.items] == ["bear-000", "bear-001", "bear-002",
                                          "apple-000", "apple-001", "cat-000", "cat-001"]
    assert pick.n_target == 3 and pick.mode == "target"
    # Matching is on the readable label: a concept's "Bear" or "bear " is the benchmark's "bear".
    assert pick_items(bench, " Bear", n_target=1, per_other=0).items[0].label == "bear"
    # Fewer target items than asked: all of them, and n_target says how many columns are the target's.
    assert pick_items(bench, "bear", n_target=10, per_other=1).n_target == 4


def test_rows_align_by_id_and_layout(tmp_path):
    bench = _bench()
    folders = _folders(tmp_path, bench)
    grid = concept_grid(bench, folders, "bear", tmp_path / "g.png", n_target=3, per_other=2, size=48)
    pick = pick_items(bench, "bear", n_target=3, per_other=2)
    index = {item.id: n for n, item in enumerate(bench.items)}
    # Geometry: the image is exactly rows x cols cells plus title, header, margin and the target gap.
    layout = GridLayout(**json.loads(grid.info["cad_grid"])["layout"])
    assert (layout.n_rows, layout.n_cols, layout.n_target, layout.size) == (3, 7, 3, 48)
    assert grid.size == layout.image_size
    margin, pad = layout.margin, layout.pad
    assert grid.size == (margin + 7 * 48 + 7 * pad + layout.gap, layout.title_h + layout.header_h + 3 * (48 + pad))
    for row in range(3):
        for col, item in enumerate(pick.items):
            x0, y0, x1, y1 = layout.cell_box(row, col)
            for x, y in ((x0, y0), (x1 - 1, y1 - 1), ((x0 + x1) // 2, (y0 + y1) // 2)):
                assert grid.getpixel((x, y)) == _colour(row, index[item.id]), (row, col, item.id)
    # The target block is set apart from the others by a gap wider than the cell padding.
    assert layout.cell_box(0, 3)[0] - layout.cell_box(0, 2)[2] == layout.gap + layout.pad
    # Labels are drawn: ink in the left margin of every row, in the header above every column.
    for row in range(3):
        y0, y1 = layout.cell_box(row, 0)[1], layout.cell_box(row, 0)[3]
        assert _ink(grid, (0, y0, margin - 2, y1))
    for col in range(len(pick.items)):
        x0, _, x1, _ = layout.cell_box(0, col)
        assert _ink(grid, (x0, layout.title_h, x1, layout.title_h + layout.header_h - 3))
    written = Image.open(tmp_path / "g.png")
    assert written.size == grid.size
    meta = json.loads(written.text["cad_grid"])  # the grid records what made it
    assert [c["id"] for c in meta["columns"]] == [i.id for i in pick.items]
    assert meta["target"] == "bear" and meta["rows"]["edited"] == str(folders["edited"])
    assert "bear" in grid.info["caption"] and "original / edited / random-0" in grid.info["caption"]


def test_missing_images_skip_the_item_in_every_row(tmp_path):
    bench = _bench()
    folders = _folders(tmp_path, bench, skip={("edited", "bear-000")})
    grid = concept_grid(bench, folders, "bear", n_target=2, per_other=1)
    ids = [c["id"] for c in json.loads(grid.info["cad_grid"])["columns"]]
    assert ids == ["bear-001", "bear-002", "apple-000", "cat-000"]


def test_unlabelled_benchmark_shows_first_items(tmp_path):
    bench = _bench(labelled=False)
    pick = pick_items(bench, "bear", n_first=5)
    assert [i.id for i in pick.items] == [i.id for i in bench.items[:5]] and pick.mode == "first"
    grid = concept_grid(bench, _folders(tmp_path, bench, variants=("original",)), "bear", n_first=5, size=32)
    assert "unlabelled" in grid.info["caption"]


def test_absent_target_warns_and_shows_every_class(tmp_path, caplog):
    bench = _bench()
    with caplog.at_level(logging.WARNING, logger="cad.evaluation"):
        pick = pick_items(bench, "zebra", per_other=2)
    assert "zebra" in caplog.text and "no items" in caplog.text
    assert pick.mode == "balanced" and pick.n_target == 0
    assert [i.label for i in pick.items] == ["apple", "apple", "bear", "bear", "cat", "cat"]


def test_bad_input_names_the_fix(tmp_path):
    bench = _bench()
    with pytest.raises(FileNotFoundError, match="generate it first"):
        concept_grid(bench, {"original": tmp_path / "missing"}, "bear")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="generate them first"):
        concept_grid(bench, {"original": tmp_path / "empty"}, "bear")
    with pytest.raises(ValueError, match="at least one variant"):
        concept_grid(bench, {}, "bear")


def _ink(im: Image.Image, box) -> bool:
    """Any non-white pixel in the box (text drawn there)."""
    lo, hi = im.crop(box).convert("L").getextrema()
    return lo < 200
