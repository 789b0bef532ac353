"""Memory modes are a speed/memory choice, not another estimator: `fast` and `low` give the same scores to
float32 summation order on every family; `low` restores the model's flags, keeps at most one half-precision
gradient tensor alive, and the prompts are encoded once with the text encoders off the accelerator."""

from __future__ import annotations

import pytest
import torch

from cad import attribute, tiny
from cad.memory import MODES, attention_for_gradients, checkpointing, offload_targets, resolve, settings

BUILD = {
    "sd": lambda: tiny.build_tiny_pipeline(0),
    "sdxl": lambda: tiny.build_tiny_sdxl_pipeline(0),
    "sd3": lambda: tiny.build_tiny_sd3_pipeline(0),
    "flux": lambda: tiny.build_tiny_flux_pipeline(0),
}
# Chunked trajectories and recomputed activations change only the order float32 sums are taken in:
# |low - fast| <= 1e-4 * max|alpha| + 1e-9 per weight (seen: ~1e-7 relative on this CPU).
RTOL = 1e-4


def _close(a, b):
    for n in a.scores:
        scale = float(a.scores[n].abs().max())
        torch.testing.assert_close(b.scores[n], a.scores[n], rtol=0, atol=RTOL * scale + 1e-9, msg=n)


@pytest.mark.parametrize("family", sorted(BUILD))
def test_fast_and_low_agree_on_every_family(family):
    pipe = BUILD[family]()
    kw = dict(steps=2, num_samples=3, seed=0, progress=False, guidance=3.0)
    fast = attribute(pipe, "a photo of a cat", memory="fast", **kw)
    low = attribute(pipe, "a photo of a cat", memory="low", **kw)
    assert fast.meta["memory"] == "fast" and low.meta["memory"] == "low"
    _close(fast, low)
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    assert not denoiser.is_gradient_checkpointing  # the model's own flag restored


def test_restart_and_amplify_agree_across_modes():
    pipe = BUILD["sd"]()
    kw = dict(steps=2, num_samples=2, seed=0, progress=False)
    _close(attribute(pipe, "a cat", estimator="restart", memory="fast", **kw),
           attribute(pipe, "a cat", estimator="restart", memory="low", **kw))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _close(attribute(pipe, "a cat", objective="amplify", images=images, memory="fast", **kw),
           attribute(pipe, "a cat", objective="amplify", images=images, memory="low", **kw))


def test_low_holds_one_half_gradient_at_a_time():
    pipe = BUILD["sd"]().to(torch.bfloat16)
    params = dict(pipe.unet.named_parameters())
    from cad import get_space

    space = get_space("ff").select(pipe.unet)
    live, calls = [], []

    def count(p):  # registered before cad's own hook, so it sees the gradient autograd just wrote
        calls.append(1)
        live.append(sum(q.grad is not None for q in space.values()))

    handles = [p.register_post_accumulate_grad_hook(count) for p in space.values()]
    try:
        low = attribute(pipe, "a cat", steps=2, num_samples=2, progress=False, memory="low")
    finally:
        for h in handles:
            h.remove()
    assert calls and max(live) == 1  # never a full set of bf16 gradients, only the one being folded
    assert all(p.grad is None for p in params.values())  # nothing left behind
    fast = attribute(pipe, "a cat", steps=2, num_samples=2, progress=False, memory="fast")
    for n in fast.scores:  # bf16 forward passes: agreement at bf16's precision
        scale = float(fast.scores[n].abs().max())
        torch.testing.assert_close(low.scores[n], fast.scores[n], rtol=0, atol=0.02 * scale + 1e-9)


def test_checkpointing_is_on_during_the_passes_only():
    pipe = BUILD["sd"]()
    seen = []
    h = pipe.unet.register_forward_pre_hook(lambda m, a: seen.append(m.is_gradient_checkpointing))
    try:
        attribute(pipe, "a cat", steps=1, progress=False, memory="low")
        attribute(pipe, "a cat", steps=1, progress=False, memory="fast")
    finally:
        h.remove()
    assert seen[0] is True and seen[-1] is False
    assert not pipe.unet.is_gradient_checkpointing
    pipe.unet.enable_gradient_checkpointing()  # a user's own setting survives
    with checkpointing(pipe.unet, False):
        assert pipe.unet.is_gradient_checkpointing
    attribute(pipe, "a cat", steps=1, progress=False, memory="low")
    assert pipe.unet.is_gradient_checkpointing


def test_prompts_encoded_once_then_no_encoder_runs_during_the_passes():
    pipe = BUILD["sd"]()
    calls = []
    h = pipe.text_encoder.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        attribute(pipe, "a cat", base_prompt="", negative_prompt="", steps=3, progress=False)
    finally:
        h.remove()
    assert len(calls) == 2  # the prompt and the base prompt, once each, not once per step


def test_offload_targets_only_modules_on_the_accelerator():
    pipe = BUILD["sd"]()
    modules = {"text_encoder": pipe.text_encoder, "vae": pipe.vae, "absent": None}
    assert offload_targets(modules, torch.device("cpu")) == []  # a CPU run moves nothing
    # on an accelerator, modules found there go to the CPU; here they sit on the CPU, so none matches cuda
    assert offload_targets(modules, torch.device("cuda", 0)) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_text_encoders_leave_the_gpu_during_the_passes_and_come_back():
    pipe = BUILD["sd"]().to("cuda")
    where = []
    h = pipe.unet.register_forward_pre_hook(lambda m, a: where.append((pipe.text_encoder.device.type,
                                                                       pipe.vae.device.type)))
    try:
        attribute(pipe, "a cat", steps=2, progress=False)
    finally:
        h.remove()
    assert where and all(w == ("cpu", "cpu") for w in where)
    assert pipe.text_encoder.device.type == "cuda" and pipe.vae.device.type == "cuda"


def test_modes_and_resolution():
    assert MODES == ("auto", "fast", "low")
    assert settings("low").micro_batch == 1 and settings("low", 4).micro_batch == 4
    assert settings("fast").micro_batch is None and not settings("fast").checkpointing
    assert resolve("auto") == "fast"  # no planner verdict (a CPU): the fastest
    assert resolve("auto", fits=lambda m: m == "low") == "low"
    with pytest.raises(ValueError, match="unknown memory mode"):
        resolve("tiny")


def test_gradient_passes_on_cuda_leave_out_cudnn_attention():
    """cuDNN's fused attention failed FLUX's backward on an H200; on CUDA the passes use the other SDPA kernels."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention_for_gradients("cuda:0"):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with attention_for_gradients("cpu"):  # nothing changes off CUDA
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
