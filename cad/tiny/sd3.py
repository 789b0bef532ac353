"""A tiny Stable Diffusion 3.5 pipeline built offline from the real diffusers/transformers classes.

Same family as stabilityai/stable-diffusion-3.5-medium / -large at toy size: an MMDiT
(`SD3Transformer2DModel`) of joint blocks over [image patches ; text tokens], RMS qk-norm (SD 3.5), an
MMDiT-X dual-attention first block (3.5 medium's `attn2`), CLIP-L and CLIP-G (`CLIPTextModelWithProjection`
both) plus a T5 encoder, a 16-channel VAE with SD3's shift/scale, and rectified-flow Euler with shift 3.
Modelled on diffusers' SD3 fast-test components.

The last joint block of an SD3 transformer is `context_pre_only` (it updates only the image stream, so it
has no `ff_context`); the default `num_layers=2` therefore gives one block with both `ff` and `ff_context`
and one with `ff` only, as in the real models.
"""

from __future__ import annotations

import torch

# stabilityai/stable-diffusion-3.5-*/vae/config.json (also SD3 medium): 16 latent channels, no quant convs.
SD3_VAE_SCALING = 1.5305
SD3_VAE_SHIFT = 0.0609
# stabilityai/stable-diffusion-3.5-*/scheduler/scheduler_config.json
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)


def build_tiny_sd3_pipeline(
    seed: int = 0,
    *,
    image_size: int = 32,
    num_layers: int = 2,
    num_attention_heads: int = 2,
    attention_head_dim: int = 16,
    patch_size: int = 2,
    dual_attention_layers: tuple[int, ...] = (0,),
    qk_norm: str | None = "rms_norm",
    vae_channels: tuple[int, ...] = (32, 64),
    clip_hidden: int = 32,
    clip_hidden_2: int = 32,
    projection_dim: int = 32,
    t5_d_model: int | None = None,
    tokenizer=None,
    tokenizer_2=None,
    tokenizer_3=None,
):
    """A randomly initialised `StableDiffusion3Pipeline` of the SD 3.5 family at toy size.

    height/width must be multiples of vae_scale_factor * patch_size (2 * 2 = 4 by default); image_size 32
    gives a 16x16x16 latent and 8x8 = 64 image tokens. `dual_attention_layers=()` and `qk_norm=None` give an
    SD 3.0-medium-like transformer; `(0,)` (default) is 3.5-medium-like; `()` with rms_norm is 3.5-large-like.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    from cad.tiny.sd import build_clip_tokenizer, tiny_vae
    from cad.tiny.sdxl import tiny_clip_text_config
    from cad.tiny.t5 import build_t5_tokenizer, build_tiny_t5_encoder

    tokenizer = tokenizer if tokenizer is not None else build_clip_tokenizer()
    tokenizer_2 = tokenizer_2 if tokenizer_2 is not None else build_clip_tokenizer()
    tokenizer_3 = tokenizer_3 if tokenizer_3 is not None else build_t5_tokenizer()
    # The pipeline zero-pads [CLIP-L ; CLIP-G] hidden states (768 + 1280) up to T5's width (4096) and
    # concatenates them with T5's tokens along the sequence; T5 must be at least as wide or the pad crops.
    t5_d_model = t5_d_model or 2 * (clip_hidden + clip_hidden_2)
    if t5_d_model < clip_hidden + clip_hidden_2:
        raise ValueError("t5_d_model must be >= clip_hidden + clip_hidden_2 (SD3 pads CLIP features to T5's)")
    inner = num_attention_heads * attention_head_dim
    vae_scale = 2 ** (len(vae_channels) - 1)
    latent = image_size // vae_scale
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=latent,
        patch_size=patch_size,
        in_channels=16,
        out_channels=16,
        num_layers=num_layers,
        attention_head_dim=attention_head_dim,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=t5_d_model,
        caption_projection_dim=inner,  # the text stream runs at the image stream's width
        pooled_projection_dim=2 * projection_dim,  # [CLIP-L pooled ; CLIP-G pooled] (768 + 1280 = 2048)
        # In patches: the learned position table is cropped to the image; 4x the default grid allows
        # up to 4x image_size, like 3.5 medium's 384 for a 64-patch default.
        pos_embed_max_size=4 * latent // patch_size,
        dual_attention_layers=tuple(dual_attention_layers),
        qk_norm=qk_norm,
    )
    torch.manual_seed(seed)
    vae = tiny_vae(vae_channels, image_size, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                   scaling_factor=SD3_VAE_SCALING, shift_factor=SD3_VAE_SHIFT)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(
        tiny_clip_text_config(tokenizer, clip_hidden, projection_dim=projection_dim)
    )
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(
        tiny_clip_text_config(tokenizer_2, clip_hidden_2, projection_dim=projection_dim)
    )
    text_encoder_3 = build_tiny_t5_encoder(seed + 2, len(tokenizer_3), d_model=t5_d_model)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
        image_encoder=None,
        feature_extractor=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
