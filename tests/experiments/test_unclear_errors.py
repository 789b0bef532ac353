"""Hostile input whose errors came late or unclear (issue 20, part 5c): each stops in the preflight, before any
model loads, with an error that names the setting (or file, or row) and the fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from experiments.config import compose_config
from experiments.run import run_from_config
from experiments.validate import ConfigError, check_benchmarks, check_outputs, check_seed

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model fails the test: each error below must come before it."""
    import experiments.erase_eval as erase_eval
    import experiments.fidelity as fidelity
    import experiments.models as models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was reported")

    for module in (erase_eval, fidelity, models):
        monkeypatch.setattr(module, "load_model", refuse, raising=False)


def _refused(overrides, tmp_path) -> str:
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        run_from_config(compose_config(overrides), tmp_path / "run")
    assert time.perf_counter() - started < 5, "validation must come before any expensive step"
    return str(err.value)


# --- 1. an empty concept prompt --------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["erase_eval", "fidelity"])
def test_empty_concept_prompt(outputs, tmp_path, no_model, micro, task):
    msg = _refused(micro + ["concept.prompt=", f"task={task}"], tmp_path)
    assert "concept.prompt=''" in msg and "set concept.prompt" in msg, msg


# --- 2. seeds beyond what torch.Generator takes ----------------------------------------------------------------

@pytest.mark.parametrize("override", ["seed=18446744073709551616", "attribution.seed=18446744073709551616",
                                      "generation.fixed_seed=1e30", "method.controls=[18446744073709551616]",
                                      "seed=-1", "attribution.seed=0.5", "generation.fixed_seed=abc"])
def test_seed_outside_the_generator_range(outputs, tmp_path, no_model, micro, override):
    msg = _refused(micro + [override], tmp_path)
    assert override.split("=")[0] in msg and "0 <= seed < 2**64" in msg, msg


def test_the_seed_range_is_the_generators():
    """The preflight's limits are torch's: the largest seed it accepts seeds a generator, the next one does not."""
    assert check_seed(2**64 - 1, "seed") == 2**64 - 1
    torch.Generator("cpu").manual_seed(2**64 - 1)
    with pytest.raises(ConfigError, match="too large"):
        check_seed(2**64, "seed")
    with pytest.raises((RuntimeError, ValueError), match="Overflow"):
        torch.Generator("cpu").manual_seed(2**64)


@pytest.mark.parametrize(("seed", "why"), [("18446744073709551616", "too large"), ("1e30", "too large"),
                                           ("-5", "negative"), ("seven", "not an integer")])
def test_benchmark_seed_outside_the_range_names_the_row(tmp_path, seed, why):
    (tmp_path / "mine.csv").write_text(f"prompt,seed\na cat,1\na dog,{seed}\n")
    spec = {"name": "mine", "version": 1, "source": {"file": "mine.csv"},
            "columns": {"prompt": "prompt", "seed": "seed"}}
    with pytest.raises(ConfigError) as err:
        check_benchmarks({"target": spec}, str(tmp_path))
    msg = str(err.value)
    assert "mine.csv, row 2, column 'seed'" in msg and why in msg and "0 <= seed < 2**64" in msg, msg


def test_toy_benchmark_seed_base_outside_the_range():
    from evaluation.benchmarks import load_benchmark

    spec = {"name": "t", "version": 1, "source": {"generator": "toy", "template": "a {shape}",
                                                  "seed_base": 2**64 - 1, "seeds_per_prompt": 2}}
    with pytest.raises(ValueError, match=r"0 <= seed < 2\*\*64"):
        load_benchmark(spec)


# --- 3. a local model folder with a corrupt or pickled file ----------------------------------------------------

class _RunsCode:
    """What a pickled file may hold: unpickling it calls a function of the file's choosing."""

    def __reduce__(self):
        return (print, ("code from the weights file ran",))


def _real_model_with_folder(folder):
    # the asset checklist comes after the config checks, so the rest of the run must be valid for a real model
    return ["model=sd14", "concept=church", "benchmark=imagenette", f"model.id={folder}"]


def test_corrupt_file_in_a_local_model_folder(outputs, tmp_path, no_model, tiny_pipe_dir):
    folder = tmp_path / "my-sd"
    shutil.copytree(tiny_pipe_dir, folder)
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[:1000])  # an interrupted copy
    msg = _refused(_real_model_with_folder(folder), tmp_path)
    assert str(unet) in msg and "truncated or corrupt" in msg and "save_pretrained" in msg, msg
    assert "huggingface-cli download" not in msg


def test_pickled_file_in_a_local_model_folder(outputs, tmp_path, no_model, tiny_pipe_dir, capsys):
    folder = tmp_path / "my-sd"
    shutil.copytree(tiny_pipe_dir, folder)
    st = folder / "text_encoder" / "model.safetensors"
    state = load_file(st)
    st.unlink()
    state["hook"] = _RunsCode()
    torch.save(state, folder / "text_encoder" / "pytorch_model.bin")  # what from_pretrained falls back to
    msg = _refused(_real_model_with_folder(folder), tmp_path)
    assert str(folder / "text_encoder" / "pytorch_model.bin") in msg and "pickled" in msg, msg
    assert "save_pretrained" in msg and "huggingface-cli download" not in msg
    assert "code from the weights file ran" not in capsys.readouterr().out


# --- 6. outputs that is a file, results.jsonl that is a folder -------------------------------------------------

def test_outputs_path_that_is_a_file(tmp_path, no_model, micro):
    blocker = tmp_path / "outputs"
    blocker.write_text("not a folder")
    msg = _refused(micro + [f"paths.outputs={blocker}"], tmp_path)
    assert f"paths.outputs={blocker} is a file" in msg and "$CAD_OUTPUTS" in msg, msg
    msg = _refused(micro + [f"paths.outputs={blocker / 'sub'}"], tmp_path)
    assert "cannot be created" in msg and f"{blocker} is a file" in msg, msg


@pytest.mark.parametrize("task", ["erase_eval", "fidelity"])
def test_results_table_that_is_a_folder(outputs, tmp_path, no_model, micro, task):
    (outputs / "results.jsonl").mkdir(parents=True)
    msg = _refused(micro + [f"task={task}"], tmp_path)
    assert f"{outputs / 'results.jsonl'} is a folder" in msg and "appends its result rows" in msg, msg


def test_outputs_file_on_the_command_line(tmp_path):
    """Hydra makes the run folder under paths.outputs before the task runs: the check comes first there too."""
    blocker = tmp_path / "outputs"
    blocker.write_text("not a folder")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run([sys.executable, "-m", "experiments.run", f"paths.outputs={blocker}"], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 2, out.stderr
    assert f"paths.outputs={blocker} is a file" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert blocker.read_text() == "not a folder"


def test_a_new_outputs_folder_is_fine(tmp_path):
    check_outputs(tmp_path / "not" / "yet" / "there")
    assert not (tmp_path / "not").exists()  # checked, not created: the run creates it when it writes
