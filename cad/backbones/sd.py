"""Stable Diffusion 1.x / 2.x: a UNet2DConditionModel over one CLIP text encoder, epsilon or v-prediction.

The toy world's kit is this family too. Attribution runs on DDIM (the paper's schedule), built from the
model's own scheduler config, so v-prediction models (SD 2.1 768-v) keep their `prediction_type`.
"""

from __future__ import annotations

import torch

from cad.backbones.base import Backbone, Conditioning
from cad.backbones.groups import unet_group

_ATTN = r"\.attn{which}\.(to_q|to_k|to_v|to_out\.0)\.weight$"

# Presets over UNet2DConditionModel parameter names (SD 1.x, 2.x and SDXL share them).
UNET_SPACES: dict[str, tuple[str, tuple[int, ...] | None]] = {
    # The GEGLU feed-forward matrices of every transformer block: on UNets the same tensors as the reference
    # implementation's filter ("ff" in the name, 2-D; mail-research/CAD-attribution4diffusion ablate_model).
    "ff": (r"\.ff\.net\.(0\.proj|2)\.weight$", (2,)),
    "attn": (_ATTN.format(which="[12]"), (2,)),
    "self_attn": (_ATTN.format(which="1"), (2,)),
    "cross_attn": (_ATTN.format(which="2"), (2,)),
    "linear": (r"\.weight$", (2,)),
    "conv": (r"\.weight$", (4,)),
}


class SDBackbone(Backbone):
    family = "sd"
    pipeline_class = "StableDiffusionPipeline"
    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    denoiser_attr = "unet"
    denoiser_classes = ("UNet2DConditionModel",)
    text_encoder_attrs = ("text_encoder",)
    spaces = UNET_SPACES
    group_of = staticmethod(unet_group)   # where each parameter sits (analysis grouping)
    default_scheduler = "ddim"   # the erasure literature samples SD 1.x/2.x with DDIM (ESD, UCE, CAD)

    @classmethod
    def load_kwargs(cls) -> dict:
        # The public switch for the safety checker (never a patched class); evaluation scores raw images.
        return {"safety_checker": None, "requires_safety_checker": False}

    @torch.no_grad()
    def encode(self, prompt: str, n: int = 1, *, height=None, width=None, guidance=None) -> Conditioning:
        emb, _ = self.pipe.encode_prompt(prompt, self.device, n, False)
        return Conditioning({"encoder_hidden_states": emb.to(self.dtype)})

    def predict(self, x, t, cond: Conditioning):
        return self.denoiser(x, t, encoder_hidden_states=cond.batched["encoder_hidden_states"]).sample

    def make_scheduler(self, steps: int, *, height=None, width=None):
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.pipe.scheduler.config)
        sched.set_timesteps(steps, device=self.device)
        return sched
