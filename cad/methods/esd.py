"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023), ESD-x and ESD-u, a weight edit.

Fine-tunes a subset of the denoiser so that its conditional prediction for the concept c becomes the
negatively guided prediction of the frozen original θ*:

    ε_θ(x_t, c, t)  →  ε_θ*(x_t, t) − η (ε_θ*(x_t, c, t) − ε_θ*(x_t, t))      (MSE, Adam, batch 1)

with x_t drawn, each iteration, by running DDIM (eta 0, classifier-free guidance `start_guidance`) from fresh
noise part of the way down the trajectory of c.

Reference: rohitgandikota/erasing, the paper's code, commit a2189e9ae677aca22a00c361bde25d3d320d8a61
(`train-scripts/train-esd.py`: `train_esd`, its `quick_sample_till_t` over `sample_model`; the CompVis
`ldm/models/diffusion/ddim.py`: `DDIMSampler.sample` / `ddim_sampling`; `ldm/modules/diffusionmodules/util.py`:
`make_ddim_timesteps`). This module follows it:
- x_t is sampled with the model being trained (θ), not the frozen copy (`sample_with: trained`);
- t_enc ~ U{0..S-1} (S DDIM steps, T = 1000 training timesteps). The CompVis DDIM timesteps are 1, 1+T/S, …,
  T-T/S+1 (1 … 981 for S = 50, the same as diffusers' DDIM with "leading" spacing and steps_offset 1, SD's
  config); `sample_model` passes `t_start=-1`, which drops the top one, so x_T enters at the second timestep
  (961) and the sampler runs S - t_enc steps (till_T = t_enc stops it after DDIM index t_enc-1; all S-1 when
  t_enc = 0): timesteps 961, 941, … down to T/S·(t_enc-1) + 1 (1 when t_enc = 0). The prediction is scored
  at a DDPM timestep drawn uniformly in [round(t_enc/S·T), round((t_enc+1)/S·T)), so x_t is ~2 DDIM steps less
  noisy than the timestep it is scored at (`score_timestep: reference`, which selects this whole t_enc rule:
  `partial_denoising`).
  The later diffusers rewrite (HEAD 25613d27892326e0c7770f7f3555bea4be150089, `esd_sd.py` with
  `utils/sd_utils.py:esd_sd_call`) samples with the frozen model, runs the scheduler's timesteps[:t_enc] from
  the top one and scores at the latent's own timestep timesteps[t_enc]: `sample_with: frozen`,
  `score_timestep: matched`;
- parameter filters on UNet names, from the reference's CompVis names mapped to diffusers ones:
  ESD-x (`xattn`) trains every tensor with "attn2" in its name; ESD-u (`noxattn`) trains all others except
  the time embedding and the output head (CompVis `time_embed*`, `out.*` = diffusers `time_embedding.*`,
  `conv_norm_out.*`, `conv_out.*`). The reference has no SDXL in that commit; on SDXL the filters are those of
  the rewrite's esd_sdxl.py (Linear/Conv2d modules only; ESD-u: in a block, no "attn2", no "emb").
- defaults: 1000 iterations, Adam lr 1e-5, η = 1, start guidance 3, DDIM 50, batch 1, the model's native
  image size (512 on SD 1.x), fp32 gradients (a float32 copy of only the trained tensors).

The trained tensors are substituted into the pipeline's own denoiser for each forward with
torch.func.functional_call (through the backbone's predict, so every family's conditioning works), so no second
UNet is held and the pipeline's weights are never written: the result is a `WeightEdit` (replace) of the trained
tensors, made for the untouched model's identity.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from cad.methods.base import (
    Method,
    MethodConfigError,
    MethodContext,
    MethodOutput,
    check_choice,
    check_positive,
)

VARIANTS = ("x", "u")
SAMPLE_WITH = ("trained", "frozen")
SCORE_TIMESTEPS = ("reference", "matched")
# Module classes the SDXL rewrite trains (its get_esd_trainable_parameters): norms are never trained there.
_SDXL_MODULES = ("Linear", "Conv2d", "LoRACompatibleLinear", "LoRACompatibleConv")
# The output head and time embedding ESD-u keeps frozen (reference L164-170, diffusers names).
_SD_U_EXCLUDED_PREFIXES = ("time_embedding.", "conv_norm_out.", "conv_out.")


def _sd_selects(name: str, module: torch.nn.Module, variant: str) -> bool:
    if variant == "x":
        return "attn2" in name
    return "attn2" not in name and not name.startswith(_SD_U_EXCLUDED_PREFIXES)


def _sdxl_selects(name: str, module: torch.nn.Module, variant: str) -> bool:
    if type(module).__name__ not in _SDXL_MODULES:
        return False
    mod_name = name.rpartition(".")[0]
    if variant == "x":
        return "attn2" in mod_name
    return "attn2" not in mod_name and "emb" not in mod_name and "block" in mod_name


# family -> rule(parameter name, the module owning it, variant)
FILTERS = {"sd": _sd_selects, "sdxl": _sdxl_selects}


def esd_parameter_names(backbone, variant: str) -> list[str]:
    """The denoiser parameters ESD-`variant` trains on this backbone's family (see the module docstring)."""
    check_choice("method.variant", variant, VARIANTS)
    rule = FILTERS.get(backbone.family)
    if rule is None:
        raise MethodConfigError(f"esd has parameter filters for the {sorted(FILTERS)} families only, not "
                                f"{backbone.family!r} (the reference trains UNets); use another method there")
    denoiser = backbone.denoiser
    names = [n for n, _ in denoiser.named_parameters()
             if rule(n, denoiser.get_submodule(n.rpartition(".")[0]), variant)]
    if not names:
        raise MethodConfigError(f"esd variant {variant!r} selects no parameter of this {backbone.family} denoiser")
    return names


def partial_denoising(timesteps: torch.Tensor, t_enc: int, rule: str = "reference") -> torch.Tensor:
    """The DDIM timesteps x_T is denoised through before the prediction is scored, for draw t_enc in [0, S).

    reference: the CompVis sampler with t_start=-1 drops the top timestep, so x_T enters at the second one and
    runs S - t_enc steps (S - 1 for t_enc = 0); matched (the rewrite): the first t_enc timesteps, from the top.
    `timesteps` are the scheduler's, highest first (see the module docstring)."""
    check_choice("method.score_timestep", rule, SCORE_TIMESTEPS)
    if rule == "matched":
        return timesteps[:t_enc]
    return timesteps[1 : 1 + len(timesteps) - max(int(t_enc), 1)]


class _Holder(torch.nn.Module):
    """Holds the denoiser so that functional_call can swap its tensors around one backbone call (`fn`)."""

    def __init__(self, denoiser: torch.nn.Module):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, fn, *args):
        return fn(*args)


@torch.no_grad()
def esd_target(backbone, x: torch.Tensor, t: torch.Tensor, cond, uncond, eta: float) -> torch.Tensor:
    """ε(x_t, t) − η (ε(x_t, c, t) − ε(x_t, t)) of the backbone's current weights (float32), the ESD target."""
    from cad.backbones import Conditioning

    n = x.shape[0]
    both = Conditioning.cat([uncond.take(n), cond.take(n)])
    e0, ep = backbone.predict(torch.cat([x, x]), t, both).float().chunk(2)
    return backbone.combine(e0, ep, -float(eta))  # guidance -eta: e0 - eta (ep - e0), the one CFG formula


@dataclass
class ESD(Method):
    name: str = "esd"
    variant: str = "x"                 # x: ESD-x (cross-attention); u: ESD-u (everything else)
    iterations: int = 1000
    lr: float = 1e-5
    negative_guidance: float = 1.0     # η
    start_guidance: float = 3.0        # CFG scale of the x_t sampling
    ddim_steps: int = 50
    image_size: int | None = None      # pixels per side; None: the model's native size
    sample_with: str = "trained"       # trained (reference) | frozen (the diffusers rewrite)
    score_timestep: str = "reference"  # reference | matched (see the module docstring)

    goal: ClassVar[str] = "erase"
    # Enters the settings, hence the edit cache key: edits trained before x_T entered at the reference's timestep
    # (revision 1: one extra DDIM step from the top) are never reused.
    revision: ClassVar[int] = 2

    def settings(self) -> dict:
        return {**super().settings(), "revision": self.revision}

    def validate(self) -> None:
        check_choice("method.variant", self.variant, VARIANTS)
        check_choice("method.sample_with", self.sample_with, SAMPLE_WITH)
        check_choice("method.score_timestep", self.score_timestep, SCORE_TIMESTEPS)
        check_positive("method.iterations", self.iterations, integer=True)
        check_positive("method.lr", self.lr)
        check_positive("method.ddim_steps", self.ddim_steps, integer=True)
        check_positive("method.negative_guidance", self.negative_guidance, allow_zero=True)
        check_positive("method.start_guidance", self.start_guidance, allow_zero=True)
        if self.image_size is not None:
            check_positive("method.image_size", self.image_size, integer=True)

    def row_fields(self) -> dict:
        return {"variant": self.variant}

    def build(self, ctx: MethodContext) -> MethodOutput:
        from tqdm.auto import tqdm

        from cad.edits import WeightEdit

        bb = ctx.backbone
        start = time.time()
        names = esd_parameter_names(bb, self.variant)
        size = int(self.image_size or bb.default_size())
        bb.check_size(size, size)
        steps = int(self.ddim_steps)
        sched = bb.scheduler(steps, height=size, width=size)
        n_train = int(sched.config.num_train_timesteps)
        if steps > n_train:
            raise MethodConfigError(f"method.ddim_steps={steps} exceeds the model's {n_train} training timesteps")
        timesteps = sched.timesteps
        prompt = str(ctx.concept["prompt"])
        cond = bb.encode(prompt, 1, height=size, width=size)
        uncond = bb.encode("", 1, height=size, width=size)
        made_for = bb.denoiser_identity()

        params = dict(bb.denoiser.named_parameters())
        # The trainable float32 copy; every other tensor enters the trained forward detached, so no gradient
        # reaches (or accumulates on) the pipeline's own parameters.
        trained = {n: params[n].detach().float().clone().requires_grad_(True) for n in names}
        frozen = {f"denoiser.{n}": p.detach() for n, p in params.items() if n not in trained}
        holder = _Holder(bb.denoiser)
        opt = torch.optim.Adam(list(trained.values()), lr=float(self.lr))
        gen = torch.Generator().manual_seed(int(ctx.seed))
        eta = float(self.negative_guidance)
        dtype = bb.dtype  # read once: diffusers computes a model's dtype by walking all its modules

        def with_trained(fn, *args, grad: bool = False):
            swap = {f"denoiser.{n}": p.to(dtype) for n, p in trained.items()}
            return torch.func.functional_call(holder, {**frozen, **swap} if grad else swap, (fn, *args))

        def draw() -> tuple[torch.Tensor, torch.Tensor]:
            """(the DDIM timesteps to run from x_T, the timestep the prediction is scored at)."""
            k = int(torch.randint(steps, (1,), generator=gen))
            run = partial_denoising(timesteps, k, self.score_timestep)
            if self.score_timestep == "matched":
                return run, timesteps[k]
            # The reference's t_enc_ddpm: uniform in t_enc's bin of the training schedule.
            lo, hi = round(k / steps * n_train), round((k + 1) / steps * n_train)
            t = int(torch.randint(lo, max(hi, lo + 1), (1,), generator=gen))
            return run, torch.tensor(t, device=bb.device)

        losses: list[float] = []
        for _ in tqdm(range(int(self.iterations)), desc=f"esd-{self.variant}", disable=not ctx.progress,
                      leave=False):
            run, t = draw()
            with torch.no_grad():
                x = bb.initial_latents(sched, 1, gen, size, size)
                for s in run:
                    args = (sched, x, s, cond, uncond, float(self.start_guidance))
                    x = with_trained(bb.guided_step, *args) if self.sample_with == "trained" else bb.guided_step(*args)
                target = esd_target(bb, x, t, cond, uncond, eta)
            pred = with_trained(bb.predict, x, t, cond, grad=True).float()
            loss = torch.nn.functional.mse_loss(pred, target)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"esd loss became {loss.item()} at iteration {len(losses)}; lower "
                                         f"method.lr (now {self.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))

        meta = {**self.settings(), "method": self.name, "made_for": made_for, "concept": ctx.concept.get("name"),
                "prompt": prompt, "seed": int(ctx.seed), "image_size": size}
        edit = WeightEdit({n: p.detach() for n, p in trained.items()}, meta, mode="replace")
        info = {"loss": losses, "seconds": time.time() - start, "n_tensors": len(names),
                "n_weights": edit.n_weights}
        return MethodOutput(edit, {}, info)
