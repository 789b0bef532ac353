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

from cad import distributed
from cad.backbones import Backbone, wrap
from cad.components import enable_only, get_space, requires_grad_state, restore_requires_grad
from cad.io import package_versions
from cad.memory import attention_for_gradients, checkpointing, encoders_offloaded
from cad.memory import resolve as resolve_memory
from cad.memory import settings as memory_settings
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
                   params, height, width, progress, schedule_steps=None, bucket_ends=(), micro_batch=None,
                   stream=False, rows=None):
    k = num_samples
    lo, hi = rows or (0, k)  # this process's trajectories (cad.distributed), each weighted by its share of K
    size = dict(height=height, width=width, guidance=guidance)
    cond, base = bb.conditioning(prompt, **size), bb.conditioning(base_prompt, **size)
    uncond = base if negative_prompt == base_prompt else bb.conditioning(negative_prompt, **size)
    gen = torch.Generator("cpu").manual_seed(seed)
    acc, calls, terms = gradients(params, bucket_ends, stream), 0, []
    length = schedule_length(steps, schedule_steps)
    timesteps = bb.scheduler(length, height=height, width=width).timesteps[:steps]
    for i in progress_bar(range(len(timesteps)), desc="attribution restart", unit="step", enabled=progress):
        # A fresh scheduler per restart: flow-matching schedulers count their own steps.
        sched = bb.scheduler(length, height=height, width=width)
        x = bb.initial_latents(sched, k, gen, height, width)[lo:hi]  # all K drawn: the generator moves on alike
        if hi == lo:
            terms.append(0.0)
        else:
            for j in range(i + 1):
                x = bb.guided_step(sched, x, timesteps[j], cond, uncond, guidance)
                calls += 1
            term, _, _ = erase_term(bb, sched, x, timesteps[i], cond, base, params, acc, micro_batch=micro_batch,
                                    weight=(hi - lo) / k)
            calls += 2
            terms.append(float(term))
        if acc is not None:
            acc.end_step()
    return sum(terms), acc.result() if acc else None, calls, terms, acc.snapshots if acc else None


def bucket_ends(steps: int, buckets: int) -> list[int]:
    """The last step (1-based, exclusive end) of each of `buckets` contiguous, near-equal groups of `steps`."""
    if not 1 <= buckets <= steps:
        raise ValueError(f"time_buckets={buckets} must lie in 1..steps ({steps}): each bucket holds >= 1 timestep")
    return [round((b + 1) * steps / buckets) for b in range(buckets)]


def bucket_memory_bytes(n_weights: int, buckets: int) -> int:
    """What time_buckets=B holds beside the attribution: B float32 copies of the space's gradient sum."""
    return 4 * n_weights * buckets


def _check_bucket_memory(n_weights: int, buckets: int, device) -> None:
    need = bucket_memory_bytes(n_weights, buckets)
    if torch.device(device).type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import os

        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > 0.5 * free:  # the attribution itself needs the rest
        raise MemoryError(f"time_buckets={buckets} keeps {buckets} float32 copies of the space "
                          f"({n_weights:,} weights): {need / 2**30:.2f} GiB, more than half of the "
                          f"{free / 2**30:.2f} GiB free on {device}; use fewer buckets or a smaller space")


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
              schedule_steps: int | None = None, time_buckets: int | None = None, memory: str = "auto",
              micro_batch: int | None = None) -> AttributionScores:
    """Attribution scores of `prompt`'s concept for every weight of `space` in the denoiser of `pipe` (a
    diffusers pipeline of any supported family, or a cad Backbone; `space` resolves in its family).

    erase: J_erase on K = num_samples guided trajectories (guidance, negative_prompt) against base_prompt.
    amplify: J_amplify on latents of `images` (folder, PIL list, [0,1] tensor) or, with images=None, of
    num_images images the unedited pipeline generates for image_prompt (default: prompt); num_samples
    noise draws per image and timestep. Only the space's tensors get requires_grad (restored after).
    schedule_steps (None: steps): the timesteps are `steps` of a schedule of that length, as in the reference
    code (its 50-step schedule): the first ones (highest noise) for erase, the lowest-noise ones for amplify.
    time_buckets=B (None: none): also the alpha of B contiguous groups of the visited timesteps, in visiting
    order, as `.partials` (AttributionScores each, meta["bucket"]). The full alpha is accumulated as without
    buckets (bit for bit); a bucket is the difference of the float32 running sum at its two ends times w, so
    the partials sum to the full alpha up to float32 rounding (|error| <= ~1e-6 of max |alpha|). Memory:
    B float32 copies of the space (refused when more than half the free memory).
    memory: "fast", "low" or "auto" (cad.memory): a speed/memory trade of the same estimator, whose scores agree
    to float32 summation order. `micro_batch` caps the trajectories / images per gradient pass (low: 1).
    In a process group (cad.distributed: torchrun, submitit) every rank calls this alike: each runs its slice of
    the K trajectories (amplify: of the images), with the x_T and noise one process would draw for them, and the
    float32 gradient sums are all-reduced, so every rank returns the scores of one process's run of the same K
    (to float32 summation order); meta["world_size"] records how many ran it (not part of `.key`).
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
    mem = memory_settings(resolve_memory(memory), micro_batch)
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
        "device": str(unet.device), "sign_convention": SIGN_CONVENTION, "memory": mem.mode,
        "world_size": distributed.world().size,
    }
    progress = progress and distributed.world().is_main
    latents = None
    if objective == "amplify":
        latents = concept_latents(bb, images, prompt=image_prompt or prompt, num_images=num_images, seed=seed,
                                  steps=steps, guidance=image_guidance, batch_size=batch_size,
                                  height=height, width=width)
        meta["images"] = _describe_images(images, image_prompt or prompt, latents)
        meta["image_guidance"] = image_guidance if images is None else None
    else:
        meta.update(guidance=guidance, base_prompt=base_prompt, negative_prompt=negative_prompt)

    ends = ()
    if time_buckets is not None:
        ends = bucket_ends(steps, int(time_buckets))
        _check_bucket_memory(sum(p.numel() for p in space.select(unet).values()), len(ends), unet.device)
    flags = requires_grad_state(unet)
    rows = distributed.shard(latents.shape[0] if objective == "amplify" else num_samples)
    low = dict(micro_batch=mem.micro_batch, stream=mem.stream_half_grads, rows=rows)
    try:
        params = enable_only(unet, space)
        # The prompts are encoded once, then the text encoders and the VAE leave the accelerator for the gradient
        # passes (and come back after); `low` recomputes activations in the backward pass.
        with bb.prompts_cached():
            if objective == "amplify":
                bb.conditioning(prompt, height=latents.shape[2] * bb.vae_scale_factor,
                                width=latents.shape[3] * bb.vae_scale_factor)
            else:
                size = dict(height=height, width=width, guidance=guidance)
                for text in {prompt, base_prompt, negative_prompt}:
                    bb.conditioning(text, **size)
            with encoders_offloaded(bb), checkpointing(unet, mem.checkpointing), attention_for_gradients(bb.device):
                if objective == "amplify":
                    res = amplify_objective(bb, latents, prompt, steps=steps, num_samples=num_samples, seed=seed,
                                            params=params, batch_size=batch_size, progress=progress,
                                            schedule_steps=schedule_steps, bucket_ends=ends, **low)
                    value, grads, calls, terms, snaps = (res.value, res.grads, res.unet_calls, res.terms,
                                                         res.snapshots)
                elif estimator == "trajectory":
                    res = erase_objective(bb, prompt, base_prompt=base_prompt, negative_prompt=negative_prompt,
                                          steps=steps, guidance=guidance, num_samples=num_samples, seed=seed,
                                          params=params, height=height, width=width, progress=progress,
                                          schedule_steps=schedule_steps, bucket_ends=ends, **low)
                    value, grads, calls, terms, snaps = (res.value, res.grads, res.unet_calls, res.terms,
                                                         res.snapshots)
                else:
                    value, grads, calls, terms, snaps = _restart_erase(
                        bb, prompt, base_prompt=base_prompt, negative_prompt=negative_prompt, steps=steps,
                        guidance=guidance, num_samples=num_samples, seed=seed, params=params, height=height,
                        width=width, progress=progress, schedule_steps=schedule_steps, bucket_ends=ends, **low)
        # each rank summed its share of the trajectories (images): the total is one process's sum
        distributed.all_reduce_sum([*grads.values(), *(g for snap in snaps or () for g in snap.values())])
        terms = distributed.sum_floats(terms)
        value, calls = sum(terms), distributed.max_int(calls)  # calls: each rank's (batched) denoiser calls
        with torch.no_grad():
            # alpha = w * grad written into the float32 gradient buffers themselves: a second set of
            # full-size tensors would raise the peak memory by the size of the space.
            partials = _bucket_scores(snaps, params) if ends else None
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
    out = AttributionScores(scores, meta)
    if partials is not None:
        bounds = [0, *ends]
        out.partials = [AttributionScores(part, {**meta, "bucket": b, "bucket_steps": [bounds[b], bounds[b + 1]],
                                                 "time_buckets": len(ends)})
                        for b, part in enumerate(partials)]
        meta["time_buckets"] = [[bounds[b], bounds[b + 1]] for b in range(len(ends))]
    return out


def _bucket_scores(snapshots, params) -> list[dict[str, torch.Tensor]]:
    """alpha of each bucket: (running sum at its end - at its start) * w, on the CPU."""
    out, previous = [], None
    for snap in snapshots:
        out.append({n: ((g - previous[n]) if previous is not None else g).mul(params[n].detach().float()).cpu()
                    for n, g in snap.items()})
        previous = snap
    return out
