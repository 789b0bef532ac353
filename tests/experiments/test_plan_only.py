"""The plan before the model: plan_only=true prints a job's or a sweep's plan and stops before anything loads;
memory=auto resolves through the planner against the free GPU memory (given here as a number), and a run that
fits in no mode is refused before any weights load, naming what would fit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from experiments.config import compose_config

GB = 10**9


def _no_loading(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("plan_only loaded a model")

    import cad.backbones
    import experiments.analysis
    import experiments.erase_eval
    import experiments.export
    import experiments.fidelity
    import experiments.models

    # The runners bind load_model by name when first imported: import them before patching (one first imported
    # under the patch would keep the refusing stand-in for the rest of the session) and patch each binding.
    for module in (experiments.models, experiments.erase_eval, experiments.fidelity, experiments.analysis,
                   experiments.export):
        monkeypatch.setattr(module, "load_model", refuse, raising=False)
    monkeypatch.setattr(cad.backbones, "load", refuse)


def test_plan_only_prints_the_plan_and_stops_before_any_model_loads(tmp_path, data_dir, monkeypatch):
    from experiments.run import run_from_config

    _no_loading(monkeypatch)
    out = tmp_path / "outputs"
    cfg = compose_config(["plan_only=true", f"paths.outputs={out}", f"paths.data={data_dir}"])
    payload = run_from_config(cfg, tmp_path / "run")
    text = "\n".join(payload["summary"])
    assert "plan for toy" in text and "estimate from" in text
    assert "attribution: ~" in text and "generation toy_objects@v1 [original]" in text
    assert "GPU-hours" in text and "plan_only=true: stopped before loading any model" in text
    assert not (out / "results.jsonl").exists() and not (out / "attributions").exists()


def test_plan_only_plans_a_real_model_whose_weights_are_missing(tmp_path, data_dir, monkeypatch):
    from experiments.run import run_from_config

    _no_loading(monkeypatch)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: the model is not here
    cfg = compose_config(["plan_only=true", "experiment=object_erasure", "model=sd14", "concept=church",
                          f"paths.outputs={tmp_path / 'o'}", f"paths.data={data_dir}"])
    text = "\n".join(run_from_config(cfg, tmp_path / "run")["summary"])
    assert "plan for sd1 at 512 px" in text
    assert "5,000 images" in text  # Imagenette: 500 prompts x 10 classes per variant
    assert "before running:" in text and "model snapshot" in text  # what to fetch first, not a refusal


def _fake_gpu(monkeypatch, free: int):
    import experiments.planning as planning
    from cad import plan

    monkeypatch.setattr(planning, "_device", lambda cfg: "cuda")
    monkeypatch.setattr(plan, "visible_gpu", lambda: ("NVIDIA H100 80GB HBM3", free))


def _flux_cfg(*extra):
    return compose_config(["model=flux_schnell", "concept=church", "method=cad_erase", *extra])


def test_memory_auto_resolves_against_the_free_memory(monkeypatch):
    from cad import plan
    from experiments.planning import CAD_METHODS, resolve_memory

    assert "cad_erase" in CAD_METHODS
    stage = {m: plan.attribution_stage("flux", resolution=1024, dtype="bfloat16", mode=m, steps=4).peak_bytes
             for m in ("fast", "low")}
    _fake_gpu(monkeypatch, stage["fast"] + plan.RESERVE + GB)
    cfg = _flux_cfg()
    assert resolve_memory(cfg) == "fast" and cfg["attribution"]["memory"] == "fast"
    _fake_gpu(monkeypatch, stage["low"] + plan.RESERVE + GB)
    cfg = _flux_cfg()
    assert resolve_memory(cfg) == "low" and cfg["attribution"]["memory"] == "low"


def test_a_run_that_fits_in_no_mode_is_refused_naming_what_would(monkeypatch):
    from experiments.planning import resolve_memory
    from experiments.validate import ConfigError

    _fake_gpu(monkeypatch, 24 * GB)
    with pytest.raises(ConfigError) as err:
        resolve_memory(_flux_cfg())
    msg = str(err.value)
    assert "nothing was loaded" in msg and "memory=low" in msg
    assert "model.device_map=balanced" in msg and "GPUs" in msg


def test_an_explicit_mode_that_does_not_fit_names_the_one_that_does(monkeypatch):
    from cad import plan
    from experiments.planning import resolve_memory
    from experiments.validate import ConfigError

    low = plan.attribution_stage("flux", resolution=1024, dtype="bfloat16", mode="low", steps=4).peak_bytes
    _fake_gpu(monkeypatch, low + plan.RESERVE + GB)
    with pytest.raises(ConfigError, match="attribution.memory=low"):
        resolve_memory(_flux_cfg("attribution.memory=fast"))


def test_a_cpu_run_keeps_fast_without_asking_a_gpu(monkeypatch):
    from experiments.planning import resolve_memory

    monkeypatch.setattr("experiments.planning._device", lambda cfg: "cpu")
    cfg = _flux_cfg()
    assert resolve_memory(cfg) is None and cfg["attribution"]["memory"] == "auto"  # cad.memory resolves to fast


def test_a_sweep_with_plan_only_prints_every_job_and_the_sum_then_stops(tmp_path, data_dir):
    out = tmp_path / "outputs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "CAD_DATA_DIR": str(data_dir)}
    proc = subprocess.run([sys.executable, "-m", "experiments.run", "-m", "method.ratio=0.01,0.05", "plan_only=true",
                           f"paths.outputs={out}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "plan of a sweep of 2 jobs" in proc.stdout
    assert "method.ratio=0.01:" in proc.stdout and "method.ratio=0.05:" in proc.stdout
    assert "GPU-hours" in proc.stdout and "plan_only=true: stopped before any job ran" in proc.stdout
    assert "Launching" not in proc.stdout + proc.stderr
    assert not (out / "multirun").exists()
