"""The toy claims (`make claims`): the summary applies conf/claims.yaml's bars to results rows of the runner's
claims experiments; the experiments pin their settings; a micro sweep runs end to end through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from evaluation.claims import claims_markdown, summarize
from experiments import repo_root
from experiments.claims import claims_config, main
from experiments.config import compose_config
from experiments.results import append_rows, make_rows, read_latest

KIT_SIBLINGS = {"diamond": ["circle", "cross", "ring", "square", "triangle"]}


def erase_rows(concept, rule, ratio, edited, base=(1.0, 0.99), random=None, bench="toy_objects"):
    """The classifier rows of one claims_erase sweep point: original, edited and random-1 variants."""
    run = {"run_id": f"multirun/x/{concept}-{rule}-{ratio}", "experiment": "claims_erase", "model": "toy",
           "concept": concept, "method": "cad_erase", "ratio": ratio, "sign": "positive", "granularity": "tensor",
           "retain": ["a", "b"] if rule == "retain" else None}
    rows = []
    for variant, (t, o) in (("original", base), ("edited", edited), ("random-1", random or base)):
        rows += make_rows(run=run, variant=variant, benchmark=f"{bench}@v1",
                          metrics={f"{bench}/acc_target": t, f"{bench}/acc_others": o}, directions={},
                          protocol={"steps": 20}, edit_fingerprint=None if variant == "original" else variant)
    return rows


def amplify_rows(weak=(0.56, 0.82), edited=((0.01, 0.94, 0.91), (0.1, 0.88, 0.94))):
    rows = []
    for ratio, t, o in edited:
        run = {"run_id": f"multirun/amp/{ratio}", "experiment": "claims_amplify", "model": "toy", "concept": "circle",
               "method": "cad_amplify", "ratio": ratio, "erase_method": {"name": "cad_erase", "ratio": 0.07}}
        for variant, (vt, vo) in (("original", (0.97, 0.99)), ("erased", weak), ("edited", (t, o))):
            rows += make_rows(run=run, variant=variant, benchmark="toy_objects@v1",
                              metrics={"toy_objects/acc_target": vt, "toy_objects/acc_others": vo}, directions={},
                              protocol={}, edit_fingerprint=None)
    return rows


def fidelity_rows(r=0.33, n=200):
    run = {"run_id": "multirun/fid/0", "experiment": "claims_fidelity", "model": "toy", "concept": "circle",
           "method": "random_ablation"}
    return make_rows(run=run, variant="random", benchmark="fidelity@v1",
                     metrics={"fidelity/pearson_r": r, "fidelity/n_ablations": float(n)}, directions={}, protocol={},
                     edit_fingerprint=None)


@pytest.fixture()
def rows():
    """diamond passes under `cad` at 0.05 (not at 0.03: others drop 11 points); circle fails everywhere."""
    return (erase_rows("diamond", "cad", 0.03, (0.0, 0.88)) + erase_rows("diamond", "cad", 0.05, (0.03, 0.96))
            + erase_rows("diamond", "retain", 0.05, (0.25, 0.97))
            + erase_rows("circle", "cad", 0.05, (0.47, 0.92), base=(0.97, 0.99))
            + erase_rows("circle", "retain", 0.05, (0.69, 0.96), base=(0.97, 0.99))
            + amplify_rows() + fidelity_rows())


def test_bars_come_from_config_and_decide_each_concept_and_rule(rows):
    cfg = claims_config()
    assert cfg["bars"] == {"target": 0.10, "others_drop": 0.10, "random_drop": 0.10, "amplify_gain": 0.20}
    s = summarize(rows, cfg)
    (shape,) = s["kinds"]
    assert shape["kind"] == "shape" and shape["passes"] and shape["n"] == 2
    assert shape["passing"] == ["diamond"] and shape["failing"] == ["circle"]
    assert shape["by_rule"] == {"cad": ["diamond"], "retain": []}
    by = {v["concept"]: v for v in s["concepts"]}
    assert [v["concept"] for v in s["concepts"]] == ["circle", "diamond"]  # the world's order
    assert by["diamond"]["passing_rules"] == ["cad"] and not by["circle"]["passes"]
    diamond_cad = by["diamond"]["sweeps"][0]
    assert [r["passes"] for r in diamond_cad["rows"]] == [False, True]  # 0.03: others dropped 11 points
    assert diamond_cad["shown"]["ratio"] == 0.05
    assert s["passes"]

    text = claims_markdown(s)
    assert "| CAD-Erase of a shape | PASS: 1 of 2 concepts (diamond; by rule cad: 1; retain: 0) |" in text
    assert "| diamond | PASS | cad: 0.05, 0.03, 0.96 (1.00) pass; retain: 0.05, 0.25, 0.97 (1.00) |" in text
    assert "| circle | FAIL | cad: 0.05, 0.47, 0.92 (0.97); retain: 0.05, 0.69, 0.96 (0.97) |" in text
    assert "| CAD-Amplify 'circle' | PASS (+38 points) |" in text
    assert "| fidelity r ('circle', 200 ablations) | 0.330 (SD 1.4: 0.506) |" in text

    # a stricter bar from the command line flips diamond, and with it the kind's claim
    strict = summarize(rows, claims_config(["bars.target=0.02"]))
    assert not strict["kinds"][0]["passes"] and not strict["passes"]
    assert strict["kinds"][0]["passing"] == []


def test_random_control_and_unrendered_concepts_fail_the_bar():
    cfg = claims_config()
    moved = erase_rows("cross", "cad", 0.2, (0.03, 0.95), base=(1.0, 0.99), random=(0.85, 0.99))
    never = erase_rows("ring", "cad", 0.2, (0.0, 0.99), base=(0.05, 0.99))
    styles = erase_rows("outline", "retain", 0.2, (0.0, 0.99), base=(1.0, 1.0), bench="toy_styles")
    s = summarize(moved + never + styles, cfg)
    assert [(k["kind"], k["passes"]) for k in s["kinds"]] == [("shape", False), ("style", True)]
    assert s["kinds"][1]["by_rule"] == {"retain": ["outline"]}
    assert not s["passes"]
    looser = summarize(moved + never, claims_config(["bars.random_drop=0.2"]))
    assert looser["kinds"][0]["passing"] == ["cross"]  # the ring stays vacuous: never rendered to begin with


def test_amplify_gain_and_the_latest_row_of_a_cell(tmp_path, rows):
    s = summarize(rows, claims_config())
    amp = s["amplify"]
    assert amp["gain"] == pytest.approx(0.38) and amp["best_ratio"] == 0.01 and amp["passes"]
    assert amp["weakened"] and amp["erase_ratio"] == 0.07
    assert not summarize(rows, claims_config(["bars.amplify_gain=0.4"]))["amplify"]["passes"]
    fid = s["fidelity"]
    assert fid["pearson_r"] == pytest.approx(0.33) and fid["n"] == 200 and fid["p_value"] < 1e-5
    # a rerun of a sweep point with new numbers supersedes the old rows
    table = tmp_path / "results.jsonl"
    append_rows(table, rows)
    append_rows(table, [{**r, "value": 0.5} if r["variant"] == "edited" and r["concept"] == "diamond"
                        and r["metric"].endswith("acc_target") and r["ratio"] == 0.05 and r["retain"] is None
                        else r for r in erase_rows("diamond", "cad", 0.05, (0.03, 0.96))])
    again = summarize(read_latest(table), claims_config())
    assert again["kinds"][0]["passing"] == []


def test_summary_refuses_missing_rows(rows):
    with pytest.raises(ValueError, match="no rows of experiment 'claims_erase'.*make claims"):
        summarize([r for r in rows if r["experiment"] != "claims_erase"], claims_config())
    partial = [r for r in rows if not r["variant"].startswith("random")]
    with pytest.raises(ValueError, match="random control"):
        summarize(partial, claims_config())


def test_claims_experiments_pin_their_settings():
    red = compose_config(["experiment=claims_erase", "concept=red", "method.retain=siblings"])
    assert red["benchmark"]["name"] == "toy_colors" and red["benchmark"]["source"]["seeds_per_prompt"] == 32
    assert red["protocol"]["name"] == "cad"
    assert {k: red["attribution"][k] for k in ("steps", "guidance", "num_samples", "seed", "schedule_steps")} == {
        "steps": 20, "guidance": 7.5, "num_samples": 16, "seed": 0, "schedule_steps": None}
    assert red["method"]["controls"] == [1] and red["concept"]["base_prompt"] == "a green shape"
    hydra = compose_config(["experiment=claims_erase"], keep_hydra=True).hydra.sweeper.params
    assert len(hydra["concept"].split(",")) == 16 and hydra["method.retain"] == "[],siblings"
    assert hydra["method.granularity"] == "tensor"
    # what the sweeper runs: its params as command-line overrides (a sweep's first value)
    params = compose_config(["experiment=claims_amplify"], keep_hydra=True).hydra.sweeper.params
    amp = compose_config(["experiment=claims_amplify"] + [f"{k}={str(v).split(',')[0]}" if k != "erase_method.controls"
                                                          else f"{k}={v}" for k, v in params.items()])
    assert amp["erase_method"]["name"] == "cad_erase" and amp["method"]["name"] == "cad_amplify"
    assert amp["erase_method"]["ratio"] == 0.07 and amp["erase_method"]["controls"] == []
    assert amp["method"]["ratio"] == 0.01 and amp["method"]["granularity"] == "tensor"
    assert amp["concept"]["name"] == "circle" and amp["benchmark"]["source"]["seeds_per_prompt"] == 32
    fid = compose_config(["experiment=claims_fidelity"])
    assert fid["task"] == "fidelity" and fid["fidelity"]["n_ablations"] == 200
    assert min(fid["fidelity"]["ratios"]) == 0.0005 and max(fid["fidelity"]["ratios"]) == 0.005


def test_toy_concepts_erase_against_their_anchor():
    """c_base of every toy concept is its anchor: the first other value of its kind ("" floors at ~1/6)."""
    from cad.toy.quality import concept_prompt
    from cad.toy.world import KINDS

    for values in KINDS.values():
        for c in values:
            anchor = next(v for v in values if v != c)
            concept = compose_config([f"concept={c}"])["concept"]
            assert concept["prompt"] == concept_prompt(c) and concept["base_prompt"] == concept_prompt(anchor), c


@pytest.mark.slow
def test_micro_claims_sweep_end_to_end(micro_kit, tmp_path, capsys, monkeypatch):
    """`make claims`-style: the runner's multirun over 1 concept x 2 ratios x 2 rules, then the summary."""
    out = tmp_path / "out"
    env = {**os.environ, "CAD_OUTPUTS": str(out), "CAD_TOY_KIT": str(micro_kit.path)}
    cmd = [sys.executable, "-m", "experiments.run", "-m", "experiment=claims_erase", "concept=diamond",
           "method.ratio=0.05,0.3", "model.steps=3", "attribution.steps=2", "attribution.num_samples=1",
           "generation.per_label=2"]
    proc = subprocess.run(cmd, cwd=repo_root(), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(sorted((out / "multirun").glob("*/*/[0-9]"))) == 4
    monkeypatch.setenv("CAD_OUTPUTS", str(out))
    code = main(["out=" + str(tmp_path / "claims.md"), "note=micro"])
    text = (tmp_path / "claims.md").read_text()
    assert text.startswith("<!-- made by `make claims` (micro) at commit <commit>")
    assert "| CAD-Erase of a shape |" in text and "| diamond |" in text and "cad: " in text and "retain: " in text
    s = summarize(read_latest(out / "results.jsonl"), claims_config())
    (diamond,) = s["concepts"]
    assert diamond["rules"] == ["cad", "retain"] and [len(sw["rows"]) for sw in diamond["sweeps"]] == [2, 2]
    assert code == (0 if s["passes"] else 1) and s["amplify"] is None and s["fidelity"] is None
    assert capsys.readouterr().out.startswith("<!-- made by")
