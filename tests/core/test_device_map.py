"""model.device_map=balanced: cad hands diffusers' pipeline-level device map to from_pretrained, leaves the
pipeline where the map put it, refuses it clearly before any weights load where no GPU is visible (diffusers
would quietly load it all on the CPU) and in several processes, and attributes across the GPUs (gpu-marked)."""

from __future__ import annotations

import diffusers
import pytest
import torch

from cad import attribute
from cad.backbones import load
from cad.backbones.base import ModelLoadError


@pytest.fixture()
def calls(monkeypatch):
    """from_pretrained's keyword arguments, as if GPUs were visible (the real load then runs without the map)."""
    seen = []
    real = diffusers.StableDiffusionPipeline.from_pretrained.__func__

    def spy(cls, *args, **kw):
        seen.append(dict(kw))
        kw.pop("device_map", None)  # this CPU has no GPUs to spread the components over
        return real(cls, *args, **kw)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained", classmethod(spy))
    return seen


def test_device_map_reaches_from_pretrained(tiny_pipe_dir, calls, monkeypatch):
    moved = []
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "to", lambda self, *a, **k: moved.append(a) or self)
    bb = load(tiny_pipe_dir, device="cuda", device_map="balanced")
    assert calls[0]["device_map"] == "balanced" and not moved  # the map places it; no .to(device) after
    assert bb.device == bb.denoiser.device
    load(tiny_pipe_dir)
    assert "device_map" not in calls[1]  # without the setting diffusers gets no device_map at all


def test_the_runner_passes_model_device_map(tiny_pipe_dir, calls, monkeypatch):
    import cad.distributed
    from experiments.models import load_model

    model = {"id": str(tiny_pipe_dir), "name": "tiny", "device_map": "balanced"}
    loaded = load_model(model, device="cpu")
    assert calls[0]["device_map"] == "balanced" and loaded.backbone.family == "sd"
    monkeypatch.setattr(cad.distributed, "world", lambda: cad.distributed.World(0, 2, 0))
    with pytest.raises(ModelLoadError, match="one process"):  # torchrun ranks would all map onto the same GPUs
        load_model(model, device="cpu")
    assert len(calls) == 1


def test_balanced_without_a_gpu_names_the_fix_before_loading(tiny_pipe_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_pretrained",
                        classmethod(lambda cls, *a, **k: pytest.fail("loaded weights before refusing")))
    with pytest.raises(ModelLoadError, match="no CUDA device is visible.*model.device_map=null"):
        load(tiny_pipe_dir, device_map="balanced")
    with pytest.raises(ModelLoadError, match="model.device_map=balanced"):
        load(tiny_pipe_dir, device_map="sequential")


def test_components_with_dispatch_hooks_attribute_as_plain_ones(tiny_pipe_factory):
    """What device_map=balanced gives every component (diffusers' load_sub_model: accelerate's dispatch_model with
    force_hooks=True, inputs moved to each component's device by an AlignDevicesHook), here on the one CPU: cad's
    prompt encoding, gradient passes (checkpointed in `low`) and restores work through the hooks and give the
    plain pipeline's scores. Spreading over two GPUs is the gpu-marked test below."""
    from accelerate import dispatch_model

    plain, hooked = tiny_pipe_factory(0), tiny_pipe_factory(0)
    for name in ("unet", "text_encoder", "vae"):
        dispatch_model(getattr(hooked, name), device_map={"": "cpu"}, force_hooks=True)
    assert hasattr(hooked.unet, "_hf_hook") and hasattr(hooked.text_encoder, "_hf_hook")
    for memory in ("fast", "low"):
        kw = dict(steps=2, num_samples=2, seed=0, progress=False, memory=memory)
        a, b = attribute(plain, "a photo of a cat", **kw), attribute(hooked, "a photo of a cat", **kw)
        for n in a.scores:  # separately built models: agreement to kernel order, not bits
            scale = float(a.scores[n].abs().max())
            torch.testing.assert_close(b.scores[n], a.scores[n], rtol=0, atol=1e-4 * scale + 1e-12, msg=n)
    # the weights stayed on their device (no offload to meta) and their flags are back as they were
    assert all(p.device.type == "cpu" for p in hooked.unet.parameters())
    assert [p.requires_grad for p in hooked.unet.parameters()] == [p.requires_grad for p in plain.unet.parameters()]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2+ CUDA devices")
def test_balanced_pipeline_attributes_across_gpus(tiny_pipe_dir):
    spread = load(tiny_pipe_dir, device_map="balanced")
    assert getattr(spread.pipe, "hf_device_map", None)  # diffusers placed the components
    one = load(tiny_pipe_dir, device="cuda:0")
    kw = dict(steps=2, num_samples=2, seed=0, progress=False)
    a, b = attribute(one, "a photo of a cat", **kw), attribute(spread, "a photo of a cat", **kw)
    for n in a.scores:  # other devices, same float32 arithmetic: agreement to kernel order
        scale = float(a.scores[n].abs().max())
        torch.testing.assert_close(b.scores[n], a.scores[n], rtol=0, atol=1e-4 * scale + 1e-12, msg=n)
