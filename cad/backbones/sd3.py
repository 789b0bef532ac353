"""Stable Diffusion 3 / 3.5: an MMDiT (`SD3Transformer2DModel`) over CLIP-L, CLIP-G and T5, rectified flow.

- Conditioning: `StableDiffusion3Pipeline.encode_prompt` gives the token sequence [CLIP-L ; CLIP-G (padded to
  T5's width)] ++ T5 (`encoder_hidden_states`) and the pooled [CLIP-L ; CLIP-G] vector (`pooled_projections`).
- Prediction: the transformer outputs the flow velocity v = eps - x_0 (`prediction_type` "flow"); x_t =
  (1 - sigma) x_0 + sigma eps, with timestep t = 1000 sigma as the pipeline passes it.
- Schedule: the model's own FlowMatchEulerDiscreteScheduler (static `shift` 3.0 on SD 3.5). The pipeline
  passes `mu` to set_timesteps only when the config sets `use_dynamic_shifting` (then mu comes from the
  image's token count, diffusers' `calculate_shift`), so `scheduler()` does exactly the same.
- The Euler scheduler is stateful (it counts its steps): `step()` here checks that the timestep given is the
  one the scheduler is at, so an out-of-order step fails loudly instead of using another step's sigmas. A
  fresh scheduler starts at whatever timestep it is first stepped from (diffusers' index_for_timestep),
  which is how the restart estimator, one fresh scheduler per restart, works.

Component spaces. An MMDiT block has two streams, image and text, each with its own feed-forward and its own
q/k/v/out projections, joined in one attention over [image ; text] tokens (3.5 medium's first 13 blocks add a
second, image-only attention `attn2`, "MMDiT-X"). `ff` is the image stream's feed-forward only (the tensors
that write the image tokens, as `ff` on a UNet); `ff_context` the text stream's (absent from the last block,
which is `context_pre_only`); `ff_all` both. There is no cross-attention module: text and image meet in the
joint attention, where every projection is shared between "self" and "cross" paths (an image query reads
image and text keys alike), so no tensor set means what `cross_attn` means on a UNet. `cross_attn` therefore
raises an error saying so; `attn_context` (the text stream's projections: the keys/values image queries read
from the prompt, which is the closest analogue) and `attn_image` are offered instead.
"""

from __future__ import annotations

import torch

from cad.backbones.base import Backbone, Conditioning
from cad.backbones.groups import mmdit_group

_BLOCK = r"(^|\.)transformer_blocks\.\d+\."
_FF_W = r"\.net\.(0\.proj|2)\.weight$"
_IMAGE_ATTN = r"attn2?\.(to_q|to_k|to_v|to_out\.0)\.weight$"
_CONTEXT_ATTN = r"attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)\.weight$"

CROSS_ATTN_ABSENT = (
    "the sd3 family has no 'cross_attn' space: SD3's MMDiT has no cross-attention module; text and image tokens "
    "meet in one joint attention whose projections serve both paths. Use 'attn' (all joint-attention "
    "projections), 'attn_context' (the text stream's q/k/v/out: the keys and values image queries read from "
    "the prompt), 'attn_image', or 'regex:<re>'"
)


# Presets over SD3Transformer2DModel parameter names (SD 3 medium, 3.5 medium and 3.5 large share them).
SD3_SPACES = {
    # The image stream's feed-forward of every joint block (never ff_context).
    "ff": (_BLOCK + r"ff" + _FF_W, (2,)),
    "ff_context": (_BLOCK + r"ff_context" + _FF_W, (2,)),
    "ff_all": (_BLOCK + r"ff(_context)?" + _FF_W, (2,)),
    # Joint attention, both streams, plus the image-only attn2 of MMDiT-X blocks (3.5 medium).
    "attn": (_BLOCK + r"(" + _IMAGE_ATTN + r"|" + _CONTEXT_ATTN + r")", (2,)),
    "attn_image": (_BLOCK + _IMAGE_ATTN, (2,)),
    "attn_context": (_BLOCK + _CONTEXT_ATTN, (2,)),
    "linear": (r"\.weight$", (2,)),
    "conv": (r"\.weight$", (4,)),   # the patch embedding
}


class SD3Backbone(Backbone):
    family = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    pipeline_classes = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")
    denoiser_attr = "transformer"
    denoiser_classes = ("SD3Transformer2DModel",)
    text_encoder_attrs = ("text_encoder", "text_encoder_2", "text_encoder_3")
    uses_cfg = True
    spaces = SD3_SPACES
    group_of = staticmethod(mmdit_group)   # where each parameter sits (analysis grouping)
    absent_spaces = {"cross_attn": CROSS_ATTN_ABSENT}
    default_scheduler = None          # the model's own FlowMatchEulerDiscreteScheduler
    # T5 tokens per prompt; the pipeline's __call__ default, passed to both encode and generation so the
    # attribution sees the same sequence the sampler does.
    max_sequence_length = 256

    @property
    def prediction_type(self) -> str:
        # FlowMatchEulerDiscreteScheduler's config has no prediction_type; the MMDiT predicts velocity.
        return "flow"

    @torch.no_grad()
    def encode(self, prompt: str, n: int = 1, *, height=None, width=None, guidance=None) -> Conditioning:
        # prompt_2/prompt_3 None: the pipeline feeds the same prompt to all three encoders.
        emb, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=n,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return Conditioning({"encoder_hidden_states": emb.to(self.dtype), "pooled_projections": pooled.to(self.dtype)})

    def predict(self, x, t, cond: Conditioning):
        t = torch.as_tensor(t, device=x.device)
        # The pipeline broadcasts the scalar timestep to the batch (t = 1000 sigma, float).
        timestep = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        return self.denoiser(hidden_states=x, timestep=timestep,
                             encoder_hidden_states=cond.batched["encoder_hidden_states"],
                             pooled_projections=cond.batched["pooled_projections"], return_dict=False)[0]

    def make_scheduler(self, steps: int, *, height=None, width=None):
        from diffusers import FlowMatchEulerDiscreteScheduler

        sched = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        kwargs = {}
        if sched.config.get("use_dynamic_shifting", False):
            # What StableDiffusion3Pipeline.__call__ computes: mu from the number of image tokens.
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            side = self.default_size()
            vsf, patch = self.vae_scale_factor, int(self.denoiser.config.patch_size)
            seq = ((height or side) // vsf // patch) * ((width or side) // vsf // patch)
            c = sched.config
            kwargs["mu"] = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                           c.get("base_shift", 0.5), c.get("max_shift", 1.16))
        sched.set_timesteps(steps, device=self.device, **kwargs)
        return sched

    def step(self, sched, pred, t, x):
        at = sched.step_index
        if at is not None and at < len(sched.timesteps) and sched.timesteps[at] != t:
            raise RuntimeError(
                f"flow-matching scheduler is at step {at} (t={float(sched.timesteps[at]):.3f}) but was asked to "
                f"step from t={float(t):.3f}; FlowMatchEulerDiscreteScheduler counts its own steps, so step "
                "timesteps in order or use a fresh scheduler (Backbone.scheduler) per trajectory")
        return sched.step(pred, t, x, return_dict=False)[0]

    def call_kwargs(self, guidance: float) -> dict:
        return {"guidance_scale": float(guidance), "max_sequence_length": self.max_sequence_length}

    @classmethod
    def size_multiple(cls, vae_factor: int, denoiser_config=None) -> tuple[int, str]:
        # The pipeline needs multiples of vae_scale_factor * patch_size (16 on SD 3.5; patch 2 by default).
        patch = int((denoiser_config or {}).get("patch_size", 2))
        return int(vae_factor) * patch, f"VAE factor {vae_factor} x transformer patch size {patch}"
