"""Result rows are keyed by what produced them: reruns add nothing, the latest per key wins, appends from
several processes are never torn, and a torn tail left by a crash is skipped with a warning and healed."""

from __future__ import annotations

import json
import multiprocessing as mp

from experiments.results import append_rows, make_rows, read_latest, read_rows


def _rows(run_id, value, metric="b/acc_target", ratio=0.01):
    run = {"run_id": run_id, "model": "toy", "concept": "diamond", "method": "cad_erase", "ratio": ratio,
           "sign": "positive", "granularity": "tensor"}
    return make_rows(run=run, variant="edited", benchmark="b@v1", metrics={metric: value},
                     directions={metric: False}, protocol={"steps": 2, "versions": {"torch": "x"}},
                     edit_fingerprint="e1")


def test_a_resumed_run_adds_no_duplicate_rows_and_the_latest_wins(tmp_path):
    path = tmp_path / "results.jsonl"
    assert append_rows(path, _rows("runs/1", 0.5)) == 1
    assert append_rows(path, _rows("multirun/2/0", 0.5)) == 0  # the same result from a resumed sweep
    assert len(read_rows(path)) == 1
    assert append_rows(path, _rows("runs/3", 0.25)) == 1  # a new number for the same key supersedes
    assert append_rows(path, _rows("runs/3", 0.5, ratio=0.03)) == 1  # another sweep point: another key
    latest = read_latest(path)
    assert [(r["ratio"], r["value"]) for r in latest] == [(0.01, 0.25), (0.03, 0.5)]


def test_torn_tail_is_skipped_with_a_warning_and_healed(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    append_rows(path, _rows("r", 0.5))
    with open(path, "a") as f:
        f.write('{"row_key": "abc", "val')  # a writer killed mid-line on a file system without atomic appends
    assert len(read_latest(path)) == 1 and "line 2" in caplog.text
    append_rows(path, _rows("r", 0.5, ratio=0.2))
    assert len(read_rows(path)) == 2  # the new row started on its own line


def _writer(args):
    path, k = args
    for j in range(25):
        append_rows(path, _rows(f"p{k}", float(j), metric=f"b/m{k}_{j}"))


def test_parallel_appends_are_never_torn(tmp_path):
    path = tmp_path / "results.jsonl"
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_writer, [(str(path), k) for k in range(4)])
    lines = path.read_text().splitlines()
    assert len(lines) == 100 and all(json.loads(line)["row_key"] for line in lines)
