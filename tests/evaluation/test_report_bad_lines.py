"""A hand-edited or foreign line in results.jsonl: the report names the line and what is wrong with it, instead
of crashing somewhere in the tables; the runner's own reader skips it with a warning."""

from __future__ import annotations

import json
import logging

import pytest

from evaluation.report import ResultsLineError, load_results, main
from experiments.results import append_rows, make_rows, read_rows

GOOD = make_rows(run={"run_id": "r", "model": "toy", "concept": "circle", "method": "cad_erase", "ratio": 0.01},
                 variant="edited", benchmark="toy_objects@v1", metrics={"toy_objects/acc_target": 0.2},
                 directions={"toy_objects/acc_target": False}, protocol={"n_items": 12}, edit_fingerprint="e")[0]


def _without(key):
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(("line", "what"), [
    (json.dumps([GOOD]), "a JSON list, not an object"),
    (json.dumps("edited"), "a JSON str, not an object"),
    (json.dumps(_without("benchmark")), "lacks 'benchmark'"),
    (json.dumps({**GOOD, "metric": None}), "lacks 'metric'"),
    (json.dumps(_without("value")), "lacks 'value'"),
    (json.dumps({**GOOD, "value": "0.93"}), "value is '0.93', not a number"),
    (json.dumps({**GOOD, "value": True}), "value is True, not a number"),
    (json.dumps({**GOOD, "ratio": "1%"}), "ratio is '1%', not a number"),
    (json.dumps({**GOOD, "concept": ["circle"]}), "concept is ['circle'], not a string"),
    (json.dumps({**GOOD, "protocol": "reference"}), "protocol is 'reference', not a JSON object"),
    ('{"benchmark": ', "not a JSON row"),
])
def test_a_bad_line_is_named(tmp_path, line, what):
    table = tmp_path / "results.jsonl"
    append_rows(table, [GOOD])
    with open(table, "a") as f:
        f.write(line + "\n")
    append_rows(table, [{**GOOD, "row_key": "other", "value": 0.3}])
    with pytest.raises(ResultsLineError) as err:  # a UserError: the command line prints it alone
        load_results(table)
    msg = str(err.value)
    assert msg.startswith(f"{table} line 2: ") and what in msg and msg.endswith("fix or delete that line"), msg
    with pytest.raises(ValueError, match="line 2"):  # the command line says the same, before writing anything
        main([str(table), "--out", str(tmp_path / "report")])
    assert not (tmp_path / "report").exists()


def test_null_value_and_good_rows_still_load(tmp_path):
    table = tmp_path / "results.jsonl"
    append_rows(table, [GOOD, {**GOOD, "row_key": "nan-metric", "value": None}])
    assert [r["value"] for r in load_results(table)] == [0.2, None]


def test_the_runner_reader_skips_a_non_object_line_with_a_warning(tmp_path, caplog):
    table = tmp_path / "results.jsonl"
    table.write_text(json.dumps(GOOD) + "\n[1, 2]\n")
    with caplog.at_level(logging.WARNING, logger="cad.experiments"):
        assert read_rows(table) == [GOOD]
    assert "line 2 is a JSON list, not a results row" in caplog.text


def test_the_command_prints_the_line_alone_and_exits_2(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    table = tmp_path / "results.jsonl"
    append_rows(table, [GOOD])
    with open(table, "a") as f:
        f.write(json.dumps([GOOD]) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    out = subprocess.run([sys.executable, "-m", "evaluation.report", str(table)], capture_output=True, text=True,
                         env=env, cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert out.returncode == 2, out.stderr
    assert f"{table} line 2: a JSON list" in out.stderr and "Traceback" not in out.stderr, out.stderr
