"""The toy twins measure the paper's metric kinds with the kit's own networks: what each composed twin lists,
the stand-ins they run, and the clear errors where a metric does not fit the model."""

from __future__ import annotations

import pytest

from experiments.config import compose_config


@pytest.mark.parametrize(("experiment", "target", "metrics", "retain"), [
    ("nudity_erasure", "toy_colors", ["classifier_accuracy", "toy_detector"],
     {"coco30k": ("toy_full", ["classifier_accuracy", "clip_score", "fid"])}),
    ("artist_erasure", "toy_styles", ["classifier_accuracy", "toy_lpips", "clip_score"], {}),
    ("object_erasure", "toy_objects", ["classifier_accuracy"], {}),
    ("amplify", "toy_objects_contested", ["classifier_accuracy"], {}),
])
def test_twins_list_the_papers_metric_kinds(experiment, target, metrics, retain):
    cfg = compose_config([f"experiment={experiment}", "model=toy"])
    assert cfg["benchmark"]["name"] == target and cfg["benchmark"]["metrics"] == metrics
    assert {role: (s["name"], s["metrics"]) for role, s in (cfg.get("retain") or {}).items()} == retain


def test_twins_default_stand_ins_are_concepts_make_claims_erases():
    from experiments.validate import plan_run

    stand_ins = {e: plan_run(compose_config([f"experiment={e}", "model=toy"])).concept["name"]
                 for e in ("object_erasure", "nudity_erasure", "artist_erasure", "amplify")}
    # docs/toy_claims.md: diamond, magenta and dotted pass CAD-Erase on kit v5 (ring, church's old one, fails)
    assert stand_ins == {"object_erasure": "diamond", "nudity_erasure": "magenta", "artist_erasure": "dotted",
                         "amplify": "diamond"}


@pytest.mark.parametrize(("experiment", "method", "ratio"), [
    ("amplify", "cad_amplify", 0.2), ("nudity_erasure", "cad_erase", 0.05), ("artist_erasure", "cad_erase", 0.05),
    ("object_erasure", "cad_erase", 0.03), (None, "cad_erase", 0.03), ("amplify_erased", "cad_amplify", 0.05),
])
def test_a_twins_method_settings_apply_to_that_method_only(experiment, method, ratio):
    from experiments.validate import plan_run

    base = ["model=toy"] + ([f"experiment={experiment}"] if experiment else [])
    cfg = compose_config(base + [f"method={method}"])
    assert cfg["method"]["ratio"] == ratio  # conf/method_twin/<method>_<experiment>_toy.yaml, else the world's
    if experiment in ("amplify", "nudity_erasure"):
        # the same twin with a method that has no ratio still composes and passes the checks
        other = "none" if experiment == "amplify" else "esd"
        plan_run(compose_config(base + [f"method={other}"]))


def test_real_models_keep_real_metrics():
    cfg = compose_config(["experiment=artist_erasure", "model=sd14"])
    assert "lpips" in cfg["benchmark"]["metrics"] and "toy_lpips" not in cfg["benchmark"]["metrics"]


def test_toy_only_metrics_refuse_a_real_model_and_lpips_refuses_the_kit():
    from types import SimpleNamespace

    from experiments.metric_factory import MetricPreflightError, build_metrics, preflight_metrics

    with pytest.raises(MetricPreflightError, match="model=toy"):
        preflight_metrics(["toy_lpips"], {"name": "artists"}, toy=False)
    assert preflight_metrics(["fid"], {"name": "toy_full"}, toy=True) == [
        "fid reference: the toy kit's fid_reference.safetensors"]
    bench = SimpleNamespace(name="toy_styles", labels=["solid", "dotted"], meta={})
    concept = {"name": "dotted", "label": "dotted"}
    with pytest.raises(ValueError, match="model=toy"):
        build_metrics(["toy_detector"], benchmark=bench, concept=concept, goal="erase", kit=None)
    with pytest.raises(ValueError, match="toy_lpips"):
        build_metrics(["lpips"], benchmark=bench, concept=concept, goal="erase", kit=SimpleNamespace())
