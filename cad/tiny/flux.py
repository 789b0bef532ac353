"""A tiny FLUX.1 pipeline built offline from the real diffusers/transformers classes.

Same family as black-forest-labs/FLUX.1-schnell / -dev at toy size: a `FluxTransformer2DModel` with
double-stream blocks (separate image/text weights, joint attention: `ff` and `ff_context`) followed by
single-stream blocks (one fused stream; their MLP is `proj_mlp` and there is no `ff`), 3-axis RoPE, a CLIP-L
pooled vector and T5 tokens as conditioning, a 16-channel VAE with FLUX's shift/scale, and flow-matching
Euler.
Modelled on diffusers' FLUX fast-test components.

Latent packing: the pipeline folds each 2x2 patch of the 16-channel latent into one 64-channel token, so the
transformer's `in_channels` is 4 x 16 = 64 (patch_size stays 1), and height/width must be multiples of
vae_scale_factor * 2 (4 with the default 2-block tiny VAE; 16 for the real 8x VAE).
"""

from __future__ import annotations

import torch

# black-forest-labs/FLUX.1-*/vae/config.json: the SD3 VAE layout with FLUX's own latent statistics.
FLUX_VAE_SCALING = 0.3611
FLUX_VAE_SHIFT = 0.1159
# black-forest-labs/FLUX.1-dev/scheduler/scheduler_config.json (the same values as taproot's FluxScheduler
# defaults in the code index): resolution-dependent ("dynamic") shift, mu interpolated from the image token
# count between base_shift at 256 and max_shift at 4096 tokens (the tiny 64-token image extrapolates below).
# FLUX.1-schnell's own file is (from memory, not confirmed offline) shift=1.0, use_dynamic_shifting=False;
# pass `dynamic_shifting=False` for that.
FLUX_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


def build_tiny_flux_pipeline(
    seed: int = 0,
    *,
    guidance_embeds: bool = False,
    dynamic_shifting: bool = True,
    image_size: int = 32,
    num_layers: int = 1,
    num_single_layers: int = 1,
    num_attention_heads: int = 2,
    attention_head_dim: int = 16,
    axes_dims_rope: tuple[int, int, int] = (4, 6, 6),
    vae_channels: tuple[int, ...] = (32, 64),
    clip_hidden: int = 32,
    t5_d_model: int = 32,
    tokenizer=None,
    tokenizer_2=None,
):
    """A randomly initialised `FluxPipeline` of the FLUX.1 family at toy size.

    `guidance_embeds=True` adds the guidance embedder of FLUX.1 [dev] (guidance-distilled: `guidance_scale`
    is an input of the transformer, not classifier-free guidance); False is [schnell]-like.
    `axes_dims_rope` must sum to `attention_head_dim` (16 + 56 + 56 = 128 in FLUX.1).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from cad.tiny.sd import build_clip_tokenizer, tiny_vae
    from cad.tiny.sdxl import tiny_clip_text_config
    from cad.tiny.t5 import build_t5_tokenizer, build_tiny_t5_encoder

    if sum(axes_dims_rope) != attention_head_dim:
        raise ValueError(
            f"axes_dims_rope {axes_dims_rope} must sum to attention_head_dim ({attention_head_dim})"
        )
    tokenizer = tokenizer if tokenizer is not None else build_clip_tokenizer()
    tokenizer_2 = tokenizer_2 if tokenizer_2 is not None else build_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16 * 4,  # 2x2-packed 16-channel latents
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=attention_head_dim,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=t5_d_model,  # T5 tokens (4096 in FLUX.1)
        pooled_projection_dim=clip_hidden,  # CLIP-L pooler_output (768); CLIPTextModel has no projection
        guidance_embeds=guidance_embeds,
        axes_dims_rope=tuple(axes_dims_rope),
    )
    torch.manual_seed(seed)
    vae = tiny_vae(vae_channels, image_size, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                   scaling_factor=FLUX_VAE_SCALING, shift_factor=FLUX_VAE_SHIFT)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(tiny_clip_text_config(tokenizer, clip_hidden))
    text_encoder_2 = build_tiny_t5_encoder(seed + 2, len(tokenizer_2), d_model=t5_d_model)
    sched = dict(FLUX_SCHEDULER)
    if not dynamic_shifting:
        sched.update(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**sched),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
        image_encoder=None,
        feature_extractor=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
