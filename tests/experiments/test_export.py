"""Export: a run's edited model as a diffusers folder with a Hub model card, from the command line or with
export=true; the folder loads in plain diffusers and renders with the edit's weights. The upload is a network
test."""

from __future__ import annotations

import os

import pytest
import torch

from experiments.config import compose_config
from experiments.export import ExportError, export_run, main
from experiments.run import run_from_config


@pytest.fixture()
def exported_run(micro, toy, tmp_path):
    """A micro toy run with export=true: (run folder, payload)."""
    cfg = compose_config(micro + ["export=true", "method.controls=[]"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from omegaconf import OmegaConf

    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))  # as experiments.run writes it
    return run_dir, run_from_config(cfg, run_dir)


def test_exported_folder_loads_in_plain_diffusers_with_the_edit(exported_run, micro_kit, tmp_path):
    from diffusers import DiffusionPipeline
    from huggingface_hub import ModelCard

    from cad.edits import load_edit

    run_dir, payload = exported_run
    folder = run_dir / "model"
    assert payload["export"] == str(folder) and (folder / "model_index.json").is_file()
    pipe = DiffusionPipeline.from_pretrained(folder)
    original = DiffusionPipeline.from_pretrained(micro_kit.pipeline_path)
    edit = load_edit(run_dir.parent / "outputs" / "edits" / payload["run"]["model"]
                     / payload["edits"]["edited"]["fingerprint"])
    params, before = dict(pipe.unet.named_parameters()), dict(original.unet.named_parameters())
    assert edit.masks, "the toy edit zeroes some entries"
    for name, mask in edit.masks.items():
        assert torch.all(params[name].detach()[mask] == 0)  # the zeroed entries are zero in the exported UNet
        assert not torch.equal(params[name].detach(), before[name].detach())
        assert torch.equal(params[name].detach()[~mask], before[name].detach()[~mask])
    out = pipe("a diamond", num_inference_steps=2, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3)

    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and "cad" in data["tags"] and "concept-erasure" in data["tags"]
    assert "base_model" not in data  # the toy model is no hub id
    assert data["cad"]["edit_fingerprint"] == payload["edits"]["edited"]["fingerprint"]
    assert data["cad"]["method"] == "cad_erase" and data["cad"]["concept"] == "diamond"
    assert data["cad"]["ratio"] == payload["run"]["ratio"]
    text = card.text
    assert "toy_objects/acc_target" in text and "toy_objects@v1" in text and '"steps": 3' in text
    assert '"prompt": "a diamond"' in text and '"base_prompt": "a circle"' in text


def test_cli_exports_a_run_folder(exported_run, tmp_path, capsys):
    run_dir, payload = exported_run
    out = tmp_path / "cli-export"
    assert main([str(run_dir), "--out", str(out)]) == 0
    assert (out / "unet").is_dir() and (out / "README.md").read_text().startswith("---\n")
    assert (out / "cad_edit.json").is_file()
    with pytest.raises(SystemExit):  # an existing folder is never overwritten unasked
        main([str(run_dir), "--out", str(out)])
    assert "exists" in capsys.readouterr().err
    with pytest.raises(ExportError, match="no config.yaml"):
        export_run(tmp_path)


def test_hub_metadata_of_a_real_model():
    from huggingface_hub import ModelCard

    from cad.edits import Edit
    from experiments.export import card_metadata

    edit = Edit({"w": torch.tensor([[True, False]])}, {})
    cfg = {"model": {"id": "CompVis/stable-diffusion-v1-4", "name": "sd14"}}
    payload = {"run": {"method": "uce", "concept": "van_gogh", "model": "sd14"}}
    meta = card_metadata(cfg, payload, edit)
    assert meta["base_model"] == "CompVis/stable-diffusion-v1-4" and meta["license"] == "creativeml-openrail-m"
    import yaml

    card = ModelCard(f"---\n{yaml.safe_dump(meta)}---\n# x\n")
    assert card.data.base_model == "CompVis/stable-diffusion-v1-4" and card.data.library_name == "diffusers"


def test_export_that_cannot_work_is_refused_before_anything_loads(outputs):
    from experiments.validate import ConfigError, check_run

    with pytest.raises(ConfigError, match="nothing to export"):
        check_run(compose_config(["method=none", "export=true"]))
    with pytest.raises(ConfigError, match="not a Hub repo id"):
        check_run(compose_config(["push_to_hub=no-owner"]))
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):  # the tests run offline
        check_run(compose_config(["push_to_hub=me/toy-no-diamond"]))
    assert not (outputs / "images").exists()


@pytest.mark.network
def test_push_to_hub(exported_run):
    """Needs HF_TOKEN and CAD_TEST_HUB_REPO (a repo the token may write) and internet."""
    repo = os.environ.get("CAD_TEST_HUB_REPO")
    if not repo or not os.environ.get("HF_TOKEN"):
        pytest.skip("set HF_TOKEN and CAD_TEST_HUB_REPO to test the upload")
    from huggingface_hub import HfApi

    from experiments.export import push_folder

    run_dir, _ = exported_run
    url = push_folder(run_dir / "model", repo)
    assert url.endswith(repo) and "README.md" in HfApi().list_repo_files(repo)
