"""Every option of every config group composes with model=toy, and the toy twins swap in toy benchmarks."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

import experiments
from experiments.config import compose_config as compose_plain

GROUPS = ("model", "concept", "method", "benchmark", "logger", "launcher", "experiment", "twin", "protocol")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (experiments.CONF_DIR / group).glob("*.yaml"))


CASES = [(g, o) for g in GROUPS for o in _options(g)]


def test_every_group_has_options():
    for group in GROUPS:
        assert _options(group), f"conf/{group} is empty"
    assert {"toy", "sd14", "sd15", "sd21"} <= set(_options("model"))
    assert {"cad_erase", "cad_amplify", "none", "random"} <= set(_options("method"))
    assert {"basic", "joblib", "submitit_slurm"} <= set(_options("launcher"))
    assert len([c for c in _options("concept") if c in {"tench", "english_springer", "cassette_player", "chain_saw",
                "church", "french_horn", "garbage_truck", "gas_pump", "golf_ball", "parachute"}]) == 10


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_with_toy(group, option):
    overrides = [f"{group}={option}", "model=toy"]
    if option in ("amplify_erased", "amplify_erased_toy"):
        overrides.append("model.checkpoint=/some/erased-unet.safetensors")
    cfg = compose_plain(overrides)  # resolves every interpolation
    assert cfg["model"]["name"] == "toy"
    if option == "custom":  # concept=custom: its prompt comes from the command line, its name from the prompt
        assert cfg["concept"]["kind"] == "custom" and cfg["concept"]["prompt"] is None
    else:
        for key in ("name", "prompt", "label"):
            assert cfg["concept"][key]
    assert 0 <= cfg["method"].get("ratio", 0) <= 1
    # benchmark=file (your own list) is named after its file once benchmark.path is given
    assert (cfg["benchmark"]["name"] or "path" in cfg["benchmark"]) and cfg["benchmark"]["version"]
    assert cfg["paths"]["outputs"].startswith("/")
    if group == "experiment" and option != "fidelity":
        # the toy twin replaced the real benchmarks by toy ones: runnable at micro size
        assert cfg["benchmark"]["name"].startswith("toy_"), cfg["benchmark"]["name"]
        assert all(spec["name"].startswith("toy_") for spec in cfg["retain"].values())


def test_real_model_keeps_real_benchmarks():
    cfg = compose_plain(["experiment=nudity_erasure", "model=sd14"])
    assert cfg["benchmark"]["name"] == "i2p" and cfg["retain"]["coco30k"]["name"] == "coco30k"
    assert cfg["model"]["id"] == "CompVis/stable-diffusion-v1-4" and cfg["concept"]["name"] == "nudity"


def test_launchers_select_hydra_plugins():
    targets = {}
    for option in _options("launcher"):
        cfg = compose_plain([f"launcher={option}"], keep_hydra=True)
        targets[option] = cfg.hydra.launcher._target_
    assert targets["joblib"].endswith("JoblibLauncher")
    assert targets["submitit_slurm"].endswith("SlurmLauncher")
    assert targets["basic"].endswith("BasicLauncher")


def test_outputs_root_and_run_dirs(monkeypatch, tmp_path):
    monkeypatch.delenv("CAD_OUTPUTS", raising=False)
    cfg = compose_plain([], keep_hydra=True)
    assert cfg.paths.outputs == str(experiments.repo_root() / "outputs")  # repo root, not the cwd
    monkeypatch.setenv("CAD_OUTPUTS", str(tmp_path))
    cfg = compose_plain([], keep_hydra=True)
    assert OmegaConf.select(cfg, "hydra.run.dir").startswith(str(tmp_path / "runs") + "/")
    assert cfg.hydra.sweep.dir.startswith(str(tmp_path / "multirun") + "/")


def test_default_is_toy_main_job():
    cfg = compose_plain([])
    assert (cfg["model"]["name"], cfg["method"]["name"], cfg["benchmark"]["name"], cfg["logger"]["name"]) == (
        "toy", "cad_erase", "toy_objects", "none")
    assert cfg["concept"]["kind"] == "toy_shape" and cfg["method"]["controls"]
