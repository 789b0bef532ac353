"""Loading pipelines from local folders and hub ids (offline), and the UNet fingerprint."""

from __future__ import annotations

import pytest
import torch

from cad import ModelLoadError, load_pipeline, unet_fingerprint


def test_load_local_folder_with_dtype(tiny_pipe_dir):
    from diffusers import DDIMScheduler

    pipe = load_pipeline(tiny_pipe_dir, dtype="float16")
    assert pipe.unet.dtype == torch.float16
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.safety_checker is None
    assert pipe.config["_name_or_path"] == str(tiny_pipe_dir)


def test_loaded_weights_match_saved(tiny_pipe_dir, tiny_pipe_factory):
    assert unet_fingerprint(load_pipeline(tiny_pipe_dir)) == unet_fingerprint(tiny_pipe_factory(0).unet)


def test_missing_hub_weights_offline_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ModelLoadError, match="CompVis/stable-diffusion-v1-4") as err:
        load_pipeline("CompVis/stable-diffusion-v1-4")
    assert "pass that folder's path as the model" in str(err.value)


def test_bad_options_raise(tiny_pipe_dir):
    with pytest.raises(ValueError, match="dtype"):
        load_pipeline(tiny_pipe_dir, dtype="float8")
    with pytest.raises(ValueError, match="scheduler"):
        load_pipeline(tiny_pipe_dir, scheduler="heun")


def test_fingerprint_changes_with_any_weight(tiny_pipe_factory):
    unet = tiny_pipe_factory(0).unet
    before = unet_fingerprint(unet)
    assert unet_fingerprint(unet) == before
    with torch.no_grad():
        p = dict(unet.named_parameters())["conv_in.bias"]
        old = p[0].clone()
        p[0] = torch.nextafter(old, old + 1)  # the smallest possible change
        assert unet_fingerprint(unet) != before
        p[0] = old
    assert unet_fingerprint(unet) == before
    assert unet_fingerprint(unet.half()) != before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_identity_digest_cast_in_chunks_is_the_whole_cast(dtype):
    from cad.backbones.digests import HALF_CHUNK, _half_digest, _tensor_digest

    # Longer than one chunk, with a ragged tail, values that round differently, non-contiguous too.
    t = (torch.randn(2 * HALF_CHUNK + 5, dtype=torch.float64) * 1e3).to(dtype)
    t[:3] = torch.tensor([float("inf"), 1e-9, 7e4])
    for x in (t, t[: HALF_CHUNK + 1].reshape(-1, 1).expand(-1, 2).t()):
        assert _half_digest(("w", x)) == _tensor_digest(("w", x.to(torch.float16)))
    assert _half_digest(("w", t)) != _half_digest(("v", t))
