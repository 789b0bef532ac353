"""The real denoiser architectures of every supported family, as config.json values (no weights).

Tests and planning code need exact tensor names, shapes and counts of the full-size models (how many `ff`
weights SDXL has, what a 1% edit of FLUX means) without downloading gigabytes; `build_on_meta(name)`
instantiates the denoiser on the meta device from these dicts, so nothing is allocated and a 12 B-parameter
FLUX builds in under a second.

Each config lists the values of the model repo's `<subfolder>/config.json` that differ from the diffusers
class defaults or that define the architecture (arguments left out equal the class defaults, which were also
the released values when each family was added to diffusers). Sources are named per config; values that
could not be confirmed offline are marked. tests/families/test_architectures.py pins the parameter counts,
which checks the configs against the published totals (SD 1.x 859,520,964; SDXL 2,567,463,684; SD 3.5
medium ~2.5 B and large ~8.1 B with their pos_embed tables; FLUX.1 ~11.9 B).
"""

from __future__ import annotations

import copy

_SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

# CompVis/stable-diffusion-v1-4 unet/config.json (SD 1.5 is identical). Cross-checked against the LDM yaml
# v1-inference.yaml (model_channels 320, channel_mult [1,2,4,4], num_res_blocks 2, num_heads 8,
# context_dim 768) and the published 859,520,964 parameters / 32 ff tensors / 148,684,800 ff weights (the
# paper's `ff` space).
SD1_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": list(_SD_DOWN),
    "up_block_types": list(_SD_UP),
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,  # 8 heads (diffusers' legacy name); head width = channels / 8
}

# stabilityai/stable-diffusion-2-1 (768-v) unet/config.json; cross-checked against the LDM yaml
# v2-inference-v.yaml (num_head_channels 64 -> heads [5,10,20,20], context_dim 1024 (OpenCLIP-H),
# use_linear_in_transformer). `upcast_attention: true` is from memory (2.1 upcasts attention in fp32 to
# avoid fp16 NaNs); it changes no shape. The 768-v model is v-prediction (a scheduler setting, not here).
SD2_UNET = {
    **copy.deepcopy(SD1_UNET),
    "sample_size": 96,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
    "upcast_attention": True,
}
# stabilityai/stable-diffusion-2-1-base unet/config.json: the same network at 512 px (epsilon); its
# `upcast_attention` is false as far as known (unconfirmed offline; no effect on shapes or counts).
SD2_BASE_UNET = {**copy.deepcopy(SD2_UNET), "sample_size": 64, "upcast_attention": False}

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json; cross-checked against Stability's
# generative-models configs/inference/sd_xl_base.yaml (model_channels 320, channel_mult [1,2,4],
# transformer_depth [1,2,10] with level 0 attention-free, num_head_channels 64, context_dim 2048,
# adm_in_channels 2816 = 6 * 256 + 1280) and the published ~2.567 B parameters / 140 ff tensors.
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 2048,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "upcast_attention": None,
}

# stabilityai/stable-diffusion-3.5-medium transformer/config.json (MMDiT-X). Sources: diffusers
# scripts/convert_sd3_to_diffusers.py and loaders/single_file_utils.py (3.5 medium = 24 joint blocks,
# adaLN width 6 * 1536, pos_embed of 384^2 patches, qk "rms_norm", dual attention in blocks 0-12) and the
# same values in FastVideo's SD3Transformer2DArchConfig.
SD35M_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)),
    "qk_norm": "rms_norm",
}

# stabilityai/stable-diffusion-3.5-large transformer/config.json. Sources: diffusers
# scripts/convert_sd3_to_diffusers.py (heads = num_layers, caption_projection_dim from context_embedder =
# 38*64, "sd3.0 and sd3.5 8b use 192" for pos_embed_max_size, rms qk-norm) and single_file_utils.py (its
# detection key joint_blocks.37 -> 38 blocks). No dual-attention blocks (MMDiT-X is medium only).
SD35L_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 38,
    "attention_head_dim": 64,
    "num_attention_heads": 38,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 2432,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
    "dual_attention_layers": [],
    "qk_norm": "rms_norm",
}

# black-forest-labs/FLUX.1-schnell transformer/config.json. Sources: diffusers FluxTransformer2DModel defaults
# (written for FLUX.1) and scripts/convert_flux_to_diffusers.py (builds the released models with those
# defaults; only guidance_embeds differs between schnell and dev). 19 double-stream + 38 single-stream blocks,
# inner width 24 * 128 = 3072, RoPE axes 16 + 56 + 56 = 128.
FLUX_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "out_channels": None,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": False,
    "axes_dims_rope": [16, 56, 56],
}
# black-forest-labs/FLUX.1-dev: the same blocks plus the guidance embedder (guidance distillation).
FLUX_DEV_TRANSFORMER = {**copy.deepcopy(FLUX_TRANSFORMER), "guidance_embeds": True}

ARCHITECTURES: dict[str, dict] = {
    "sd1": {"repo": "CompVis/stable-diffusion-v1-4", "subfolder": "unet",
            "class_name": "UNet2DConditionModel", "config": SD1_UNET},
    "sd2": {"repo": "stabilityai/stable-diffusion-2-1", "subfolder": "unet",
            "class_name": "UNet2DConditionModel", "config": SD2_UNET},
    "sd2_base": {"repo": "stabilityai/stable-diffusion-2-1-base", "subfolder": "unet",
                 "class_name": "UNet2DConditionModel", "config": SD2_BASE_UNET},
    "sdxl": {"repo": "stabilityai/stable-diffusion-xl-base-1.0", "subfolder": "unet",
             "class_name": "UNet2DConditionModel", "config": SDXL_UNET},
    "sd35m": {"repo": "stabilityai/stable-diffusion-3.5-medium", "subfolder": "transformer",
              "class_name": "SD3Transformer2DModel", "config": SD35M_TRANSFORMER},
    "sd35l": {"repo": "stabilityai/stable-diffusion-3.5-large", "subfolder": "transformer",
              "class_name": "SD3Transformer2DModel", "config": SD35L_TRANSFORMER},
    "flux": {"repo": "black-forest-labs/FLUX.1-schnell", "subfolder": "transformer",
             "class_name": "FluxTransformer2DModel", "config": FLUX_TRANSFORMER},
    "flux_dev": {"repo": "black-forest-labs/FLUX.1-dev", "subfolder": "transformer",
                 "class_name": "FluxTransformer2DModel", "config": FLUX_DEV_TRANSFORMER},
}


def architecture_config(name: str) -> dict:
    """A deep copy of the named config (callers may edit it), with diffusers' `_class_name` key."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    spec = ARCHITECTURES[name]
    return {"_class_name": spec["class_name"], **copy.deepcopy(spec["config"])}


def build_on_meta(name: str):
    """The named denoiser with every parameter on the meta device: real names, shapes and counts, no memory.

    Built under `torch.device("meta")` rather than `accelerate.init_empty_weights()`: the latter keeps buffers
    real, and SD 3.5's fixed sin-cos position table is a persistent buffer computed at init (384^2 x 1536
    floats for medium: ~30 s and ~4 GB of CPU). Under the meta device every factory call, buffers included,
    yields a meta tensor, so a 12 B FLUX builds in well under a second. Buffers are meta too (`pos_embed` is
    in the checkpoints, so it counts toward their published sizes: see `checkpoint_numel`).
    """
    import diffusers
    import torch

    config = architecture_config(name)
    cls = getattr(diffusers, config.pop("_class_name"))
    with torch.device("meta"):
        model = cls.from_config(config)
    return model.eval()


def checkpoint_numel(model) -> int:
    """Parameters plus persistent buffers: the number of values in the model's state dict / checkpoint.

    SD3's `pos_embed` table is a buffer in diffusers but part of the released weights and their headline size.
    """
    return sum(t.numel() for t in model.state_dict().values())


# Component patterns over denoiser parameter names (re.search). UNets: the paper's `ff` space. MMDiTs: the
# image-stream feed-forward (anchored so `ff_context` never matches), the text-stream one, and FLUX's
# single-stream MLP input projection (single blocks have no `ff`; their MLP output is fused into `proj_out`).
FF_PATTERNS: dict[str, str] = {
    "unet_ff": r"\.ff\.net\.(0\.proj|2)\.weight$",
    "ff": r"(^|\.)ff\.net\.(0\.proj|2)\.weight$",
    "ff_context": r"\.ff_context\.net\.(0\.proj|2)\.weight$",
    "single_proj_mlp": r"single_transformer_blocks\.\d+\.proj_mlp\.weight$",
}


def count_matching(model, pattern: str) -> tuple[int, int]:
    """(number of parameter tensors, number of weights) whose names match `pattern` (re.search)."""
    import re

    rx = re.compile(pattern)
    sel = [p for n, p in model.named_parameters() if rx.search(n)]
    return len(sel), sum(p.numel() for p in sel)
