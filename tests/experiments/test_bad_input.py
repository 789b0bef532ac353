"""Bad input stops before any model is loaded, with an error that names the fix."""

from __future__ import annotations

import json
import time

import pytest
import torch
from hydra.errors import HydraException
from safetensors.torch import save_file

from experiments.config import compose_config
from experiments.run import run_from_config
from experiments.validate import ConfigError, check_benchmarks, load_concept


def _run(cfg, tmp_path):
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        run_from_config(cfg, tmp_path / "run")
    assert time.perf_counter() - started < 5, "validation must come before any expensive step"
    assert not (tmp_path / "outputs" / "attributions").exists()
    return str(err.value)


@pytest.mark.parametrize(("override", "listed"), [("concept=unicorn", "church"), ("model=sd99", "sd14"),
                                                   ("benchmark=imagenet21k", "imagenette")])
def test_unknown_group_option_lists_the_choices(override, listed):
    with pytest.raises(HydraException) as err:
        compose_config([override])
    assert "Available options" in str(err.value) and listed in str(err.value)


def test_unknown_concept_by_name():
    with pytest.raises(ConfigError, match="choose one of: .*church"):
        load_concept("unicorn")


@pytest.mark.parametrize("ratio", [1.5, -0.1])
def test_ratio_outside_unit_interval(outputs, tmp_path, ratio):
    msg = _run(compose_config([f"method.ratio={ratio}"]), tmp_path)
    assert "[0, 1]" in msg and "method.ratio=0.01" in msg


def test_toy_concept_on_real_model(outputs, tmp_path):
    msg = _run(compose_config(["model=sd14"]), tmp_path)
    assert "concept=church" in msg


def test_missing_checkpoint(outputs, tmp_path):
    msg = _run(compose_config(["model.checkpoint=/nowhere/esd-unet.safetensors"]), tmp_path)
    assert "does not exist" in msg and "state dict" in msg


def test_missing_model_folder(outputs, tmp_path, metric_libraries):
    msg = _run(compose_config(["experiment=object_erasure", "model=sd14", "model.id=./no/such/sd-folder"]), tmp_path)
    assert "hub id" in msg and "no/such/sd-folder" in msg


def test_scores_made_for_another_model(outputs, tmp_path):
    folder = tmp_path / "scores"
    folder.mkdir()
    save_file({"w": torch.zeros(2)}, str(folder / "scores.safetensors"))
    (folder / "meta.json").write_text(json.dumps({"model_id": "CompVis/stable-diffusion-v1-4"}))
    cfg = compose_config(["model=sd15", "concept=church", f"attribution.scores={folder}"])
    msg = _run(cfg, tmp_path)
    assert "made for model 'CompVis/stable-diffusion-v1-4'" in msg and "attribution.scores null" in msg
    msg = _run(compose_config([f"attribution.scores={tmp_path}"]), tmp_path)
    assert "no scores.safetensors" in msg


def test_unknown_task_and_bad_shard(outputs, tmp_path):
    assert "task=erase_eval" in _run(compose_config(["task=train"]), tmp_path)
    assert "num_shards" in _run(compose_config(["generation.shard=3", "generation.num_shards=2"]), tmp_path)


def test_benchmark_that_cannot_load(tmp_path):
    spec = {"name": "mine", "version": 1, "source": {"file": "no_such_prompts.csv"},
            "columns": {"prompt": "prompt"}}
    with pytest.raises(ConfigError, match="benchmark 'target'"):
        check_benchmarks({"target": spec}, str(tmp_path))


@pytest.mark.parametrize("granularity", ["row", "tensor", "global"])
@pytest.mark.parametrize("sign", ["positive", "negative", "both"])
def test_every_selection_rule_of_the_core_is_accepted(sign, granularity):
    from experiments.validate import check_method

    cfg = compose_config([f"method.sign={sign}", f"method.granularity={granularity}"])
    check_method(cfg["method"])


def test_unknown_granularity_names_the_choices():
    from experiments.validate import check_method

    cfg = compose_config(["method.granularity=element"])
    with pytest.raises(ConfigError, match="row.*tensor.*global"):
        check_method(cfg["method"])


@pytest.mark.parametrize(("override", "fix"), [
    ("method.retain=[unicorn]", "choose one of: .*church"),
    ("method.retain=[diamond]", "erased concept itself"),
    ("method.retain=everything", "method.retain=siblings"),
    ("method.retain_reduce=median", "mean.*max"),
])
def test_bad_retain_set(outputs, tmp_path, override, fix):
    extra = ["method.retain=[square]"] if "reduce" in override else []
    msg = _run(compose_config([override, *extra]), tmp_path)
    assert __import__("re").search(fix, msg), msg


def test_retain_siblings_resolves_to_the_other_values_of_the_kind():
    from experiments.validate import effective_concept, retain_concepts

    red = effective_concept(load_concept("red"), "toy")
    assert [c["name"] for c in retain_concepts({"retain": "siblings"}, red, "toy")] == [
        "blue", "cyan", "green", "magenta", "yellow"]
    church = effective_concept(load_concept("church"), "sd14")
    names = [c["name"] for c in retain_concepts({"retain": "siblings"}, church, "sd14")]
    assert len(names) == 9 and "church" not in names and "parachute" in names
    # on the toy world a real concept's retain list maps to stand-ins (tench -> circle), never to the target's own
    # stand-in: parachute shares church's (diamond), which is named as the erased concept itself
    toy_church = effective_concept(load_concept("church"), "toy")
    assert [c["name"] for c in retain_concepts({"retain": ["tench"]}, toy_church, "toy")] == ["circle"]
    with pytest.raises(ConfigError, match="erased concept itself"):
        retain_concepts({"retain": ["parachute"]}, toy_church, "toy")


# --- issue 12: every input checked before the model loads ----------------------------------------------------


@pytest.fixture(scope="module")
def metric_libraries():
    """The preflight looks for every metric's weights, importing the libraries that know where they live
    (torchvision, torch-fidelity, open_clip): imported once here, so the time bound of _run measures cad's checks
    rather than a first import on a loaded machine."""
    import open_clip  # noqa: F401
    import torch_fidelity.feature_extractor_inceptionv3  # noqa: F401
    import torchvision.models  # noqa: F401


@pytest.mark.parametrize(("override", "expect"), [
    ("+method.ration=0.01", "did you mean method.ratio"),
    ("+model.guidence=3", "did you mean model.guidance"),
    ("+generation.batchsize=4", "did you mean generation.batch_size"),
    ("+attribution.stpes=3", "did you mean attribution.steps"),
    ("+experiment_nam=x", "did you mean experiment_name"),
    ("+concept.promt=a", "did you mean concept.prompt"),
    ("model.guidance=-5", "model.guidance=-5"),
    ("model.guidance=nan", "finite"),
    ("attribution.guidance=inf", "finite"),
    ("model.steps=0", "at least one step"),
    ("attribution.steps=0", "at least one step"),
    ("generation.batch_size=0", "generation.batch_size=0"),
    ("generation.batch_size=big", "or auto"),
    ("generation.compile=yes", "generation.compile='yes' must be true or false"),
    ("generation.channels_last=1", "generation.channels_last=1 must be auto"),
    ("attribution.num_samples=0", "positive count"),
    ("model.resolution=30", "divisible by the VAE's downsampling factor 4"),
    ("seed=-1", "non-negative integers"),
    ("generation.fixed_seed=1.5", "non-negative integers"),
    ("method.controls=[-3]", "method.controls[0]"),
    ("method.ratio=true", "[0, 1]"),
    ("device=tpu", "device=auto"),
    ("concept.name=../../../x", "concept.name="),
    ("model.name=../evil", "model.name="),
    ("model.name=/abs/path", "model.name="),
    ("experiment_name=a/b", "experiment_name="),
    ("experiment_name=..", "experiment_name="),
    ("benchmark.name=../b", "benchmark.name="),
])
def test_bad_input_stops_before_the_model_loads(outputs, tmp_path, no_model, override, expect):
    msg = _run(compose_config([override]), tmp_path)
    assert expect in msg, msg


def test_real_model_resolution_must_be_a_multiple_of_8(outputs, tmp_path, no_model):
    msg = _run(compose_config(["model=sd14", "concept=church", "model.resolution=500"]), tmp_path)
    assert "factor 8" in msg and "496 or 504" in msg


def test_cuda_on_a_machine_without_cuda(outputs, tmp_path, no_model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    msg = _run(compose_config(["device=cuda"]), tmp_path)
    assert "CUDA is not available" in msg and "device=cpu" in msg


def test_missing_metric_weights_are_found_before_the_model(outputs, tmp_path, no_model, monkeypatch,
                                                           metric_libraries):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = _run(compose_config(["experiment=object_erasure", "model=sd14"]), tmp_path)
    assert "ResNet-50" in msg and "offline" in msg and "Pre-download" in msg


def test_missing_fid_reference_is_found_before_the_model(outputs, tmp_path, no_model, metric_libraries):
    msg = _run(compose_config(["experiment=nudity_erasure", "model=sd14"]), tmp_path)
    assert "fid_reference" in msg
    missing = tmp_path / "no-coco"
    msg = _run(compose_config(["experiment=nudity_erasure", "model=sd14",
                               f"retain.coco30k.meta.fid_reference={missing}"]), tmp_path)
    assert str(missing) in msg and "does not exist" in msg


def test_hand_edited_scores_sidecar_is_refused_before_the_model(outputs, tmp_path, no_model):
    from cad.scores import AttributionScores

    folder = AttributionScores({"w": torch.zeros(2)}, {"model_id": "toy", "unet_fingerprint": "f"}).save(
        tmp_path / "scores")
    (folder / "meta.json").write_text(json.dumps({"model_id": "toy", "unet_fingerprint": "edited"}))
    msg = _run(compose_config([f"attribution.scores={folder}"]), tmp_path)
    assert "disagrees with the identity embedded" in msg
