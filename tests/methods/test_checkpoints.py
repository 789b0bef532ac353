"""cad.checkpoints: erased denoisers in their published formats load into the tiny SD UNet, bit for bit.

Each test writes an "erased" UNet (the base UNet with every tensor perturbed) into tmp_path in one format,
loads it with load_denoiser_checkpoint and compares fingerprints. The CompVis/LDM file is made with a small
diffusers->LDM key map written here, in the test only: the installed diffusers (0.42.1) ships no public
diffusers->LDM conversion (only the repository script scripts/convert_diffusers_to_original_stable_diffusion.py),
while the loader under test converts back with diffusers' public from_single_file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re

import pytest
import torch
from safetensors.torch import save_file

from cad.backbones import module_fingerprint, wrap
from cad.checkpoints import (
    CheckpointFormatError,
    PickledCheckpointError,
    detect_format,
    load_denoiser_checkpoint,
)


@pytest.fixture(scope="module")
def base_pipe():
    from cad.tiny import build_tiny_pipeline

    return build_tiny_pipeline(0, image_size=16)


@pytest.fixture()
def bb(base_pipe):
    """The tiny pipeline as a Backbone, restored to its base weights after each test."""
    base = {k: v.clone() for k, v in base_pipe.unet.state_dict().items()}
    yield wrap(base_pipe)
    base_pipe.unet.load_state_dict(base)


@pytest.fixture(scope="module")
def erased(base_pipe):
    """An "erased" UNet: the base with every tensor moved, so any tensor left unloaded shows."""
    unet = copy.deepcopy(base_pipe.unet)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return unet


def _state(module):
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- diffusers-named state dicts ---------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_full_state_dict_loads_exactly(bb, erased, tmp_path, suffix):
    path = tmp_path / f"rece-unet{suffix}"
    if suffix == ".safetensors":
        save_file(_state(erased), path)
    else:
        torch.save(_state(erased), path)
    assert detect_format(path) == "diffusers_state_dict"
    report = load_denoiser_checkpoint(bb, path)
    n = len(erased.state_dict())
    assert report == {"format": "diffusers_full", "loaded": n, "kept_from_base": 0, "skipped": [],
                      "path": str(path), "sha256": _sha(path)}
    assert module_fingerprint(bb.denoiser) == module_fingerprint(erased)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_file_is_cast_to_the_model_dtype(bb, erased, tmp_path, dtype):
    """ConceptPrune saves fp16 UNets: the values arrive rounded, the model stays float32."""
    path = tmp_path / "conceptprune.pt"
    torch.save({k: v.to(dtype) for k, v in _state(erased).items()}, path)
    load_denoiser_checkpoint(bb, path)
    for k, v in bb.denoiser.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, erased.state_dict()[k].to(dtype).float()), k


def test_partial_attn2_kv_keeps_every_other_base_tensor(bb, erased, tmp_path):
    """UCE's safetensors hold only the cross-attention K/V projections."""
    base = _state(bb.denoiser)
    kv = {k: v for k, v in _state(erased).items() if re.search(r"attn2\.to_[kv]\.weight$", k)}
    assert kv
    path = tmp_path / "uce-erased.safetensors"
    save_file(kv, path)
    assert detect_format(path) == "diffusers_state_dict"
    report = load_denoiser_checkpoint(bb, path)
    assert report["format"] == "diffusers_partial"
    assert report["loaded"] == len(kv) and report["kept_from_base"] == len(base) - len(kv)
    now = bb.denoiser.state_dict()
    for k in base:
        assert torch.equal(now[k], kv[k] if k in kv else base[k]), k


def test_unknown_names_and_bad_shapes_are_refused_before_any_write(bb, erased, tmp_path):
    before = module_fingerprint(bb.denoiser)
    kv = {k: v for k, v in _state(erased).items() if "attn2.to_k" in k}
    extra = dict(kv, **{"down_blocks.0.attentions.0.no_such.weight": torch.zeros(2)})
    path = tmp_path / "extra.safetensors"
    save_file(extra, path)
    with pytest.raises(CheckpointFormatError, match="no_such"):
        load_denoiser_checkpoint(bb, path)
    assert module_fingerprint(bb.denoiser) == before
    report = load_denoiser_checkpoint(bb, path, strict_names=False)
    assert report["skipped"] == ["down_blocks.0.attentions.0.no_such.weight"] and report["loaded"] == len(kv)

    name = next(iter(kv))
    wrong = tmp_path / "wrong-shape.safetensors"
    save_file({name: torch.zeros(3, 3)}, wrong)
    bb.pipe.unet.load_state_dict(_state(erased))
    before = module_fingerprint(bb.denoiser)
    with pytest.raises(CheckpointFormatError, match=re.escape(name)):
        load_denoiser_checkpoint(bb, wrong)
    assert module_fingerprint(bb.denoiser) == before


# ---- diffusers folders ----------------------------------------------------------------------------------

def test_unet_folder_and_pipeline_folder(bb, erased, tmp_path):
    unet_dir = tmp_path / "pipe" / "unet"
    erased.save_pretrained(unet_dir)
    # a pipeline folder as far as the loader reads it: model_index.json beside unet/
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    base = _state(bb.denoiser)
    for path in (unet_dir, tmp_path / "pipe"):
        bb.denoiser.load_state_dict(base)  # back to the base, so the second load must write too
        assert detect_format(path) == "diffusers_folder"
        report = load_denoiser_checkpoint(bb, path)
        assert report["format"] == "diffusers_folder" and report["kept_from_base"] == 0
        assert module_fingerprint(bb.denoiser) == module_fingerprint(erased)


# ---- CompVis / LDM ----------------------------------------------------------------------------------------

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _to_ldm(unet) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel names -> CompVis openaimodel.UNetModel names (test-only key map)."""
    lpb = unet.config.layers_per_block
    state = _state(unet)
    up_has_attn = [any(k.startswith(f"up_blocks.{i}.attentions.") for k in state) for i in range(len(unet.up_blocks))]

    def resnet(rest):
        head, _, tail = rest.partition(".")
        return f"{_RESNET.get(head, head)}.{tail}"

    out = {}
    for k, v in state.items():
        new = next((ldm + k[len(d):] for d, ldm in _TOP.items() if k.startswith(d + ".")), None)
        if m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", k):
            side, i, part, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
            rest = resnet(rest) if part == "resnets" else rest
            slot = 0 if part == "resnets" else 1
            if part == "downsamplers":
                new = f"input_blocks.{(lpb + 1) * (i + 1)}.0.op.{rest.removeprefix('conv.')}"
            elif part == "upsamplers":
                new = f"output_blocks.{(lpb + 1) * i + lpb}.{2 if up_has_attn[i] else 1}.{rest}"
            elif side == "down":
                new = f"input_blocks.{(lpb + 1) * i + j + 1}.{slot}.{rest}"
            else:
                new = f"output_blocks.{(lpb + 1) * i + j}.{slot}.{rest}"
        elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", k):
            new = f"middle_block.{2 * int(m[2])}.{resnet(m[3])}" if m[1] == "resnets" else f"middle_block.1.{m[3]}"
        assert new is not None, k
        out[new] = v
    return out


def test_ldm_ckpt_under_state_dict_converts_with_diffusers(bb, erased, tmp_path):
    """ESD's CompVis checkpoint: the whole LatentDiffusion state dict (VAE and text encoder too), here under a
    Lightning-style "state_dict" entry."""
    ldm = {f"model.diffusion_model.{k}": v for k, v in _to_ldm(erased).items()}
    ldm["first_stage_model.decoder.conv_in.weight"] = torch.zeros(4, 4, 3, 3)
    ldm["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(8)
    path = tmp_path / "compvis-word_VanGogh-method_xattn.ckpt"
    torch.save({"state_dict": ldm, "global_step": 1000}, path)
    assert detect_format(path) == "ldm"
    report = load_denoiser_checkpoint(bb, path)
    assert report["format"] == "ldm" and report["loaded"] == len(erased.state_dict())
    assert report["kept_from_base"] == 0 and report["sha256"] == _sha(path)
    assert module_fingerprint(bb.denoiser) == module_fingerprint(erased)


def test_bare_fp16_ldm_safetensors(bb, erased, tmp_path):
    path = tmp_path / "diffusion_model.safetensors"
    save_file({k: v.half() for k, v in _to_ldm(erased).items()}, path)
    assert detect_format(path) == "ldm"
    load_denoiser_checkpoint(bb, path)
    for k, v in bb.denoiser.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, erased.state_dict()[k].half().float()), k


def test_ldm_missing_a_tensor_is_refused(bb, erased, tmp_path):
    ldm = {f"model.diffusion_model.{k}": v for k, v in _to_ldm(erased).items() if k != "out.2.weight"}
    path = tmp_path / "short.ckpt"
    torch.save(ldm, path)
    before = module_fingerprint(bb.denoiser)
    with pytest.raises(CheckpointFormatError, match="207 model.diffusion_model tensors"):
        load_denoiser_checkpoint(bb, path)
    # without the count check, diffusers' conversion itself leaves the tensor unfilled: refused too
    with pytest.raises(CheckpointFormatError, match="lacks some of this model's tensors"):
        load_denoiser_checkpoint(bb, path, strict_names=False)
    assert module_fingerprint(bb.denoiser) == before


def test_ldm_of_another_architecture_is_refused(bb, erased, tmp_path):
    ldm = {f"model.diffusion_model.{k}": v for k, v in _to_ldm(erased).items()}
    ldm["model.diffusion_model.out.2.weight"] = torch.zeros(8, *ldm["model.diffusion_model.out.2.weight"].shape[1:])
    path = tmp_path / "other-arch.ckpt"
    torch.save(ldm, path)
    with pytest.raises(CheckpointFormatError, match="conv_out.weight") as err:
        load_denoiser_checkpoint(bb, path)
    assert "ignore_mismatched_sizes" not in str(err.value)


# ---- refusals: pickled code, garbage, foreign keys ------------------------------------------------------

def test_pickled_module_is_refused_with_the_conversion_hint(bb, erased, tmp_path):
    path = tmp_path / "whole-unet.pt"
    torch.save(erased, path)  # a whole pickled module, as some releases are
    with pytest.raises(PickledCheckpointError) as err:
        detect_format(path)
    msg = str(err.value)
    assert "UNet2DConditionModel" in msg and "save_file" in msg and "state_dict()" in msg
    assert "weights_only=False" not in msg
    before = module_fingerprint(bb.denoiser)
    with pytest.raises(PickledCheckpointError):
        load_denoiser_checkpoint(bb, path)
    assert module_fingerprint(bb.denoiser) == before


def test_files_that_fit_no_format_fail_in_detect_format(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8).numpy().tobytes())
    legacy_garbage = tmp_path / "pickle-garbage.pt"
    legacy_garbage.write_bytes(b"\x80\x02" + garbage.read_bytes())
    random_keys = tmp_path / "random-keys.safetensors"
    save_file({"foo.bar": torch.zeros(2), "lora_up.weight": torch.zeros(2)}, random_keys)
    ints = tmp_path / "ints.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, dtype=torch.int64)}, ints)
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_a_dict)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    for path in (garbage, legacy_garbage, random_keys, ints, not_a_dict, empty_dir, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointFormatError, match="expected one of these layouts") as err:
            detect_format(path)
        assert not isinstance(err.value, PickledCheckpointError), path
        assert "model.diffusion_model" in str(err.value) and "diffusers" in str(err.value)
