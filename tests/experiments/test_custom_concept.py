"""Any concept from the command line (concept=custom concept.prompt=...): named safely from its prompt, runs on
any model including the toy world, and is scored by CLIP presence on its own prompt (benchmark=concept)."""

from __future__ import annotations

import pytest

from evaluation.report import load_results
from experiments.config import compose_config
from experiments.run import run_from_config
from experiments.validate import ConfigError, check_run, custom_name, effective_concept


@pytest.mark.parametrize(("prompt", "name"), [("pikachu", "pikachu"), ("a striped circle", "a_striped_circle"),
                                              ("  a   striped circle ", "a_striped_circle")])
def test_plain_prompts_name_themselves(prompt, name):
    assert custom_name(prompt) == name


def test_names_keep_prompts_apart_and_stay_safe():
    a, b = custom_name("Van Gogh"), custom_name("van gogh")
    assert a != b and a.startswith("van_gogh-") and b == "van_gogh"
    hostile = custom_name("../../etc/passwd; rm -rf /")
    assert "/" not in hostile and ".." not in hostile and hostile.startswith("etc_passwd_rm_rf-")


def test_custom_concept_runs_on_any_model_as_given():
    cfg = compose_config(["concept=custom", "concept.prompt=pikachu", "model=sd14", "benchmark=concept"])
    concept = effective_concept(cfg["concept"], "sd14")
    assert concept["name"] == "pikachu" and concept["prompt"] == "pikachu" and concept["base_prompt"] == ""
    toy = effective_concept(compose_config(["concept=custom", "concept.prompt=a red ring"])["concept"], "toy")
    assert toy["name"] == "a_red_ring"  # no toy stand-in needed: the prompt is the concept
    named = effective_concept({**cfg["concept"], "name": "pika"}, "sd14")
    assert named["name"] == "pika"


def test_custom_concept_without_a_prompt_names_the_fix():
    with pytest.raises(ConfigError, match='concept.prompt='):
        check_run(compose_config(["concept=custom", "benchmark=concept"]))


def test_benchmark_concept_is_the_concepts_own_prompt():
    cfg = compose_config(["concept=custom", "concept.prompt=a red ring", "benchmark=concept",
                          "benchmark.source.seeds_per_prompt=3"])
    from evaluation.benchmarks import load_benchmark

    bench = load_benchmark(cfg["benchmark"])
    assert [(i.prompt, i.seed) for i in bench.items] == [("a red ring", 0), ("a red ring", 1), ("a red ring", 2)]
    assert bench.meta["metrics"] == ["clip_presence"]


def test_ad_hoc_concept_end_to_end_on_the_toy_world(micro, toy, tmp_path):
    cfg = compose_config(micro + ["concept=custom", "concept.prompt=a striped circle", "benchmark=concept",
                                  "benchmark.source.seeds_per_prompt=4", "generation.per_label=null"])
    out = run_from_config(cfg, tmp_path / "run")
    assert out["run"]["concept"] == "a_striped_circle"
    for variant in ("original", "edited", "random-0"):
        assert 0.0 <= out["metrics"][variant]["concept_prompts/clip_presence"] <= 1.0
    rows = load_results(toy / "results.jsonl")
    assert rows and {r["concept"] for r in rows} == {"a_striped_circle"}
    assert (toy / "attributions" / "toy" / "a_striped_circle").is_dir()


def test_a_prompt_override_never_shares_a_cell_with_the_concepts_own_result(micro, toy, tmp_path):
    from evaluation.report import markdown_tables

    plain = run_from_config(compose_config(micro), tmp_path / "plain")
    over = run_from_config(compose_config(micro + ["concept.prompt=a striped circle"]), tmp_path / "override")
    assert plain["run"]["concept"] == over["run"]["concept"] == "diamond"
    assert plain["run"]["scores_key"] != over["run"]["scores_key"]  # different attributions
    assert plain["run"]["concept_override"] is None and over["run"]["concept_override"] == "a striped circle"
    rows = load_results(toy / "results.jsonl")
    by_run = {r["run_id"]: r for r in rows}
    assert len(by_run) == 2
    keys = {r["row_key"] for r in rows}
    assert len(keys) == len(rows)  # no row of one run supersedes the other's
    report = markdown_tables(rows)
    assert "diamond acc_target" in report and "diamond [prompt: a striped circle] acc_target" in report
