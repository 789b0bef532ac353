"""Stable Diffusion XL: a UNet2DConditionModel over two CLIP text encoders, with pooled embeds and time ids.

The UNet reads cross-attention on the concatenated penultimate hidden states of CLIP-L and OpenCLIP-G, plus
"added conditioning": the pooled OpenCLIP-G projection (`text_embeds`) and six micro-conditioning numbers
(`time_ids`: original size, crop top-left, target size). Its parameter names are those of SD 1.x/2.x, so the
component-space presets are shared (cad.backbones.sd.UNET_SPACES): on stabilityai/stable-diffusion-xl-base-1.0
`ff` is 140 tensors, 1,228,800,000 weights.

Sampling keeps the model's own scheduler (EulerDiscrete for SDXL base). Attribution runs on DDIM built from
that same scheduler config, the paper's protocol (see `scheduler`).

The empty base prompt of J_erase is *encoded* (CLIP embeddings of ""), as in the sd family, not replaced by
zeros. The pipeline's `force_zeros_for_empty_prompt` only decides what `__call__` uses as the unconditional
input when no negative prompt is given; cad's objectives name their base and negative prompts explicitly,
and a base prediction from real embeddings of "" is the paper's "empty prompt" on every family. The same
encoded "" is the unconditional input of the attribution trajectory's guided steps (negative_prompt=""), so
that trajectory differs from `pipe(prompt)`'s in this and in the integrator (DDIM); generation through
`pipe(...)` itself still follows the pipeline's own rule (zeros).
"""

from __future__ import annotations

import torch

from cad.backbones.base import Backbone, Conditioning
from cad.backbones.groups import unet_group
from cad.backbones.sd import UNET_SPACES

# DDIM defaults that are wrong for a latent model (clip_sample=True clips x0 to [-1, 1], meaningless for VAE
# latents), filled in only where the scheduler config does not state them. SDXL base's scheduler_config.json
# states clip_sample=false and set_alpha_to_one=false (an Euler config loaded from a file keeps such keys), so
# on the real model this is exactly the reference's DDIMScheduler.from_pretrained(model, subfolder="scheduler");
# an Euler scheduler built in code (tiny pipelines) lacks the keys.
_DDIM_LATENT_DEFAULTS = {"clip_sample": False, "set_alpha_to_one": False}


class SDXLBackbone(Backbone):
    family = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    # Only the text-to-image pipeline: StableDiffusionXLImg2ImgPipeline needs an image in __call__ (so cad's
    # generation cannot drive it), and its main checkpoint (the refiner) has no CLIP-L encoder and 5 time ids
    # with an aesthetic score, which `encode` below does not build.
    pipeline_classes = ("StableDiffusionXLPipeline",)
    denoiser_attr = "unet"
    # Empty: a bare UNet2DConditionModel resolves to the sd family, whose presets SDXL shares.
    denoiser_classes = ()
    text_encoder_attrs = ("text_encoder", "text_encoder_2")
    spaces = UNET_SPACES
    group_of = staticmethod(unet_group)   # where each parameter sits (analysis grouping)
    default_scheduler = None  # sample with the model's own EulerDiscrete, as its model card does

    @classmethod
    def load_kwargs(cls) -> dict:
        # No safety checker in SDXL. The invisible-watermark package is optional (and absent here); the
        # pipeline's public switch keeps generated pixels unwatermarked, so evaluation scores raw images.
        return {"add_watermarker": False}

    def time_ids(self, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """SDXL's micro-conditioning for one image, (1, 6): original_size + crops_coords_top_left + target_size,
        with original = target = (height, width) (default the native size) and crop (0, 0), the values
        StableDiffusionXLPipeline.__call__ passes to its (private) `_get_add_time_ids` by default."""
        h = int(height or self.default_size())
        w = int(width or self.default_size())
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=self.dtype, device=self.device)

    @torch.no_grad()
    def encode(self, prompt: str, n: int = 1, *, height=None, width=None, guidance=None) -> Conditioning:
        # do_classifier_free_guidance=False: unconditional inputs are just other prompts in cad, so the
        # pipeline's negative branch (and its force_zeros_for_empty_prompt) is not used; "" is encoded.
        emb, _, pooled, _ = self.pipe.encode_prompt(prompt, device=self.device, num_images_per_prompt=n,
                                                    do_classifier_free_guidance=False)
        return Conditioning({
            "encoder_hidden_states": emb.to(self.dtype),
            "text_embeds": pooled.to(self.dtype),
            "time_ids": self.time_ids(height, width).expand(n, -1),
        })

    def predict(self, x, t, cond: Conditioning):
        b = cond.batched
        return self.denoiser(x, t, encoder_hidden_states=b["encoder_hidden_states"],
                             added_cond_kwargs={"text_embeds": b["text_embeds"], "time_ids": b["time_ids"]}).sample

    def make_scheduler(self, steps: int, *, height=None, width=None):
        """DDIM from the model's scheduler config, set to `steps` (pipe.scheduler, Euler, is untouched).

        Why not the sampling scheduler: the paper's attribution protocol is a DDIM trajectory (50 steps,
        guidance 3.0), and the reference code builds it as DDIMScheduler.from_pretrained(model,
        subfolder="scheduler"), i.e. DDIM from the model's own scheduler config, whatever the model samples
        with. DDIM keeps SDXL's betas, timestep spacing, steps offset and prediction_type, so only the
        integrator differs from sampling, and the attribution is comparable with the sd family's.
        """
        from diffusers import DDIMScheduler

        config = self.pipe.scheduler.config
        fill = {k: v for k, v in _DDIM_LATENT_DEFAULTS.items() if k not in config}
        sched = DDIMScheduler.from_config(config, **fill)
        sched.set_timesteps(steps, device=self.device)
        return sched

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """As the base class, with SDXL's fp16 VAE overflow handled as the pipeline handles it: a VAE whose
        config says `force_upcast` runs in float32 for the call and is cast back (fp16 -> fp32 -> fp16 is
        exact, so the weights and their fingerprint are unchanged)."""
        vae = self.vae
        dtype = vae.dtype
        if not (dtype == torch.float16 and getattr(vae.config, "force_upcast", False)):
            return super().encode_images(pixels, generator)
        vae.to(dtype=torch.float32)
        try:
            return super().encode_images(pixels, generator)
        finally:
            vae.to(dtype=dtype)
