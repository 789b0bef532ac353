"""GPU benchmark (`make bench-gpu`): every family's attribution, generation and edits at the real architectures and
native resolutions, beside the planner's estimate (cad.plan), in one short window (< 8 minutes on an H100/H200).

For sd1 (SD 1.4, 512 px), sdxl (1024), sd35m and sd35l (1024) and flux (FLUX.1 schnell, 1024), random weights in
the model config's dtype, on CUDA:
- attribution: one gradient pass of K = 1 in each memory mode (benchmarks.denoisers.gradient_pass: cad's own
  Gradients, checkpointing and streamed half gradients) and one no-grad forward; seconds per pass (mean of 3 after
  a warm-up) and the peak torch.cuda.max_memory_allocated, also at half the native latent size, so the planner's
  activation coefficients (a + b L) and efficiencies can be fitted from this run (--coefficients FILE writes them;
  cad.plan then prefers them to the CPU-measured ones); seconds per attribution step = one gradient pass + one
  base forward (the objective's two calls);
- generation: images/s of cad.generate against a plain diffusers call with the same pipeline, prompts, seeds,
  steps and batch (sd1 and sdxl: the real UNet with small random text encoders; each with and without
  `compile=True` where the time budget allows);
- each method's edit cost: CAD = the attribution (steps x step seconds), ESD = iterations x (CFG sampling of
  half the DDIM steps + 2 frozen calls + 1 gradient pass), UCE / RECE = the closed-form solves timed on the GPU,
  ConceptPrune = prompts x tau CFG calls; composed from the measured passes, beside the planner's.
A family whose weights and sums would not fit the free memory, or whose time budget (CAD_GPU_BUDGET_S per family,
default 80 s) is spent, is skipped and says so. Writes bench_gpu.json and bench_gpu.md to --out (default
benchmarks/results/). On a machine without CUDA it refuses (exit 2) unless --cpu-smoke, which runs the same code
on the toy kit's UNet at tiny sizes on the CPU (tests/benchmarks use it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks import denoisers

# arch -> (model config name, dtype, native latent side, steps of the model card, CFG?)
FAMILIES = {"sd1": ("sd14", "float16", 64, 50, True), "sdxl": ("sdxl", "float16", 128, 50, True),
            "sd35m": ("sd35m", "bfloat16", 128, 40, True), "sd35l": ("sd35l", "bfloat16", 128, 28, True),
            "flux": ("flux_schnell", "bfloat16", 128, 4, False)}
SMOKE = {"toy": ("toy", "float32", 8, 4, True)}
MODES = ("infer", "low", "fast")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_pass(fn, device: str, repeats: int = 3) -> tuple[float, int]:
    """(mean seconds after one warm-up, peak bytes allocated above the start during the timed calls)."""
    fn()
    _sync(device)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    secs = (time.perf_counter() - t0) / repeats
    peak = torch.cuda.max_memory_allocated() - start_mem if device == "cuda" else 0
    return secs, peak


def measure_arch(arch: str, spec: tuple, device: str, budget_s: float) -> dict:
    from functools import partial

    name, dtype, latent, steps, _ = spec
    t0 = time.perf_counter()
    model = denoisers.random_denoiser(arch, getattr(torch, dtype), device)
    params = denoisers.space_params(model, denoisers.family_of(arch))
    weights = torch.cuda.memory_allocated() if device == "cuda" else 0
    res = {"arch": arch, "model": name, "dtype": dtype, "latent": latent, "resolution": latent * 8,
           "params": sum(p.numel() for p in model.parameters()),
           "space_numel": sum(p.numel() for p in params.values()),
           "space_max": max(p.numel() for p in params.values()), "weights_bytes": weights, "sizes": {},
           "build_s": time.perf_counter() - t0}
    for lat in (latent, latent // 2):
        if time.perf_counter() - t0 > budget_s:
            res.setdefault("skipped", []).append(f"latent {lat}: time budget spent")
            continue
        kw = denoisers.inputs(arch, model, 1, lat)
        row = {"seq": denoisers.sequence_length(arch, lat)}
        for mode in MODES:
            fn = (partial(denoisers.forward, model, kw) if mode == "infer"
                  else partial(denoisers.gradient_pass, model, params, kw, mode))
            try:
                secs, peak = timed_pass(fn, device, repeats=3 if device == "cuda" else 1)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                row[mode] = {"oom": True}
                continue
            row[mode] = {"seconds": secs, "delta": peak, "peak_total": peak + weights}
        # CFG-batch forward (generation and ESD sampling run 2 samples a call)
        kw2 = denoisers.inputs(arch, model, 2, lat)
        secs, peak = timed_pass(partial(denoisers.forward, model, kw2), device, repeats=3 if device == "cuda" else 1)
        row["infer2"] = {"seconds": secs, "delta": peak}
        res["sizes"][str(lat)] = row
    nat = res["sizes"].get(str(latent), {})
    res["plan"] = plan_beside(arch, latent * 8, dtype, device)
    res["uce_solve_s"] = uce_solve_seconds(model, device)
    if "fast" in nat and "seconds" in nat["fast"]:
        res["step_s"] = {m: nat[m]["seconds"] + nat["infer"]["seconds"] for m in ("low", "fast")
                         if "seconds" in nat.get(m, {})}
        res["edits"] = edit_costs(arch, res, steps, device)
    del model, params
    if device == "cuda":
        torch.cuda.empty_cache()
    return res


def plan_beside(arch: str, resolution: int, dtype: str, device: str) -> dict:
    """The planner's estimate of what measure_arch measures (None where it lacks coefficients)."""
    from cad import plan

    out = {}
    for mode in ("infer", "low", "fast"):
        try:
            out[mode] = {"seconds": plan.seconds(arch, mode, resolution, 1, dtype, _gpu_name(device))}
            if mode != "infer":
                out[mode]["peak"] = plan.attribution_memory(arch, resolution=resolution, dtype=dtype, mode=mode,
                                                            batch=1, device="cuda")["total"]
        except KeyError as err:
            out[mode] = {"error": str(err)}
    return out


def uce_solve_seconds(model, device: str) -> float:
    """The closed form of UCE once: for every cross-attention key/value projection (out, in), a ridge solve of an
    (in x in) system and the products around it, in float32 as cad.methods.uce does."""
    kv = [p for n, p in model.named_parameters() if n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]
    if not kv:
        return 0.0
    _sync(device)
    t0 = time.perf_counter()
    for w in kv:
        w32 = w.detach().float()
        c = torch.randn(w32.shape[1], 16, device=w32.device)
        mat = c @ c.T + 0.5 * torch.eye(w32.shape[1], device=w32.device)
        torch.linalg.solve(mat, (w32 @ mat).T)
    _sync(device)
    return time.perf_counter() - t0


def edit_costs(arch: str, res: dict, steps: int, device: str) -> dict:
    """Seconds of each method's edit, composed from the passes measured here, beside the planner's."""
    from cad import plan

    nat = res["sizes"][str(res["latent"])]
    inf1, inf2, fast = nat["infer"]["seconds"], nat["infer2"]["seconds"], nat["fast"]["seconds"]
    out = {"cad_erase": {"measured": steps * res["step_s"]["fast"], "steps": steps},
           "esd": {"measured": 1000 * (25 * inf2 + inf2 + fast), "iterations": 1000},
           "uce": {"measured": res.get("uce_solve_s")},
           "conceptprune": {"measured": 2 * 30 * 10 * inf2}}
    gpu = _gpu_name(device)
    for method in ("esd", "uce", "conceptprune"):
        try:
            st = plan.edit_stage(method, arch, resolution=res["resolution"], dtype=res["dtype"], gpu=gpu)
            out[method]["plan"] = st.seconds if st else None
        except KeyError:
            out[method]["plan"] = None
    try:
        st = plan.attribution_stage(arch, resolution=res["resolution"], dtype=res["dtype"], mode="fast", steps=steps,
                                    gpu=gpu)
        out["cad_erase"]["plan"] = st.seconds
    except KeyError:
        out["cad_erase"]["plan"] = None
    del inf1
    return out


def _gpu_name(device: str) -> str | None:
    return torch.cuda.get_device_name() if device == "cuda" else None


# Generation settings per family: (images, batch) at the native latent; 8 steps, guidance 3.
GEN = {"sd1": (32, 8), "sdxl": (8, 4), "toy": (8, 4)}


def generation(arch: str, device: str, compile_too: bool, latent: int | None = None) -> dict:
    """images/s of cad.generate and of a plain pipeline call, same settings (GEN's images and batch, 8 steps), at the
    family's native latent (or `latent`): rows for the contiguous and the channels-last denoiser and, with
    `compile_too`, the compiled one; each with the peak memory allocated and the planner's estimate beside it."""
    from benchmarks.bench_generation import measure
    from cad import plan
    from evaluation.benchmarks import Item

    name, dtype, native, _, _ = (FAMILIES | SMOKE)[arch]
    latent = int(latent or native)
    if arch == "toy":
        from cad.toy.kit import load_kit

        pipe = load_kit().load_pipeline()
        pipe.to(device, getattr(torch, dtype))
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe = _real_pipeline(arch, device)
        pipe.vae.config.force_upcast = False
    size = latent * pipe.vae_scale_factor
    n, batch = GEN[arch]
    items = [Item(f"i{i}", f"a photo of a thing number {i}", i) for i in range(n)]
    out = {"size": size, "latent": latent, "steps": 8, "batch": batch, "images": n, "rows": {},
           "note": "the real denoiser with tiny random text encoders and a tiny VAE: the denoiser's share is native"}
    kw = dict(steps=8, guidance=3.0, batch_size=batch, size=size, repeats=2)
    rows = {"contiguous": dict(channels_last=False), "channels_last": dict(channels_last=True)}
    if compile_too:
        rows["compiled, channels_last"] = dict(compile=True, channels_last=True)
        rows["compiled, contiguous"] = dict(compile=True, channels_last=False)
    with torch.no_grad():
        for row, opts in rows.items():
            try:
                out["rows"][row] = measure(pipe, items, **kw, **opts)
            except Exception as err:  # compile support differs between torch builds: report, do not fail
                out["rows"][row] = {"error": f"{type(err).__name__}: {err}"[:300]}
    try:
        st = plan.generation_stage(arch, resolution=latent * 8, dtype=dtype, images=n,
                                   steps=8, batch=batch, gpu=_gpu_name(device),
                                   device="cuda" if device == "cuda" else "cpu", calibrated=False)
        # the plan holds real encoders and VAE; this pipeline's are tiny, so compare the denoiser's share
        out["plan"] = {"seconds": st.seconds, "peak": st.peak_bytes,
                       "peak_denoiser": st.peak_bytes - (plan.ENCODER_PARAMS.get(arch, 0)
                                                         + plan.VAE_PARAMS.get(arch, 0)) * plan.DTYPE_BYTES[dtype]}
    except (KeyError, AttributeError) as err:
        out["plan"] = {"error": str(err)}
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def _real_pipeline(arch: str, device: str):
    """benchmarks.bench_families.real_arch_pipeline of a FAMILIES entry, all of it on `device` in the family's dtype,
    without progress bars."""
    from benchmarks.bench_families import real_arch_pipeline

    dtype = getattr(torch, FAMILIES[arch][1])
    pipe = real_arch_pipeline(arch, dtype, device)
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def attribute_api(arch: str, device: str, modes=("low", "fast")) -> dict:
    """cad.attribute itself (not the bare passes) on the real architecture at its native latent, K = 1, one step, in
    each memory mode: seconds, peak memory and finite scores, with torch's SDPA backends as the user has them (the
    cuDNN-attention backward failure on FLUX must be avoided by cad.attribute, not by this benchmark)."""
    from cad.attribution import attribute

    name, dtype, latent, _, _ = FAMILIES[arch]
    out = {"arch": arch, "model": name, "dtype": dtype, "resolution": latent * 8,
           "cudnn_sdp_enabled": bool(torch.backends.cuda.cudnn_sdp_enabled()) if device == "cuda" else None,
           "modes": {}}
    pipe = _real_pipeline(arch, device)
    size = latent * pipe.vae_scale_factor
    from cad.backbones import wrap

    # what every attribution records (and the runner checks): the denoiser's fingerprint and identity, one walk
    # over the weights, timed alone; the cad.attribute calls below find it memoised (cad.backbones.digests)
    bb = wrap(pipe)
    t0 = time.perf_counter()
    bb.denoiser_fingerprint_and_identity()
    out["fingerprint_s"] = time.perf_counter() - t0
    out["weights_bytes"] = sum(p.numel() * p.element_size() for p in bb.denoiser.parameters())
    for mode in modes:
        try:
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            scores = attribute(pipe, "a photo of a cat", steps=1, num_samples=1, height=size, width=size,
                               memory=mode, progress=False)
            _sync(device)
            finite = all(bool(torch.isfinite(v).all()) for v in scores.scores.values())
            out["modes"][mode] = {"seconds": time.perf_counter() - t0, "finite": finite,
                                  "tensors": len(scores.scores),
                                  "peak": torch.cuda.max_memory_allocated() if device == "cuda" else None}
        except Exception as err:
            import traceback

            out["modes"][mode] = {"error": f"{type(err).__name__}: {err}"[:400], "trace": traceback.format_exc()[-2000:]}
            break  # a failed CUDA kernel can poison the context; the next mode would only report that
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def methods_measured(arch: str, device: str, esd_iterations: int = 8) -> dict:
    """ESD and ConceptPrune run by cad's own method code (cad.methods) on the real architecture at its native size,
    a few iterations / prompts, timed, beside the planner's cost of the same settings; per-iteration and
    per-prompt figures scale the full edits (ESD's t_enc is drawn per iteration, so a few iterations carry
    sampling noise: the mean DDIM run is half the schedule)."""
    from cad import plan
    from cad.backbones import wrap
    from cad.methods.base import MethodContext
    from cad.methods.conceptprune import ConceptPrune
    from cad.methods.esd import ESD

    name, dtype, latent, _, _ = FAMILIES[arch]
    pipe = _real_pipeline(arch, device)
    bb = wrap(pipe)
    size = latent * pipe.vae_scale_factor
    gpu = _gpu_name(device)
    out = {"arch": arch, "model": name, "resolution": latent * 8}
    concept = {"name": "cat", "prompt": "cat", "kind": "object"}
    try:
        esd = ESD(iterations=esd_iterations, image_size=size)
        ESD(iterations=1, image_size=size).build(MethodContext(backbone=bb, concept=concept, seed=1))  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        esd.build(MethodContext(backbone=bb, concept=concept, seed=0))
        _sync(device)
        secs = time.perf_counter() - t0
        st = plan.edit_stage("esd", arch, resolution=latent * 8, dtype=dtype, settings={"iterations": 1000}, gpu=gpu,
                             calibrated=False)
        out["esd"] = {"iterations": esd_iterations, "seconds": secs, "per_iteration": secs / esd_iterations,
                      "full_1000": 1000 * secs / esd_iterations, "plan_full_1000": st.seconds if st else None}
    except Exception as err:
        out["esd"] = {"error": f"{type(err).__name__}: {err}"[:400]}
    try:
        things = ["in a park", "on a table"]
        cp = ConceptPrune(things=things)
        ctx = MethodContext(backbone=bb, concept=concept, attribution={"height": size, "width": size})
        _sync(device)
        t0 = time.perf_counter()
        res = cp.build(ctx)
        _sync(device)
        secs = time.perf_counter() - t0
        prompts = 2 * len(things)
        st = plan.edit_stage("conceptprune", arch, resolution=latent * 8, dtype=dtype, gpu=gpu, calibrated=False)
        full_prompts = st.parts["prompts"] if st else None
        out["conceptprune"] = {"prompts": prompts, "timesteps": res.info["timesteps"], "seconds": secs,
                               "per_prompt": secs / prompts,
                               "full": None if full_prompts is None else secs / prompts * full_prompts,
                               "plan_full": st.seconds if st else None, "full_prompts": full_prompts}
    except Exception as err:
        out["conceptprune"] = {"error": f"{type(err).__name__}: {err}"[:400]}
    del pipe, bb
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def markdown(report: dict) -> str:
    gb = 1e9
    lines = [f"# bench_gpu: {report['device']}, {report['date']}", "",
             f"torch {report['torch']}; random weights at the real architectures; K = 1; times are means of 3 after "
             "a warm-up. Planner figures are cad.plan's estimate from the coefficients it had before this run "
             f"({report['plan_source']}).", "",
             "| model | res | dtype | mode | step s (measured / plan) | peak GB allocated (measured / plan) |",
             "|---|---|---|---|---|---|"]
    for r in report["archs"]:
        if "skipped" in r and not r.get("sizes"):
            lines.append(f"| {r['arch']} | | | | skipped: {r['skipped']} | |")
            continue
        nat = r["sizes"].get(str(r["latent"]), {})
        for mode in ("low", "fast"):
            m, p = nat.get(mode, {}), r["plan"].get(mode, {})
            if m.get("oom"):
                lines.append(f"| {r['model']} | {r['resolution']} | {r['dtype']} | {mode} | out of memory | |")
                continue
            step = r.get("step_s", {}).get(mode)
            pstep = p.get("seconds", math.nan) + r["plan"]["infer"].get("seconds", math.nan)
            lines.append(f"| {r['model']} | {r['resolution']} | {r['dtype']} | {mode} | "
                         f"{step if step is None else f'{step:.3f}'} / {pstep:.3f} | "
                         f"{m.get('peak_total', 0) / gb:.1f} / {p.get('peak', math.nan) / gb:.1f} |")
    lines += ["", "| model | edit | measured (composed from the passes) | plan |", "|---|---|---|---|"]
    for r in report["archs"]:
        for method, e in (r.get("edits") or {}).items():
            meas = e.get("measured")
            lines.append(f"| {r['model']} | {method} | {_s(meas)} | {_s(e.get('plan'))} |")
    if report.get("generation"):
        lines += ["", "| model | denoiser | images/s cad.generate / plain diffusers | ratio | cad's time outside the "
                  "pipeline calls | images | peak GB (measured / plan's denoiser share) |", "|---|---|---|---|---|---|---|"]
        for arch, g in report["generation"].items():
            if "error" in g:
                lines.append(f"| {arch} | | {g['error']} | | | | |")
                continue
            plan_peak = (g.get("plan") or {}).get("peak_denoiser")
            for row, m in g["rows"].items():
                head = (f"{arch} (latent {g.get('latent', '?')}: native; tiny VAE {g['size']} px, {g['steps']} steps, "
                        f"batch {g['batch']}, {g['images']} images)")
                if "error" in m:
                    lines.append(f"| {head} | {row} | {m['error']} | | | | |")
                    continue
                outside = m["cad_s"] - m["cad_in_pipeline_s"]
                peak = "" if m.get("peak_bytes") is None else f"{m['peak_bytes'] / gb:.1f}"
                same = "same" if m["same_images"] else f"max gap {m['pixel_max']}"
                lines.append(f"| {head} | {row} | {m['cad_img_per_s']:.2f} / {m['plain_img_per_s']:.2f} | "
                             f"{m['ratio']:.3f} | {outside:.3f} s of {m['cad_s']:.2f} s | {same} | {peak} / "
                             f"{'n/a' if plan_peak is None else f'{plan_peak / gb:.1f}'} |")
    if report.get("api"):
        lines += ["", "| model | cad.attribute, K = 1, 1 step | seconds | peak GB | scores |", "|---|---|---|---|---|"]
        for arch, r in report["api"].items():
            if "error" in r:
                lines.append(f"| {arch} | failed: {r['error'][:160]} | | | |")
            elif "fingerprint_s" in r:
                lines.append(f"| {r['model']} | the weights' fingerprint and identity ({r['weights_bytes'] / gb:.1f} "
                             f"GB), one walk timed alone (memoised for the calls below) | {r['fingerprint_s']:.2f} | | |")
            for mode, m in r.get("modes", {}).items():
                if "error" in m:
                    lines.append(f"| {r['model']} | {mode} | failed: {m['error'][:160]} | | |")
                    continue
                peak = "" if m.get("peak") is None else f"{m['peak'] / gb:.1f}"
                lines.append(f"| {r['model']} | {mode} (cuDNN SDPA enabled globally: {r['cudnn_sdp_enabled']}) | "
                             f"{m['seconds']:.2f} | {peak} | {m['tensors']} tensors, "
                             f"{'finite' if m['finite'] else 'NOT FINITE'} |")
    if report.get("methods"):
        lines += ["", "| model | edit run by cad.methods | measured | full edit (scaled) | plan of the full edit |",
                  "|---|---|---|---|---|"]
        for arch, r in report["methods"].items():
            if "error" in r:
                lines.append(f"| {arch} | | failed: {r['error'][:160]} | | |")
                continue
            e, c = r.get("esd", {}), r.get("conceptprune", {})
            lines.append(f"| {r['model']} | esd | " + (e["error"] if "error" in e else
                         f"{e['iterations']} iterations in {_s(e['seconds'])} | {_s(e['full_1000'])} (1000 it.) | "
                         f"{_s(e['plan_full_1000'])} |"))
            lines.append(f"| {r['model']} | conceptprune | " + (c["error"] if "error" in c else
                         f"{c['prompts']} prompts x {c['timesteps']} steps in {_s(c['seconds'])} | "
                         f"{_s(c['full'])} ({c['full_prompts']} prompts) | {_s(c['plan_full'])} |"))
    return "\n".join(lines) + "\n"


def _s(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g} s" if x < 90 else f"{x / 60:.1f} min" if x < 5400 else f"{x / 3600:.2f} h"


def coefficients_from(report: dict, previous: dict | None = None) -> dict:
    """The planner's "cuda" section from this run: activations (a + b L per mode) and efficiencies per arch from the
    passes; the weights' hashing rate from the cad.attribute runs; each method's measured / composed factor from the
    cad.methods runs; each family's plain-generation measured / composed factor. What this run did not measure is kept from `previous` (the section it replaces)."""
    from cad import plan

    out = {k: v for k, v in (previous or {}).items() if k in ("fingerprint_bytes_per_s", "edit_factors",
                                                              "generation_factors", "measured_parts")}
    archs, eff = {}, {}
    for r in report["archs"]:
        ms = []
        for row in r.get("sizes", {}).values():
            m = {"arch": r["arch"], "dtype": r["dtype"], "seq": row["seq"], "space_numel": r["space_numel"],
                 "space_max": r["space_max"], "batch": 1}
            m.update({mode: row[mode] for mode in MODES if "seconds" in row.get(mode, {})})
            ms.append(m)
        if ms:
            archs[r["arch"]] = plan.fit_activations(ms)
            nat = r["sizes"].get(str(r["latent"]), {})
            half, single = plan.GPU_PEAK[plan._gpu(report["device"])[0]][:2]
            peak = single if r["dtype"] == "float32" else half
            eff[r["arch"]] = {mode: plan.pass_flops(r["arch"], mode, r["resolution"], 1) / nat[mode]["seconds"] / peak
                              for mode in MODES if "seconds" in nat.get(mode, {})}
    if archs:
        out.update({"device": report["device"], "date": report["date"], "how": "torch.cuda.max_memory_allocated "
                    "above the weights; bench_gpu.py", "archs": archs, "efficiency": eff,
                    "native": {r["arch"]: r["resolution"] for r in report["archs"] if r.get("sizes")}})
    else:  # no passes measured this time: the activation fits stay as they were
        out.update({k: v for k, v in (previous or {}).items() if k not in out})
    # the largest model hashed gives the steadiest rate (bytes hashed: twice the weights unless float16)
    fps = [r for r in report.get("api", {}).values() if r.get("fingerprint_s")]
    if fps:
        r = max(fps, key=lambda r: r["weights_bytes"])
        out["fingerprint_bytes_per_s"] = r["weights_bytes"] * (1 if r["dtype"] == "float16" else 2) / r["fingerprint_s"]
    factors = dict(out.get("edit_factors", {}))
    for r in report.get("methods", {}).values():
        e, c = r.get("esd", {}), r.get("conceptprune", {})
        if e.get("full_1000") and e.get("plan_full_1000"):
            factors["esd"] = e["full_1000"] / e["plan_full_1000"]
        if c.get("full") and c.get("plan_full"):
            factors["conceptprune"] = c["full"] / c["plan_full"]
    if factors:
        out["edit_factors"] = factors
    gen = dict(out.get("generation_factors", {}))
    for arch, g in report.get("generation", {}).items():
        plain, composed = (g.get("rows") or {}).get("contiguous", {}).get("plain_s"), (g.get("plan") or {}).get("seconds")
        if plain and composed and arch != "toy":
            gen[arch] = plain / composed
    if gen:
        out["generation_factors"] = gen
    return out


PARTS = ("attribution", "generation", "api", "methods")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="run on the toy UNet at tiny sizes on the CPU")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--coefficients", default=None, help="write the planner's cuda coefficients into this file")
    ap.add_argument("--archs", default=",".join(FAMILIES))
    ap.add_argument("--generation", default="sd1,sdxl", help="families whose generation is timed (none: skip)")
    ap.add_argument("--compile", default="sd1", help="families whose generation is also timed compiled")
    ap.add_argument("--api", default="sd1,flux", help="families run through cad.attribute itself")
    ap.add_argument("--api-modes", default="low,fast", help="memory modes of the cad.attribute runs")
    ap.add_argument("--methods", default="sd1", help="families whose ESD and ConceptPrune run by cad.methods")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"which of {PARTS} to run")
    args = ap.parse_args([] if argv is None else argv)  # None: called by benchmarks.run (make bench)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("bench_gpu needs CUDA (none visible here); run `make bench-gpu` on a GPU machine, or "
              "`python -m benchmarks.bench_gpu --cpu-smoke` for the tiny CPU check", file=sys.stderr)
        return 0 if argv is None else 2  # inside `make bench` on a CPU: skipped, not failed
    from cad import plan

    parts = set(args.parts.split(","))
    device = "cpu" if args.cpu_smoke else "cuda"
    specs = SMOKE if args.cpu_smoke else {a: FAMILIES[a] for a in args.archs.split(",") if a in FAMILIES}
    budget = float(os.environ.get("CAD_GPU_BUDGET_S", 80))
    started = time.perf_counter()
    report = {"device": "cpu (smoke)" if args.cpu_smoke else torch.cuda.get_device_name(),
              "date": datetime.now(timezone.utc).date().isoformat(), "torch": torch.__version__,
              "plan_source": plan.source_label("cuda"), "archs": [], "generation": {}, "api": {}, "methods": {}}

    def stamp(what: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {what} ...", flush=True)

    def guarded(fn, *a, **kw) -> dict:
        try:
            return fn(*a, **kw)
        except Exception as err:
            import traceback

            return {"error": f"{type(err).__name__}: {err}"[:300], "trace": traceback.format_exc()[-3000:]}

    if "attribution" in parts:
        for arch, spec in specs.items():
            if device == "cuda":
                free, _ = torch.cuda.mem_get_info()
                need = denoisers_need(arch, spec)
                if need > free:
                    report["archs"].append({"arch": arch, "skipped": f"needs ~{need / 1e9:.0f} GB, {free / 1e9:.0f} free"})
                    continue
            stamp(arch)
            # the bare passes pick their attention kernels themselves: cuDNN's fused attention failed FLUX's
            # backward on an H200 (torch 2.11 cu130); cad.attribute leaves it out the same way (cad.memory)
            from cad.memory import attention_for_gradients

            with attention_for_gradients(device):
                r = guarded(measure_arch, arch, spec, device, budget)
            report["archs"].append({"arch": arch, "skipped": r.pop("error"), **r} if "error" in r else r)
            _write(report, args.out)
    if "generation" in parts:
        gen_archs = ["toy"] if args.cpu_smoke else [a for a in args.generation.split(",") if a in GEN]
        for arch in gen_archs:
            stamp(f"generation {arch}")
            report["generation"][arch] = guarded(generation, arch, device,
                                                 compile_too=arch in args.compile.split(","))
            _write(report, args.out)
    if "api" in parts and not args.cpu_smoke:
        for arch in [a for a in args.api.split(",") if a in FAMILIES]:
            stamp(f"cad.attribute {arch}")
            report["api"][arch] = guarded(attribute_api, arch, device, modes=tuple(args.api_modes.split(",")))
            _write(report, args.out)
    if "methods" in parts and not args.cpu_smoke:
        for arch in [a for a in args.methods.split(",") if a in FAMILIES]:
            stamp(f"methods {arch}")
            report["methods"][arch] = guarded(methods_measured, arch, device)
            _write(report, args.out)
    report["wall_s"] = time.perf_counter() - started
    _write(report, args.out)
    if args.coefficients:
        data = plan.load_coefficients(args.coefficients)
        key = "cpu-smoke" if args.cpu_smoke else "cuda"
        devices = data.setdefault("devices", {})
        devices[key] = coefficients_from(report, devices.get(key))
        plan.save_coefficients(data, args.coefficients)
    print(markdown(report))
    print(f"bench_gpu: {report['wall_s']:.0f} s; wrote {args.out}/bench_gpu.json and bench_gpu.md", flush=True)
    return 0


def denoisers_need(arch: str, spec: tuple) -> int:
    """Weights + float32 sums + a full half set: what must fit before the first pass (an OOM is caught anyway)."""
    from cad import plan

    c = plan.counts(arch)
    return c["params"] * plan.DTYPE_BYTES[spec[1]] + 6 * c["space_numel"]


def _write(report: dict, out: str) -> None:
    from cad.io import atomic_write_text

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "bench_gpu.json", json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(folder / "bench_gpu.md", markdown(report))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
