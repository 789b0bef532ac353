"""A tiny Stable Diffusion XL pipeline built offline from the real diffusers/transformers classes.

Same architecture family as stabilityai/stable-diffusion-xl-base-1.0 at toy size: a UNet with the
"text_time" added conditioning (pooled CLIP-G embedding + 6 micro-conditioning numbers), cross-attention on
the concatenated penultimate hidden states of two CLIP text encoders (CLIP-L: `CLIPTextModel`, CLIP-G:
`CLIPTextModelWithProjection`), a first level without attention (SDXL's DownBlock2D first), more transformer
layers at deeper levels, and SDXL's Euler scheduler. Modelled on diffusers' own SDXL fast-test components.
"""

from __future__ import annotations

import torch

# SDXL's scheduler_config.json (stabilityai/stable-diffusion-xl-base-1.0/scheduler): Euler, scaled_linear,
# "leading" spacing with steps_offset=1.
SDXL_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
    interpolation_type="linear",
    use_karras_sigmas=False,
)
SDXL_VAE_SCALING = 0.13025  # stabilityai/stable-diffusion-xl-base-1.0/vae/config.json


def tiny_clip_text_config(tokenizer, hidden: int, *, projection_dim: int | None = None, layers: int = 2):
    """A CLIPTextConfig of toy size whose special ids match `tokenizer` (pooling reads the EOS position)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=projection_dim or hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        # SD 2 / SDXL's OpenCLIP-G uses gelu (SD 1's CLIP-L quick_gelu); irrelevant at random init.
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_sdxl_pipeline(
    seed: int = 0,
    *,
    image_size: int = 32,
    unet_channels: tuple[int, ...] = (32, 64),
    transformer_layers_per_block: tuple[int, ...] = (1, 2),
    vae_channels: tuple[int, ...] = (32, 64),
    text_hidden: int = 32,
    text_hidden_2: int = 32,
    projection_dim: int = 32,
    addition_time_embed_dim: int = 8,
    layers_per_block: int = 1,
    prediction_type: str = "epsilon",
    tokenizer=None,
    tokenizer_2=None,
):
    """A randomly initialised `StableDiffusionXLPipeline` of the SDXL family at toy size.

    Level 0 is a plain DownBlock2D/UpBlock2D as in SDXL, so the `ff` components live in the deeper levels and
    the mid block. With the default two VAE blocks the latent is image_size / 2 on a side; height/width must
    be multiples of 8 (StableDiffusionXLPipeline.check_inputs hard-codes 8 whatever the VAE's factor).
    `prediction_type` sets the scheduler's ("epsilon" as SDXL base, "v_prediction" for v-models).
    """
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from cad.tiny.sd import build_clip_tokenizer, tiny_vae

    tokenizer = tokenizer if tokenizer is not None else build_clip_tokenizer()
    tokenizer_2 = tokenizer_2 if tokenizer_2 is not None else build_clip_tokenizer()
    n = len(unet_channels)
    if len(transformer_layers_per_block) != n:
        raise ValueError("transformer_layers_per_block needs one entry per UNet level")
    latent = image_size // (2 ** (len(vae_channels) - 1))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        block_out_channels=unet_channels,
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        # SDXL: attention_head_dim is (mis)named and means heads per level (channels / 64); here / 16.
        attention_head_dim=tuple(max(1, c // 16) for c in unet_channels),
        use_linear_projection=True,
        transformer_layers_per_block=transformer_layers_per_block,
        # Cross-attention reads [CLIP-L hidden ; CLIP-G hidden] (768 + 1280 = 2048 in SDXL).
        cross_attention_dim=text_hidden + text_hidden_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        # 6 time ids (original size, crop top-left, target size) each embedded to addition_time_embed_dim,
        # plus the pooled CLIP-G projection: 6 * 256 + 1280 = 2816 in SDXL.
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + projection_dim,
        norm_num_groups=min(32, unet_channels[0]),
    )
    torch.manual_seed(seed)
    vae = tiny_vae(vae_channels, image_size, scaling_factor=SDXL_VAE_SCALING)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(tiny_clip_text_config(tokenizer, text_hidden))
    torch.manual_seed(seed + 1)  # a different draw from CLIP-L even when the sizes match
    text_encoder_2 = CLIPTextModelWithProjection(
        tiny_clip_text_config(tokenizer_2, text_hidden_2, projection_dim=projection_dim)
    )
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER, prediction_type=prediction_type)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,  # the invisible-watermark package is optional and would change pixels
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
