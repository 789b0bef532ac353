"""Real denoiser architectures with random weights, and one gradient pass of the attribution on them.

Shared by the planner's coefficient benchmark (CPU, benchmarks/bench_plan.py), the GPU benchmark
(benchmarks/bench_gpu.py) and the planner's accuracy test. The denoiser is called directly with random
conditioning of the real shapes (the text encoders, which leave the accelerator during the gradient passes,
do not enter these figures), and the gradients go through cad's own `Gradients` (cad.objectives), so the
memory measured is what an attribution's gradient pass holds: the float32 sums, the half-precision gradients
(all at once in `fast`, one tensor at a time in `low`) and the activations, under the denoiser's own gradient
checkpointing in `low` (cad.memory).
"""

from __future__ import annotations

import torch

# What the conditioning looks like per architecture: text tokens (SD 3: 77 CLIP + 256 T5; FLUX: T5 tokens).
TEXT_TOKENS = {"sd1": 77, "sd2": 77, "sd2_base": 77, "sdxl": 77, "sd35m": 333, "sd35l": 333, "flux": 256,
               "flux_dev": 512, "toy": 16}


def random_denoiser(arch: str, dtype: torch.dtype, device: str | torch.device = "cpu", seed: int = 0):
    """The named real architecture (cad.architectures) with N(0, 0.02) weights in `dtype` on `device`."""
    model = meta_denoiser(arch).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=gen)
        for b in model.buffers():
            b.zero_()
        # SD 3's sin-cos position table is a buffer computed at init; zero is fine for memory and time
    return model.to(dtype).eval()


def meta_denoiser(arch: str):
    """The architecture on the meta device; "toy" is the committed kit's UNet config (cad/toy/kit)."""
    if arch != "toy":
        from cad.architectures import build_on_meta

        return build_on_meta(arch)
    import json

    import diffusers

    from cad.toy.kit import DEFAULT_KIT

    config = json.loads((DEFAULT_KIT / "pipeline" / "unet" / "config.json").read_text())
    with torch.device("meta"):
        return diffusers.UNet2DConditionModel.from_config(config).eval()


def space_params(model, family: str, every: int = 1) -> dict[str, torch.nn.Parameter]:
    """The family's `ff` space (cad.components); `every=N` keeps every Nth tensor in order, the first always, so a
    CPU measurement holds fewer gradient sums while the backward pass still reaches the first block."""
    from cad.components import get_space

    params = get_space("ff", family).select(model)
    return {n: p for i, (n, p) in enumerate(params.items()) if i % every == 0}


def family_of(arch: str) -> str:
    return {"sd1": "sd", "sd2": "sd", "sd2_base": "sd", "sdxl": "sdxl", "sd35m": "sd3", "sd35l": "sd3",
            "flux": "flux", "flux_dev": "flux", "toy": "sd"}[arch]


def inputs(arch: str, model, batch: int, latent: int, *, text_tokens: int | None = None) -> dict:
    """Keyword arguments of one denoiser call: `batch` samples of `latent` x `latent` latents, random conditioning."""
    p = next(model.parameters())
    dev, dt = p.device, p.dtype
    cfg = model.config
    text = TEXT_TOKENS[arch] if text_tokens is None else text_tokens
    g = None if dev.type == "meta" else torch.Generator(device=dev).manual_seed(1)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=dev, dtype=torch.float32).to(dt)

    if arch in ("flux", "flux_dev"):
        from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

        h = w = latent // 2
        img_ids = FluxPipeline._prepare_latent_image_ids(batch, h, w, dev, dt)
        kw = dict(hidden_states=rnd(batch, h * w, cfg.in_channels), encoder_hidden_states=rnd(batch, text, 4096),
                  pooled_projections=rnd(batch, cfg.pooled_projection_dim),
                  timestep=torch.full([batch], 0.5, device=dev, dtype=dt),
                  img_ids=img_ids, txt_ids=torch.zeros(text, 3, device=dev, dtype=dt), return_dict=False)
        if cfg.guidance_embeds:
            kw["guidance"] = torch.full([batch], 3.5, device=dev, dtype=torch.float32)
        return kw
    if arch in ("sd35m", "sd35l"):
        return dict(hidden_states=rnd(batch, cfg.in_channels, latent, latent),
                    encoder_hidden_states=rnd(batch, text, cfg.joint_attention_dim),
                    pooled_projections=rnd(batch, cfg.pooled_projection_dim),
                    timestep=torch.full([batch], 500.0, device=dev, dtype=dt), return_dict=False)
    kw = dict(sample=rnd(batch, cfg.in_channels, latent, latent), timestep=torch.full([batch], 500, device=dev),
              encoder_hidden_states=rnd(batch, text, cfg.cross_attention_dim), return_dict=False)
    if arch == "sdxl":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": rnd(batch, pooled), "time_ids": rnd(batch, 6)}
    return kw


def gradient_pass(model, params: dict, kw: dict, mode: str) -> None:
    """One gradient pass of the objective's shape: prediction, float32 squared norm, gradients into float32 sums
    through cad.objectives.Gradients, in memory mode `fast` or `low` (checkpointing + streamed half gradients)."""
    from cad.memory import checkpointing
    from cad.memory import settings as memory_settings
    from cad.objectives import Gradients

    mem = memory_settings(mode)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        acc = Gradients(params, stream=mem.stream_half_grads)
        with checkpointing(model, mem.checkpointing):
            pred = model(**kw)[0]
            loss = pred.float().pow(2).flatten(1).sum(1).mean()
            del pred
            acc.add(loss)
            del loss
        acc.result()
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
            p.grad = None


def forward(model, kw: dict) -> None:
    with torch.no_grad():
        model(**kw)


def sequence_length(arch: str, latent: int, text_tokens: int | None = None) -> int:
    """The planner's size variable: latent pixels for a UNet, image + text tokens for an MMDiT (patch 2)."""
    if arch.startswith(("sd35", "flux")):
        return (latent // 2) ** 2 + (TEXT_TOKENS[arch] if text_tokens is None else text_tokens)
    return latent * latent

