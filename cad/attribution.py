"""attribute(): alpha_i = w_i * dJ/dw_i for every weight of a component space, for a concept objective.

Sign convention (see cad/objectives.py): scores are alpha of the J being maximised, the first-order
estimate of J(w) - J(w with w_i = 0). CAD-Erase zeroes the top positive alpha of J_erase; CAD-Amplify
zeroes the top negative alpha of J_amplify.

Two estimators of J_erase's gradient, both seeded and deterministic:
- `trajectory` (default): K guided trajectories as one batch; at each step the gradient of that step's
  term is accumulated, then the trajectories advance. 2 UNet calls per step: O(T).
- `restart` (the reference implementation's estimator, mail-research/CAD-attribution4diffusion,
  compute_positive_neurons.py `get_score` with diffuser_custom_generate.py `custom_sample`): for step
  i a fresh trajectory is sampled from noise through i + 1 guided steps, then one gradient is taken at
  timestep t_i. Like the reference, the latent after step i is paired with t_i (it sits one step further
  down the schedule); kept as is for parity studies. 1 + 2 + ... + T guided calls (1,275 at T = 50)
  plus 2 per gradient: O(T^2).
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone

import torch

from cad.backbones import Backbone, wrap
from cad.components import enable_only, get_space, requires_grad_state, restore_requires_grad
from cad.io import package_versions
from cad.objectives import (
    amplify_objective,
    concept_latents,
    erase_objective,
    erase_term,
    gradients,
    schedule_length,
)
from cad.progress import progress as progress_bar
from cad.scores import AttributionScores

OBJECTIVES = ("erase", "amplify")
ESTIMATORS = ("trajectory", "restart")
SIGN_CONVENTION = ("alpha = w * dJ/dw of the maximised J (first-order J(w) - J(w, w_i=0)); CAD-Erase zeroes "
                   "top positive alpha of J_erase, CAD-Amplify zeroes top negative alpha of J_amplify")


def _restart_erase(bb: Backbone, prompt, *, base_prompt, negative_prompt, steps, guidance, num_samples, seed,
                   params, height, width, progress, schedule_steps=None):
    k = num_samples
    size = dict(height=height, width=width, guidance=guidance)
    cond, base = bb.encode(prompt, **size), bb.encode(base_prompt, **size)
    uncond = base if negative_prompt == base_prompt else bb.encode(negative_prompt, **size)
    gen = torch.Generator("cpu").manual_seed(seed)
    acc, calls, terms = gradients(params), 0, []
    length = schedule_length(steps, schedule_steps)
    timesteps = bb.scheduler(length, height=height, width=width).timesteps[:steps]
    for i in progress_bar(range(len(timesteps)), desc="attribution restart", unit="step", enabled=progress):
        # A fresh scheduler per restart: flow-matching schedulers count their own steps.
        sched = bb.scheduler(length, height=height, width=width)
        x = bb.initial_latents(sched, k, gen, height, width)
        for j in range(i + 1):
            x = bb.guided_step(sched, x, timesteps[j], cond, uncond, guidance)
            calls += 1
        term, _, _ = erase_term(bb, sched, x, timesteps[i], cond, base, params, acc)
        calls += 2
        terms.append(float(term))
    return sum(terms), acc.result() if acc else None, calls, terms


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every element is finite, from the extremes (NaN propagates into them): isfinite(t).all()
    builds an abs() copy and two masks, 1.75x the tensor, while all the scores are held."""
    if not t.numel():
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _describe_images(images, image_prompt, latents) -> dict:
    if images is None:
        source = {"generated_from": image_prompt}
    elif isinstance(images, torch.Tensor):
        source = {"tensor": list(images.shape)}
    elif isinstance(images, (list, tuple)):
        source = {"pil_images": len(images)}
    else:
        source = {"folder": str(images)}
    source["count"] = int(latents.shape[0])
    source["latents_hash"] = hashlib.blake2b(latents.contiguous().numpy().tobytes(), digest_size=8).hexdigest()
    return source


def attribute(pipe, prompt: str, *, objective: str = "erase", base_prompt: str = "", negative_prompt: str = "",
              steps: int = 50, guidance: float = 3.0, num_samples: int = 1, seed: int = 0,
              estimator: str = "trajectory", space="ff", images=None, image_prompt: str | None = None,
              num_images: int = 8, image_guidance: float = 7.5, batch_size: int = 8, height: int | None = None,
              width: int | None = None, progress: bool = True,
              schedule_steps: int | None = None) -> AttributionScores:
    """Attribution scores of `prompt`'s concept for every weight of `space` in the denoiser of `pipe` (a
    diffusers pipeline of any supported family, or a cad Backbone; `space` resolves in its family).

    erase: J_erase on K = num_samples guided trajectories (guidance, negative_prompt) against base_prompt.
    amplify: J_amplify on latents of `images` (folder, PIL list, [0,1] tensor) or, with images=None, of
    num_images images the unedited pipeline generates for image_prompt (default: prompt); num_samples
    noise draws per image and timestep. Only the space's tensors get requires_grad (restored after).
    schedule_steps (None: steps): the timesteps are `steps` of a schedule of that length, as in the reference
    code (its 50-step schedule): the first ones (highest noise) for erase, the lowest-noise ones for amplify.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {OBJECTIVES}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; use one of {ESTIMATORS}")
    if objective == "amplify" and estimator == "restart":
        raise ValueError("the restart estimator applies to objective='erase' only (amplify samples no "
                         "trajectory); use estimator='trajectory'")
    if num_samples < 1 or steps < 1:
        raise ValueError(f"num_samples and steps must be >= 1 (got {num_samples}, {steps})")
    schedule_steps = schedule_length(steps, schedule_steps)
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt must be a non-empty string naming the concept")
    bb = wrap(pipe)
    space = get_space(space, bb.family)
    unet = bb.denoiser
    started = time.perf_counter()
    fingerprint, identity = bb.denoiser_fingerprint_and_identity()  # one walk over the weights
    meta = {
        "model": bb.name, "family": bb.family, "prediction_type": bb.prediction_type,
        "unet_fingerprint": fingerprint, "denoiser_identity": identity, "concept": prompt, "objective": objective,
        "estimator": estimator if objective == "erase" else "direct", "steps": steps,
        "schedule_steps": schedule_steps, "num_samples": num_samples,
        "seed": seed, "space": space.describe(), "dtype": str(unet.dtype).replace("torch.", ""),
        "device": str(unet.device), "sign_convention": SIGN_CONVENTION,
    }
    latents = None
    if objective == "amplify":
        latents = concept_latents(bb, images, prompt=image_prompt or prompt, num_images=num_images, seed=seed,
                                  steps=steps, guidance=image_guidance, batch_size=batch_size,
                                  height=height, width=width)
        meta["images"] = _describe_images(images, image_prompt or prompt, latents)
        meta["image_guidance"] = image_guidance if images is None else None
    else:
        meta.update(guidance=guidance, base_prompt=base_prompt, negative_prompt=negative_prompt)

    flags = requires_grad_state(unet)
    try:
        params = enable_only(unet, space)
        if objective == "amplify":
            res = amplify_objective(bb, latents, prompt, steps=steps, num_samples=num_samples, seed=seed,
                                    params=params, batch_size=batch_size, progress=progress,
                                    schedule_steps=schedule_steps)
            value, grads, calls, terms = res.value, res.grads, res.unet_calls, res.terms
        elif estimator == "trajectory":
            res = erase_objective(bb, prompt, base_prompt=base_prompt, negative_prompt=negative_prompt,
                                  steps=steps, guidance=guidance, num_samples=num_samples, seed=seed,
                                  params=params, height=height, width=width, progress=progress,
                                  schedule_steps=schedule_steps)
            value, grads, calls, terms = res.value, res.grads, res.unet_calls, res.terms
        else:
            value, grads, calls, terms = _restart_erase(
                bb, prompt, base_prompt=base_prompt, negative_prompt=negative_prompt, steps=steps,
                guidance=guidance, num_samples=num_samples, seed=seed, params=params, height=height,
                width=width, progress=progress, schedule_steps=schedule_steps)
        with torch.no_grad():
            # alpha = w * grad written into the float32 gradient buffers themselves: a second set of
            # full-size tensors would raise the peak memory by the size of the space.
            scores = {n: grads.pop(n).mul_(p.detach().float()).cpu() for n, p in list(params.items())}
    finally:
        restore_requires_grad(unet, flags)
    bad = [n for n, s in scores.items() if not _all_finite(s)]
    if bad:
        raise FloatingPointError(f"non-finite attribution scores in {bad[:3]} (objective overflow in "
                                 f"{meta['dtype']}?); rerun with dtype='float32'")
    meta.update(unet_calls=calls, objective_value=value, objective_terms=terms,
                n_tensors=len(scores), n_weights=sum(s.numel() for s in scores.values()),
                wall_s=round(time.perf_counter() - started, 3),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                package_versions=package_versions())
    return AttributionScores(scores, meta)
