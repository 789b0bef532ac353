"""Tiny Stable Diffusion pipelines built offline from the real diffusers/transformers classes.

No pretrained weights can be assumed (CI and many laptops are offline), so tests, benchmarks and the
fallback demo build pipelines of the exact SD architecture family at toy size. The tokenizer is a real
CLIPTokenizer whose vocabulary and merges are the OpenAI CLIP BPE shipped inside open_clip, so prompts
tokenize exactly as they do for SD 1.x.
"""

from __future__ import annotations

import atexit
import gzip
import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

# SD 1.x CLIP vocabulary layout: 256 byte tokens, 256 byte+</w> tokens, 48,894 merges, 2 specials = 49,408.
_N_MERGES = 49152 - 256 - 2


@lru_cache(maxsize=1)
def clip_tokenizer_files() -> Path:
    """Write vocab.json / merges.txt of the OpenAI CLIP BPE (from open_clip's bundled file) once per process,
    into a folder removed when the process exits."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : _N_MERGES + 1]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(tempfile.mkdtemp(prefix="cad-clip-bpe-"))
    atexit.register(shutil.rmtree, out, True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return out


def build_clip_tokenizer(model_max_length: int = 77):
    """A real CLIPTokenizer with the SD 1.x vocabulary (49,408 tokens), built without network."""
    from transformers import CLIPTokenizer

    files = clip_tokenizer_files()
    # from_pretrained on a folder is the loading path that is stable across transformers 4.x and 5.x.
    return CLIPTokenizer.from_pretrained(str(files), model_max_length=model_max_length, pad_token="<|endoftext|>")


def tiny_vae(vae_channels: tuple[int, ...], image_size: int, *, latent_channels: int = 4, **config):
    """A toy-size AutoencoderKL; `config` adds what a family's VAE sets (scaling/shift factor, no quant convs)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=vae_channels,
        down_block_types=["DownEncoderBlock2D"] * len(vae_channels),
        up_block_types=["UpDecoderBlock2D"] * len(vae_channels),
        latent_channels=latent_channels,
        norm_num_groups=min(32, vae_channels[0]),
        sample_size=image_size,
        **config,
    )


def build_tiny_pipeline(
    seed: int = 0,
    *,
    image_size: int = 32,
    unet_channels: tuple[int, ...] = (32, 64),
    vae_channels: tuple[int, ...] = (32, 64),
    text_hidden: int = 32,
    cross_attention_dim: int | None = None,
    layers_per_block: int = 1,
    tokenizer=None,
    max_length: int = 77,
):
    """A randomly initialised StableDiffusionPipeline (safety checker off) of the SD 1.x family at toy size.

    The UNet has cross-attention transformer blocks, so the paper's `ff` components exist. With the default
    two VAE blocks the latent is image_size / 2 on a side.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tokenizer if tokenizer is not None else build_clip_tokenizer(max_length)
    cross_attention_dim = cross_attention_dim or text_hidden
    torch.manual_seed(seed)
    n = len(unet_channels)
    down = ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"]
    up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1)
    latent = image_size // (2 ** (len(vae_channels) - 1))
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        block_out_channels=unet_channels,
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=min(32, unet_channels[0]),
    )
    vae = tiny_vae(vae_channels, image_size)
    vocab = len(tokenizer)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=text_hidden,
            intermediate_size=2 * text_hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
