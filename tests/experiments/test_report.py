"""Results rows, the locked append, and the report: paper-shaped tables, sweep curves, Pareto plots, grids."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
from PIL import Image

from evaluation.report import (
    image_grid,
    latest,
    load_results,
    main,
    markdown_tables,
    pareto_plots,
    sweep_curves,
)
from experiments.results import ROW_KEYS, append_rows, make_rows

PROTO = {"steps": 20, "guidance": 3.0, "scheduler": "ddim", "seeds": "per_item", "resolution": 32}


def _rows(concept, method, variant, ratio, target, others, run_id):
    run = {"run_id": run_id, "experiment": "object_erasure", "model": "toy", "concept": concept, "method": method,
           "ratio": ratio, "sign": "positive", "granularity": "row", "scores_path": "/s"}
    return make_rows(run=run, variant=variant, benchmark="toy_objects@v1",
                     metrics={"toy_objects/acc_target": target, "toy_objects/acc_others": others},
                     directions={"toy_objects/acc_target": False, "toy_objects/acc_others": True},
                     protocol=PROTO, edit_fingerprint=None if variant == "original" else f"e{ratio}")


@pytest.fixture()
def table(tmp_path):
    path = tmp_path / "results.jsonl"
    for i, ratio in enumerate((0.001, 0.01, 0.1)):
        for concept in ("circle", "square"):
            rows = _rows(concept, "cad_erase", "original", ratio, 0.9, 0.8, f"r{i}")
            rows += _rows(concept, "cad_erase", "edited", ratio, 0.9 - 3 * ratio - i * 0.1, 0.8 - ratio, f"r{i}")
            rows += _rows(concept, "cad_erase", "random-0", ratio, 0.88, 0.79, f"r{i}")
            append_rows(path, rows)
    return path


def test_rows_carry_every_field(table):
    rows = load_results(table)
    assert len(rows) == 3 * 2 * 3 * 2
    for r in rows:
        assert set(ROW_KEYS) <= set(r)
        assert r["protocol"]["steps"] == 20 and r["benchmark"] == "toy_objects@v1"
    assert make_rows(run={"run_id": "x", "model": "m", "concept": "c", "method": "m"}, variant="edited",
                     benchmark="b@v1", metrics={"b/x": float("nan")}, directions={}, protocol={},
                     edit_fingerprint=None)[0]["value"] is None  # NaN is not JSON


def _append_many(path, worker):
    rows = [{"worker": worker, "i": i, "pad": "x" * 5000} for i in range(50)]
    for r in rows:
        append_rows(path, [r])


def test_parallel_appends_never_interleave(tmp_path):
    path = tmp_path / "results.jsonl"
    procs = [mp.get_context("fork").Process(target=_append_many, args=(path, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 150
    assert all(json.loads(line)["pad"] == "x" * 5000 for line in lines)


def test_markdown_table_is_paper_shaped(table):
    md = markdown_tables(load_results(table))
    assert "### object_erasure · toy · toy_objects@v1" in md
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert header == ("| method | circle acc_target ↓ | circle acc_others ↑ | square acc_target ↓ | square acc_others ↑ "
                      "| mean acc_target ↓ | mean acc_others ↑ |")
    body = [line for line in lines if line.startswith("| ") and not line.startswith("| method")]
    assert [line.split(" | ")[0][2:] for line in body] == [
        "toy (unedited)", "cad_erase@0.001", "cad_erase@0.01", "cad_erase@0.1", "random ↔ cad_erase@0.001 (mean of 1 seed)",
        "random ↔ cad_erase@0.01 (mean of 1 seed)", "random ↔ cad_erase@0.1 (mean of 1 seed)"]
    # each ratio's edit: target = 0.9 - 3 ratio - 0.1 run index, others = 0.8 - ratio; the same for both concepts
    assert body[0] == "| toy (unedited) | 0.900 | 0.800 | 0.900 | 0.800 | 0.900 | 0.800 |"
    assert body[2] == "| cad_erase@0.01 | 0.770 | 0.790 | 0.770 | 0.790 | 0.770 | 0.790 |"
    assert len(latest(load_results(table))) == len(load_results(table))


def test_latest_row_wins(tmp_path, table):
    rows = load_results(table)
    rerun = dict(rows[0], value=0.123, run_id="again")
    (kept,) = [r for r in latest(rows + [rerun]) if r["row_key"] == rerun["row_key"]]
    assert kept["value"] == 0.123


def test_plots_and_cli(tmp_path, table):
    curves = sweep_curves(load_results(table), tmp_path / "rep")
    paretos = pareto_plots(load_results(table), tmp_path / "rep")
    # one curve per (experiment, model, item count) group, method and metric; one Pareto plot per benchmark
    group = "object_erasure_toy_" + curves[0].name.split("_toy_")[1][:6]  # + a short hash of the group
    assert [p.name for p in curves] == [f"sweep_{group}_cad_erase_toy_objects_acc_{k}.png" for k in ("others", "target")]
    assert [p.name for p in paretos] == [f"pareto_{group}_toy_objects.png"]
    for p in curves + paretos:
        assert Image.open(p).size[0] > 100
    report = main([str(table), "--out", str(tmp_path / "rep2")])
    text = report.read_text()
    assert f"![{paretos[0].stem}]({paretos[0].name})" in text and "| cad_erase@0.01 |" in text


def test_image_grid(tmp_path):
    for variant, color in (("original", "red"), ("edited", "blue")):
        (tmp_path / variant).mkdir()
        for i in range(3):
            Image.new("RGB", (16, 16), color).save(tmp_path / variant / f"{i:04d}.png")
    grid = image_grid({"original": tmp_path / "original", "edited": tmp_path / "edited"}, tmp_path / "g.png",
                      n=2, size=32)
    assert grid.size == (64, 2 * (32 + 14))
    assert grid.getpixel((5, 14 + 5)) == (255, 0, 0) and grid.getpixel((5, 46 + 14 + 5)) == (0, 0, 255)
    assert (tmp_path / "g.png").is_file()
    with pytest.raises(FileNotFoundError, match="not found"):
        image_grid({"x": tmp_path / "missing"})


def test_missing_or_broken_table(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiments.run"):
        load_results(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_rows("circle", "cad_erase", "edited", 0.01, 0.1, 0.9, "r")[0]) + '\n{"a": \n')
    with pytest.raises(ValueError, match="line 2"):
        load_results(bad)
