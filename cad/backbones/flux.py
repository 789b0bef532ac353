"""FLUX.1 [schnell] / [dev]: a FluxTransformer2DModel over CLIP-L (pooled) + T5 (tokens), flow matching.

FLUX is guidance-distilled: there is no classifier-free-guidance batch (`uses_cfg = False`), every guided
step is the conditional prediction alone. [schnell] ignores guidance; [dev] (`guidance_embeds=True` in the
transformer config) takes the guidance scale as an *input* of the transformer, which travels in the
conditioning: `encode(prompt, guidance=g)` puts a batched "guidance" tensor into it (the erase objective and
the restart estimator encode at their guidance, so J_erase's trajectory, its conditional and its base
predictions all run at it), and `guided_prediction(..., guidance)` adds one where the conditioning has none.
A conditioning without one (J_amplify, direct `predict` calls) runs at `distilled_guidance`
(`default_distilled_guidance`, 3.5, the FLUX.1 [dev] model card's, unless the backbone is built with another).

Latents cross the interface unpacked, (N, 16, h, w); `predict` packs each 2x2 patch into one 64-channel
token as FluxPipeline does, builds the image position ids, and unpacks the output. h and w are multiples
of 2 (pixel sides multiples of 2 * vae_scale_factor = 16 on the real VAE).

Attribution schedule: FlowMatchEulerDiscreteScheduler from the pipeline's config with the pipeline's own
sigmas (linspace(1, 1/T, T)) and resolution-dependent shift mu (calculate_shift of the image token count),
so the attribution trajectory is the model's own sampling trajectory.

Component spaces (FluxTransformer2DModel parameter names):
- `ff`: the feed-forward weights of every transformer block that has one on the image stream: the
  double-stream blocks' `ff.net.{0.proj,2}` (not `ff_context`, the text stream's) plus the single-stream
  blocks' MLP input projection `proj_mlp`. Single-stream blocks fuse the MLP's output projection with the
  attention output in one `proj_out` (input = [attn_out, mlp_hidden]); it is neither purely ff nor purely
  attention, and is left to `attn` / `linear`, not `ff`.
- `ff_context`: the double-stream blocks' text-stream feed-forward; `ff_single`: `proj_mlp` alone.
- `attn`: every attention projection (both streams of the double-stream blocks, the single-stream blocks'
  q/k/v and their fused `proj_out`); `attn_image` / `attn_context`: the double-stream blocks' image-stream
  (to_q/k/v/out) / text-stream (add_q/k/v_proj, to_add_out) projections; `attn_single`: the single-stream
  blocks' q/k/v and proj_out. `linear`: every 2-D weight.
- `cross_attn` (the same decision as the sd3 family): FLUX has joint attention, no cross-attention module;
  every projection serves the image-image and image-text paths alike, so no tensor set means what
  `cross_attn` means on a UNet, and asking for it raises a ValueError naming `attn_context` (the weights
  that carry the prompt into the joint attention, the closest analogue), `attn_image` and `attn`.
- `conv` raises likewise: the FLUX transformer has no convolution (its patch embedding is a Linear).
"""

from __future__ import annotations

import numpy as np
import torch

from cad.backbones.base import Backbone, Conditioning
from cad.backbones.groups import mmdit_group

_DOUBLE = r"^transformer_blocks\.\d+\."
_SINGLE = r"^single_transformer_blocks\.\d+\."

_CONTEXT_ATTN = r"attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)\.weight$"
_IMAGE_ATTN = r"attn\.(to_q|to_k|to_v|to_out\.0)\.weight$"
_SINGLE_ATTN = r"(attn\.(to_q|to_k|to_v)|proj_out)\.weight$"

CROSS_ATTN_ABSENT = (
    "the flux family has no 'cross_attn' space: FLUX's transformer has no cross-attention module; text and "
    "image tokens meet in one joint attention whose projections serve both paths. Use 'attn' (all attention "
    "projections), 'attn_context' (the double-stream blocks' text-stream q/k/v/out: the keys and values "
    "image queries read from the prompt), 'attn_image', 'attn_single', or 'regex:<re>'"
)
CONV_ABSENT = ("the flux family has no 'conv' space: FLUX's transformer has no convolution (its patch "
               "embedding x_embedder is a Linear on 2x2-packed tokens). Use 'linear' or 'regex:<re>'")


# Presets over FluxTransformer2DModel parameter names (FLUX.1 schnell and dev share them).
FLUX_SPACES = {
    # The image stream's feed-forward: double-stream ff (never ff_context) + single-stream MLP input proj_mlp.
    "ff": (rf"{_DOUBLE}ff\.net\.(0\.proj|2)\.weight$|{_SINGLE}proj_mlp\.weight$", (2,)),
    "ff_context": (rf"{_DOUBLE}ff_context\.net\.(0\.proj|2)\.weight$", (2,)),
    "ff_single": (rf"{_SINGLE}proj_mlp\.weight$", (2,)),
    "attn": (rf"{_DOUBLE}({_IMAGE_ATTN}|{_CONTEXT_ATTN})|{_SINGLE}{_SINGLE_ATTN}", (2,)),
    "attn_image": (_DOUBLE + _IMAGE_ATTN, (2,)),
    "attn_context": (_DOUBLE + _CONTEXT_ATTN, (2,)),
    "attn_single": (_SINGLE + _SINGLE_ATTN, (2,)),
    "linear": (r"\.weight$", (2,)),
}


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, h/2 * w/2, 4C): each 2x2 patch becomes one token (FluxPipeline's packing)."""
    n, c, h, w = x.shape
    x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, h/2 * w/2, 4C) -> (N, C, h, w), h and w in latent pixels: the inverse of pack_latents."""
    n, _, ch = tokens.shape
    x = tokens.view(n, h // 2, w // 2, ch // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, ch // 4, h, w)


def image_ids(h2: int, w2: int, device=None, dtype=None) -> torch.Tensor:
    """Position ids (h2 * w2, 3) of the packed image tokens: (0, row, column) on the 3 RoPE axes."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = torch.arange(h2)[:, None]
    ids[..., 2] = torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3).to(device=device, dtype=dtype)


class FluxBackbone(Backbone):
    family = "flux"
    pipeline_class = "FluxPipeline"
    pipeline_classes = ("FluxPipeline",)
    denoiser_attr = "transformer"
    denoiser_classes = ("FluxTransformer2DModel",)
    text_encoder_attrs = ("text_encoder", "text_encoder_2")
    uses_cfg = False          # guidance-distilled: no unconditional batch
    spaces = FLUX_SPACES
    group_of = staticmethod(mmdit_group)   # where each parameter sits (analysis grouping)
    absent_spaces = {"cross_attn": CROSS_ATTN_ABSENT, "conv": CONV_ABSENT}
    default_scheduler = None  # keep the model's FlowMatchEulerDiscreteScheduler

    default_distilled_guidance = 3.5  # FLUX.1 [dev] model card; unused by [schnell] (no guidance embedder)
    # T5 tokens per prompt: None means the model card's, 512 with a guidance embedder ([dev]) and 256 without
    # ([schnell], whose card caps it at 256). Set on an instance (or a subclass) to change it.
    max_sequence_length: int | None = None

    def __init__(self, pipe, *, distilled_guidance: float | None = None,
                 max_sequence_length: int | None = None):
        super().__init__(pipe)
        self.distilled_guidance = float(self.default_distilled_guidance if distilled_guidance is None
                                        else distilled_guidance)
        if max_sequence_length is not None:
            self.max_sequence_length = int(max_sequence_length)

    @property
    def prediction_type(self) -> str:
        return "flow"

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.denoiser.config.get("guidance_embeds", False))

    @property
    def sequence_length(self) -> int:
        if self.max_sequence_length is not None:
            return int(self.max_sequence_length)
        return 512 if self.guidance_embeds else 256

    # ---- conditioning and prediction ------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompt: str, n: int = 1, *, height=None, width=None, guidance=None) -> Conditioning:
        emb, pooled, txt_ids = self.pipe.encode_prompt(prompt=prompt, prompt_2=None, device=self.device,
                                                       num_images_per_prompt=n,
                                                       max_sequence_length=self.sequence_length)
        batched = {"encoder_hidden_states": emb.to(self.dtype), "pooled_projections": pooled.to(self.dtype)}
        if guidance is not None and self.guidance_embeds:
            batched["guidance"] = torch.full([n], float(guidance), device=self.device, dtype=torch.float32)
        return Conditioning(batched, {"txt_ids": txt_ids.to(self.dtype)})

    def predict(self, x, t, cond: Conditioning):
        n, _, h, w = x.shape
        t = torch.as_tensor(t, device=x.device)
        # As FluxPipeline: the timestep broadcast to the batch in the latents' dtype, then / 1000.
        timestep = (t.expand(n) if t.ndim == 0 else t).to(x.dtype) / 1000
        guidance = None
        if self.guidance_embeds:
            guidance = cond.batched.get("guidance")
            if guidance is None:
                guidance = torch.full([n], self.distilled_guidance, device=x.device, dtype=torch.float32)
        out = self.denoiser(hidden_states=pack_latents(x), timestep=timestep, guidance=guidance,
                            pooled_projections=cond.batched["pooled_projections"],
                            encoder_hidden_states=cond.batched["encoder_hidden_states"],
                            txt_ids=cond.shared["txt_ids"],
                            img_ids=image_ids(h // 2, w // 2, x.device, x.dtype), return_dict=False)[0]
        return unpack_latents(out, h, w)

    def guided_prediction(self, sched, x, t, cond: Conditioning, uncond: Conditioning | None,
                          guidance: float) -> torch.Tensor:
        """The conditional prediction alone at distilled guidance `guidance` (uncond is not used); a guidance
        the conditioning already carries (encode(..., guidance=)) is kept."""
        n = x.shape[0]
        cond = cond.take(n)
        if self.guidance_embeds and "guidance" not in cond.batched:
            g = torch.full([n], float(guidance), device=x.device, dtype=torch.float32)
            cond = Conditioning({**cond.batched, "guidance": g}, dict(cond.shared))
        return self.predict(self.scale_input(sched, x, t), t, cond)

    # ---- schedule -------------------------------------------------------------------------------------
    def make_scheduler(self, steps: int, *, height=None, width=None):
        """FlowMatchEuler with FluxPipeline.__call__'s sigmas and mu for this image size. No begin index is
        set (unlike the pipeline): step() then finds its index from t, and scale_noise (J_amplify's noising)
        looks each t up instead of reusing the begin index."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        sched = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config)
        config = sched.config
        sigmas = None if config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        _, _, h, w = self.latent_shape(1, height, width)
        mu = calculate_shift((h // 2) * (w // 2), config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        if sigmas is None:
            sched.set_timesteps(steps, device=self.device, mu=mu)
        else:
            sched.set_timesteps(sigmas=sigmas, device=self.device, mu=mu)
        return sched

    # ---- latents --------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels) // 4  # the transformer sees 2x2-packed tokens

    def default_size(self) -> int:
        return int(self.pipe.default_sample_size) * self.vae_scale_factor

    def latent_shape(self, n: int, height=None, width=None) -> tuple[int, ...]:
        # As FluxPipeline.prepare_latents: sides rounded down to an even number of latent pixels.
        vsf2 = self.vae_scale_factor * 2
        h, w = int(height or self.default_size()), int(width or self.default_size())
        return (n, self.latent_channels, 2 * (h // vsf2), 2 * (w // vsf2))

    @classmethod
    def size_multiple(cls, vae_factor: int, denoiser_config=None) -> tuple[int, str]:
        # Latents are packed in 2x2 patches; the pipeline silently resizes other sizes.
        return int(vae_factor) * 2, f"VAE factor {vae_factor} x FLUX's 2x2 latent packing"

    def call_kwargs(self, guidance: float) -> dict:
        # [schnell] ignores guidance_scale (no guidance embedder); [dev] embeds it.
        return {"guidance_scale": float(guidance), "max_sequence_length": self.sequence_length}

    @torch.no_grad()
    def sample_latents(self, prompt: str, n: int, *, steps: int, guidance: float, height: int, width: int,
                       generator: torch.Generator) -> torch.Tensor:
        """n images from FluxPipeline's own sampler, unpacked (its output_type="latent" is packed tokens)."""
        out = self.pipe(prompt, num_images_per_prompt=n, num_inference_steps=steps, height=height,
                        width=width, generator=generator, output_type="latent", **self.call_kwargs(guidance))
        _, _, h, w = self.latent_shape(n, height, width)
        return unpack_latents(out.images, h, w).float().cpu()
