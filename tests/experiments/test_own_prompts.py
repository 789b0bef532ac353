"""Your own prompt list by path (benchmark=file benchmark.path=...) and the CLIP presence metric, end to end on
the micro toy kit; a run that would score nothing is refused before it loads anything."""

from __future__ import annotations

import hashlib

import pytest

from evaluation.report import load_results, markdown_tables
from experiments.config import compose_config
from experiments.run import run_from_config
from experiments.validate import ConfigError, check_run

CSV = "id,prompt,seed,label\nd1,a diamond,7,diamond\nd2,a diamond,,diamond\nc1,a circle,3,circle\nc2,a circle,4,circle\n"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_csv_by_path_end_to_end_with_its_hash_in_the_rows(micro, toy, tmp_path):
    csv = tmp_path / "my prompts.csv"
    csv.write_text(CSV)
    cfg = compose_config(micro + ["benchmark=file", f"benchmark.path={csv}"])
    out = run_from_config(cfg, tmp_path / "run")
    key = "my_prompts@v1"
    assert list(out["images"]) == [key]  # named by the file (its stem, made a safe name)
    for variant in ("original", "edited", "random-0"):
        m = out["metrics"][variant]
        assert 0.0 <= m["my_prompts/clip_presence"] <= 1.0 and -2.0 <= m["my_prompts/clip_presence_margin"] <= 2.0
        assert "my_prompts/clip_score_cos_mean" in m
    rows = load_results(toy / "results.jsonl")
    assert rows and all(r["protocol"]["benchmark_file_sha256"] == _sha(csv) for r in rows)
    assert all(r["benchmark"] == key and r["protocol"]["n_items"] == 4 for r in rows)
    presence = next(r for r in rows if r["metric"] == "my_prompts/clip_presence" and r["variant"] == "edited")
    assert presence["higher_is_better"] is False  # erasing: less presence is better
    assert presence["protocol"]["backbones"]["clip_presence"] == "toy kit open_clip model"
    report = markdown_tables(rows)
    assert "my_prompts@v1" in report and "clip_presence" in report
    manifest = (toy / out["images"][key]["original"]).joinpath("manifest.jsonl").read_text()
    assert '"seed": 7' in manifest and '"seed": 1' in manifest  # d2's empty seed: seed_base + row index


def test_plain_text_prompts_by_path(micro, toy, tmp_path):
    txt = tmp_path / "prompts.txt"
    txt.write_text("a diamond\n\na red, striped diamond\na circle\n")
    cfg = compose_config(micro + ["benchmark=file", f"benchmark.path={txt}", "generation.per_label=null",
                                  "benchmark.metrics=[clip_presence]", "method.controls=[]",
                                  "+concept.anchors=[a circle,a square]"])
    out = run_from_config(cfg, tmp_path / "run")
    (key,) = out["images"]
    assert key == "prompts@v1"
    assert set(out["metrics"]["original"]) == {"prompts/clip_presence", "prompts/clip_presence_margin"}
    assert out["metrics"]["original"]["prompts/clip_presence"] * 3 in (0.0, 1.0, 2.0, 3.0)
    rows = load_results(toy / "results.jsonl")
    assert {r["protocol"]["benchmark_file_sha256"] for r in rows} == {_sha(txt)}
    assert {r["protocol"]["n_items"] for r in rows} == {3}
    assert rows[0]["protocol"]["presence_texts"] == {"clip_presence": {"text": "a diamond",
                                                                       "anchors": ["a circle", "a square"]}}


@pytest.mark.parametrize("content, message", [(None, "no such file"), ("", "is empty"), ("dir", "is not a file")])
def test_a_missing_empty_or_unreadable_list_is_refused_before_anything_loads(outputs, tmp_path, content, message):
    path = tmp_path / "mine.csv"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        check_run(compose_config(["benchmark=file", f"benchmark.path={path}"]))
    with pytest.raises(ConfigError, match="benchmark.path="):
        check_run(compose_config(["benchmark=file"]))  # the option without its path


def test_a_run_with_no_metric_is_refused_naming_what_fits(outputs):
    with pytest.raises(ConfigError, match="clip_presence") as err:
        check_run(compose_config(["benchmark.metrics=[]"]))
    assert "classifier_accuracy" in str(err.value)  # diamond is a class of toy_objects
    assert not (outputs / "images").exists()
