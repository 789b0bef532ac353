"""Hostile-user cases that used to run silently wrong (issue 20, part 5b): each now stops before the model
loads with the fix, or is recorded for what it is."""

from __future__ import annotations

import time

import pytest
import torch

from cad.scores import AttributionScores
from experiments.config import compose_config
from experiments.run import run_from_config
from experiments.validate import ConfigError, plan_run


def _refused(overrides, tmp_path) -> str:
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        run_from_config(compose_config(overrides), tmp_path / "run")
    # the ratio check may import diffusers (seconds on a loaded CPU) to build the denoiser on the meta device
    assert time.perf_counter() - started < 30, "validation must come before any expensive step"
    assert not (tmp_path / "outputs" / "attributions").exists() and not (tmp_path / "outputs" / "images").exists()
    return str(err.value)


def _scores_folder(tmp_path, name="scores", **meta) -> str:
    """A scores folder for the toy model as the runner writes them (model_id, concept_name, settings)."""
    meta = {"model_id": "toy", "concept_name": "circle", "concept": "a circle", "objective": "erase",
            "settings": {"prompt": "a circle", "objective": "erase", "space": "ff"}, **meta}
    return str(AttributionScores({"w": torch.ones(64, 64)}, meta).save(tmp_path / name))


@pytest.mark.parametrize(("made", "overrides", "expect"), [
    ({}, [], "concept 'circle', not 'diamond'"),  # another concept's erase scores
    ({"concept_name": "diamond", "objective": "erase"}, ["method=cad_amplify"], "objective 'erase', not 'amplify'"),
    ({"concept_name": "diamond", "settings": {"prompt": "a diamond", "objective": "erase", "space": "attn"}}, [],
     "space 'attn', not 'ff'"),
    # scores written before the runner recorded the concept's name: their prompt decides
    ({"concept_name": None, "concept": "a circle", "settings": {}}, [], "concept 'a circle', not 'diamond'"),
])
def test_scores_made_for_another_concept_objective_or_space_are_refused(outputs, tmp_path, no_model, made,
                                                                      overrides, expect):
    folder = _scores_folder(tmp_path, **made)
    msg = _refused([f"attribution.scores={folder}", *overrides], tmp_path)
    assert expect in msg and "attribution.allow_other_scores=true" in msg and "attribution.scores null" in msg


def test_other_scores_pass_the_checks_when_allowed(outputs, tmp_path):
    folder = _scores_folder(tmp_path)
    plan = plan_run(compose_config([f"attribution.scores={folder}", "attribution.allow_other_scores=true"]))
    assert plan.concept["name"] == "diamond"
    same = _scores_folder(tmp_path, "own", concept_name="diamond", concept="a diamond")
    plan_run(compose_config([f"attribution.scores={same}"]))  # its own scores need no permission


def test_a_limit_that_leaves_no_target_item_points_to_per_label(outputs, tmp_path, no_model):
    """toy_objects lists 20 circles first: a limit of 4 kept only circles and acc_target silently became acc_mean
    after generating."""
    msg = _refused(["generation.limit=4", "generation.per_label=null"], tmp_path)
    assert "generation.limit=4 keeps 4 items" in msg and "none labelled 'diamond'" in msg and "(only: circle)" in msg
    assert "generation.per_label" in msg
    plan_run(compose_config(["generation.limit=4", "concept=circle"]))  # the circles are there: fine


@pytest.mark.parametrize(("override", "expect"), [
    ("concept.base_prompt='a diamond'", "concept.base_prompt='a diamond' is the concept prompt"),
    ("concept.base_prompt=' A  DIAMOND '", "J_erase, the noise gap between the two, is then zero"),
    ("concept.prompt='   '", "concept.prompt='   ' is empty or whitespace only"),
    ("concept.base_prompt='  '", "use '' for the unconditional (empty) prompt"),
    ("+concept.negative_prompt=' '", "concept.negative_prompt=' ' is whitespace only"),
])
def test_prompts_that_say_nothing_are_refused(outputs, tmp_path, no_model, override, expect):
    assert expect in _refused([override], tmp_path)


@pytest.mark.parametrize(("overrides", "expect"), [
    (["method.ratio=1e-9"], "k = int(ratio x 32768 weights of a tensor) = 0"),
    (["method.ratio=0.003", "method.granularity=row"], "method.ratio >= 0.00391 or method.granularity=tensor"),
])
def test_a_ratio_that_selects_no_weight_is_refused_before_the_model(outputs, tmp_path, no_model, overrides,
                                                                     expect):
    msg = _refused(overrides, tmp_path)
    assert "selects no component of space 'ff'" in msg and expect in msg


def test_moved_outputs_and_kit_keep_one_row_per_key_and_other_scores_are_recorded(micro, micro_kit, tmp_path,
                                                                                  monkeypatch):
    """Rows are keyed by content: after moving the outputs folder (and the kit) a rerun adds no second copy of
    its rows. Scores of another concept applied on purpose are recorded in the rows as what they are."""
    import shutil

    from evaluation.report import markdown_tables
    from evaluation.rows import key_of
    from experiments.results import read_rows

    def use(root):
        monkeypatch.setenv("CAD_TOY_KIT", str(root / "kit"))
        monkeypatch.setenv("CAD_OUTPUTS", str(root / "outputs"))
        return root / "outputs"

    shutil.copytree(micro_kit.path, tmp_path / "a" / "kit")
    use(tmp_path / "a")
    overrides = micro + ["concept=circle", "method.controls=[]"]
    first = run_from_config(compose_config(overrides), tmp_path / "run1")
    shutil.move(tmp_path / "a", tmp_path / "b")
    out = use(tmp_path / "b")
    second = run_from_config(compose_config(overrides), tmp_path / "run2")
    assert second["attribution_reused"] and second["metrics"] == first["metrics"]
    rows = read_rows(out / "results.jsonl")
    assert rows and len({key_of(r) for r in rows}) == len(rows)  # one row per key, not the table twice
    assert markdown_tables(rows).count("| cad_erase") == 1

    scores = out.joinpath(second["run"]["scores_path"])  # the circle's scores, found again in the moved folder
    third = run_from_config(compose_config(micro + ["method.controls=[]", f"attribution.scores={scores}",
                                                    "attribution.allow_other_scores=true"]), tmp_path / "run3")
    assert third["run"]["concept"] == "diamond" and third["run"]["scores_concept"] == "circle"
    diamond = [r for r in read_rows(out / "results.jsonl") if r["concept"] == "diamond"]
    assert diamond and all(r["scores_concept"] == "circle" and r["scores_objective"] == "erase" for r in diamond)
    assert all(r["scores_key"] == second["run"]["scores_key"] for r in diamond)


def test_a_new_template_under_the_same_benchmark_version_renders_new_images(micro, toy, tmp_path):
    """benchmark.source.template changed, name and version kept: the old images were reused (0.0 s) and the
    old prompts scored. The image folder is named by the items, so the new prompts get their own images."""
    from cad.generate import read_manifest

    base = micro + ["method=none", "generation.per_label=1"]
    first = run_from_config(compose_config(base), tmp_path / "run1")
    second = run_from_config(compose_config(base + ["benchmark.source.template='a {shape} shape'"]), tmp_path / "run2")
    old, new = (toy.joinpath(p["images"]["toy_objects@v1"]["original"]) for p in (first, second))
    assert old != new and old.parent == new.parent  # same model, edit and sampler: only the items differ
    prompts = {r["prompt"] for r in read_manifest(new).values()}
    assert len(prompts) == 6 and all(p.endswith(" shape") for p in prompts)
    assert all(not r["prompt"].endswith(" shape") for r in read_manifest(old).values())
