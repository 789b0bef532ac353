"""A local model folder with a file that does not read: the error names that file and says how to re-save it,
never "download the model" (advice only a hub id can use)."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from cad import ModelLoadError, load_pipeline
from cad.weight_files import folder_problems

UNET = "unet/diffusion_pytorch_model.safetensors"


class _RunsCode:
    """What a pickled file may hold: unpickling it calls a function of the file's choosing."""

    def __reduce__(self):
        return (print, ("code from the weights file ran",))


def truncated(src, dst):
    shutil.copytree(src, dst)
    data = (dst / UNET).read_bytes()
    (dst / UNET).write_bytes(data[: len(data) // 2])  # an interrupted copy
    return dst / UNET


def pickled(src, dst):
    shutil.copytree(src, dst)
    state = load_file(dst / UNET)
    (dst / UNET).unlink()
    state["extra"] = _RunsCode()
    torch.save(state, dst / "unet" / "diffusion_pytorch_model.bin")  # the .bin from_pretrained falls back to
    return dst / "unet" / "diffusion_pytorch_model.bin"


def test_a_readable_folder_has_no_problems(tiny_pipe_dir):
    assert folder_problems(tiny_pipe_dir) == []


@pytest.mark.parametrize(("damage", "what"), [(truncated, "truncated"), (pickled, "pickled")])
def test_the_unreadable_file_is_named_with_the_fix(tiny_pipe_dir, tmp_path, damage, what, capsys):
    bad = damage(tiny_pipe_dir, tmp_path / "sd-folder")
    problems = folder_problems(tmp_path / "sd-folder")
    assert len(problems) == 1 and problems[0].startswith(f"{bad}: ") and what in problems[0], problems
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(tmp_path / "sd-folder")
    msg = str(err.value)
    assert str(bad) in msg and what in msg and "save_pretrained" in msg, msg
    assert "huggingface-cli download" not in msg and "network" not in msg, msg
    assert "code from the weights file ran" not in capsys.readouterr().out


def test_a_corrupt_config_is_named(tiny_pipe_dir, tmp_path):
    folder = tmp_path / "sd-folder"
    shutil.copytree(tiny_pipe_dir, folder)
    (folder / "vae" / "config.json").write_text('{"block_out_channels": [32, ')
    problems = folder_problems(folder)
    assert len(problems) == 1 and problems[0].startswith(f"{folder / 'vae' / 'config.json'}: not valid JSON")
