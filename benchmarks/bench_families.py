"""Family benchmark: trajectory attribution time against its call floor on every family, and peak memory.

1. Time, per family (sd, sdxl, sd3, flux) at tiny size (cad.tiny builders, 32 px images = 16x16 latents):
   `cad.attribute(pipe, "a red circle", steps=T, guidance=3 (0 for flux), estimator="trajectory")` against
   the floor measured in the same run, each part timed alone:
   - T gradient calls: `bb.predict` on the conditional prompt + squared-norm loss + `torch.autograd.grad`
     over the family's `ff` space (the parameters `enable_only` leaves trainable), as the objective does;
   - T base calls: no-grad `bb.predict` on the base prompt "".
   CFG's unconditional prediction is no extra call in cad: with negative_prompt == base_prompt ("" both) the
   base prediction doubles as the unconditional one (cad/objectives.py), so the floor has 2T calls for every
   family (FLUX: no CFG at all, also 2T). The attribution time includes everything `attribute` does
   (prompt encoding, schedule, the two weight hashes, the CFG combine and scheduler step, scores = w * grad).
   Repeated CAD_BENCH_REPEATS times (default 5), interleaved; the ratio is quoted from the medians (and from
   the minima). Target <= 1.15x.
2. Peak memory, SD 1.4 and SDXL base UNet architectures (cad.architectures, real configs) with random
   weights: `build_on_meta` -> `to_empty("cpu")` -> normal(0, 0.02) fill, float32. The UNet sits in a
   pipeline with the tiny VAE and tiny CLIP text encoders whose widths match the real conditioning
   (SD 1.4: hidden 768; SDXL: 768 + 1280 = 2048 cross-attention, pooled 1280, time-id embedding 256), so
   `cad.attribute` runs unchanged. Each measurement is its own subprocess: build, then the resident set
   (psutil RSS) is read, then the measured call runs while a thread samples RSS every 1 ms; the figure is
   the sampled peak minus that baseline (the memory the call adds on top of the loaded model), also given
   as the process's total peak. Measured calls:
   - `attribution`: cad.attribute(..., steps=CAD_BENCH_MEM_STEPS (2), guidance 3, trajectory);
   - `fwdbwd`: one gradient call of the objective (predict on the prompt + loss + autograd.grad over `ff`).
   Target: attribution peak within 1.3x of one forward+backward. Its floor is above 1x at 2 or more
   steps: from the second step on, the float32 gradient sums (one set of gradients, which the single pass
   also holds at its end) coexist with that step's whole activation graph and one tensor's fresh gradient,
   where the single pass frees activations as its gradients appear. Beside RSS, malloc's in-use bytes
   (glibc mallinfo2) are sampled the same way: RSS also counts freed memory glibc keeps (fragmentation,
   a few hundredths of the ratio from run to run), in-use bytes do not. SDXL needs ~18 GB in float32; it
   is skipped (and says so) when the machine has less available memory than the estimate.

Environment: CAD_BENCH_THREADS, CAD_BENCH_FAMILY_STEPS (10), CAD_BENCH_REPEATS (5), CAD_BENCH_MEM_LATENT (16),
CAD_BENCH_MEM_STEPS (2), CAD_BENCH_MEM (comma list of sd1,sdxl; default both; "none" skips part 2).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

PROMPT = "a red circle"
SIZE = 32  # pixels: 16x16 latents with the tiny two-block VAEs
ROWS: list[tuple[str, str]] = []


def _row(label: str, value: str) -> None:
    ROWS.append((label, value))
    print(f"{label:<58} {value}", flush=True)


# ---- 1. time against the floor --------------------------------------------------------------------------
def tiny_pipelines() -> dict:
    from cad.tiny import (
        build_tiny_flux_pipeline,
        build_tiny_pipeline,
        build_tiny_sd3_pipeline,
        build_tiny_sdxl_pipeline,
    )

    return {"sd": (build_tiny_pipeline, 3.0), "sdxl": (build_tiny_sdxl_pipeline, 3.0),
            "sd3": (build_tiny_sd3_pipeline, 3.0), "flux": (build_tiny_flux_pipeline, 0.0)}


def floor_parts(bb, steps: int) -> tuple[float, float]:
    """(seconds of T gradient calls, seconds of T base calls), each timed alone, as the objective makes them."""
    from cad.components import enable_only, get_space, requires_grad_state, restore_requires_grad

    unet = bb.denoiser
    size = dict(height=SIZE, width=SIZE)
    cond, base = bb.encode(PROMPT, **size), bb.encode("", **size)
    sched = bb.scheduler(steps, **size)
    x = bb.initial_latents(sched, 1, torch.Generator().manual_seed(0), SIZE, SIZE)
    flags = requires_grad_state(unet)
    try:
        params = enable_only(unet, get_space("ff", bb.family))
        tensors = list(params.values())
        clock = Clock()
        for t in sched.timesteps:
            pred = bb.predict(bb.scale_input(sched, x, t), t, cond)
            loss = pred.float().pow(2).flatten(1).sum(1).mean()
            torch.autograd.grad(loss, tensors, allow_unused=True)
        t_grad = clock.stop()
        clock = Clock()
        with torch.no_grad():
            for t in sched.timesteps:
                bb.predict(bb.scale_input(sched, x, t), t, base)
        t_base = clock.stop()
    finally:
        restore_requires_grad(unet, flags)
    return t_grad, t_base


def fixed_parts(bb) -> tuple[tuple[float, float], tuple[float, float]]:
    """((wall, CPU) of encoding the prompt and "", (wall, CPU) of package_versions()): costs attribute pays
    once per call whatever T, timed alone."""
    from cad.io import package_versions

    clock = Clock()
    bb.encode(PROMPT, height=SIZE, width=SIZE)
    bb.encode("", height=SIZE, width=SIZE)
    enc = clock.stop()
    clock = Clock()
    package_versions()
    return enc, clock.stop()


class Clock:
    """Wall and process-CPU seconds since construction (CPU time is insensitive to other jobs' load)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def bench_time(steps: int, repeats: int) -> list[dict]:
    from cad import attribute
    from cad.backbones import wrap

    out = []
    for family, (builder, guidance) in tiny_pipelines().items():
        pipe = builder(0, image_size=SIZE)
        bb = wrap(pipe)
        kw = dict(steps=steps, guidance=guidance, estimator="trajectory", height=SIZE, width=SIZE, progress=False)
        attribute(bb, PROMPT, **{**kw, "steps": 2})  # warm-up (first-call allocations, lazy imports)
        floor_parts(bb, 2)
        att, grad, base, enc, ver, calls = [], [], [], [], [], 0
        for _ in range(repeats):
            clock = Clock()
            scores = attribute(bb, PROMPT, **kw)
            att.append(clock.stop())
            calls = scores.meta["unet_calls"]
            g, b = floor_parts(bb, steps)
            grad.append(g)
            base.append(b)
            e, v = fixed_parts(bb)
            enc.append(e)
            ver.append(v)
        r = {"family": family, "guidance": guidance, "calls": calls, "repeats": repeats}
        for k, v in (("att", att), ("grad", grad), ("base", base), ("enc", enc), ("ver", ver)):
            for i, clk in enumerate(("wall", "cpu")):
                xs = [p[i] for p in v]
                r[f"{k}_{clk}"], r[f"{k}_{clk}_min"] = statistics.median(xs), min(xs)
        for clk in ("wall", "cpu"):
            r[f"ratio_{clk}"] = r[f"att_{clk}"] / (r[f"grad_{clk}"] + r[f"base_{clk}"])
            r[f"ratio_{clk}_min"] = r[f"att_{clk}_min"] / (r[f"grad_{clk}_min"] + r[f"base_{clk}_min"])
        out.append(r)
        _row(f"{family}: attribution / grad calls / base calls (median wall)",
             f"{r['att_wall'] * 1e3:7.1f} ms  {r['grad_wall'] * 1e3:7.1f} ms  {r['base_wall'] * 1e3:7.1f} ms  "
             f"({calls} calls)")
        _row(f"{family}: attribution / floor", f"{r['ratio_wall']:5.3f}x wall, {r['ratio_cpu']:5.3f}x CPU (medians); "
             f"{r['ratio_wall_min']:5.3f}x wall minima (target <= 1.15x)")
        _row(f"{family}: fixed costs alone: encode 2 prompts / package_versions",
             f"{r['enc_wall'] * 1e3:7.1f} ms  {r['ver_wall'] * 1e3:7.1f} ms")
    return out


# ---- 2. peak memory (one subprocess per measurement) ----------------------------------------------------
ARCH = {"sd1": "sd1", "sdxl": "sdxl"}
# Rough float32 need of the attribution process (weights + 2 x ff buffers + slack), for the skip check.
# Weights + one forward+backward + the float32 gradient sums (which live in .grad, cad.objectives.Gradients).
NEED_GB = {"sd1": 6.0, "sdxl": 18.0}


def real_arch_pipeline(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The real denoiser architecture (random weights, built in `dtype` on `device`, so a 12B FLUX transformer is
    never filled on the CPU) inside a pipeline with tiny encoders of the real conditioning widths and a tiny VAE
    (scale factor 2: pass height = latent side x pipe.vae_scale_factor for the native latent). sd1, sdxl, flux."""
    from benchmarks.denoisers import random_denoiser
    from cad.architectures import architecture_config

    unet = random_denoiser(name, dtype, device)
    cfg = architecture_config(name)
    if name == "sd1":
        from diffusers import StableDiffusionPipeline

        from cad.tiny import build_tiny_pipeline

        tiny = build_tiny_pipeline(0, image_size=SIZE, text_hidden=cfg["cross_attention_dim"])
        return StableDiffusionPipeline(**{**tiny.components, "unet": unet}, requires_safety_checker=False)
    if name == "flux":
        from diffusers import FluxPipeline

        from cad.tiny import build_tiny_flux_pipeline

        # CLIP-L's pooled 768 and T5-XXL's 4096 tokens, as the real transformer expects; schnell's fixed shift
        tiny = build_tiny_flux_pipeline(0, dynamic_shifting=False, image_size=SIZE,
                                        clip_hidden=cfg["pooled_projection_dim"], t5_d_model=cfg["joint_attention_dim"])
        return FluxPipeline(**{**tiny.components, "transformer": unet})
    from diffusers import StableDiffusionXLPipeline

    from cad.tiny import build_tiny_sdxl_pipeline

    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]  # 1280
    tiny = build_tiny_sdxl_pipeline(0, image_size=SIZE, text_hidden=768, text_hidden_2=cfg["cross_attention_dim"] - 768,
                                    projection_dim=pooled, addition_time_embed_dim=cfg["addition_time_embed_dim"])
    return StableDiffusionXLPipeline(**{**tiny.components, "unet": unet}, force_zeros_for_empty_prompt=True,
                                     add_watermarker=False)


def _malloc_in_use():
    """A function giving the bytes glibc malloc has handed out and not had back (mallinfo2: heap chunks in
    use + mmapped chunks), or None off glibc >= 2.33. Unlike RSS it leaves out freed memory malloc keeps
    (fragmentation between the gradient sums, arenas of other threads), so it is the same in every run."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo2

    def in_use() -> int:
        m = fn()
        return m.uordblks + m.hblkhd

    return in_use


def _measure(arch: str, what: str, latent: int, steps: int) -> dict:
    """Child process body: build, read the baseline RSS (and malloc's in-use bytes), run `what` under a 1 ms
    sampler of both."""
    import gc

    import psutil

    from cad import attribute
    from cad.backbones import wrap
    from cad.components import enable_only, get_space

    threads = os.environ.get("CAD_BENCH_THREADS")
    torch.set_num_threads(int(threads) if threads else 1)
    start = time.perf_counter()
    pipe = real_arch_pipeline(ARCH[arch])
    bb = wrap(pipe)
    size = latent * bb.vae_scale_factor
    build_s = time.perf_counter() - start
    proc = psutil.Process()
    gc.collect()
    in_use = _malloc_in_use()
    baseline, used0 = proc.memory_info().rss, in_use() if in_use else 0
    peak, used = [baseline], [used0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            if in_use:
                used[0] = max(used[0], in_use())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    if what.startswith("attribution"):  # attribution, attribution-fast, attribution-low (the memory mode)
        memory = what.partition("-")[2] or "fast"
        attribute(bb, PROMPT, steps=steps, guidance=3.0, estimator="trajectory", height=size, width=size,
                  progress=False, memory=memory, num_samples=int(os.environ.get("CAD_BENCH_MODES_K", 1)))
    else:
        cond = bb.encode(PROMPT, height=size, width=size)
        sched = bb.scheduler(steps, height=size, width=size)
        x = bb.initial_latents(sched, 1, torch.Generator().manual_seed(0), size, size)
        t = sched.timesteps[0]
        params = enable_only(bb.denoiser, get_space("ff", bb.family))
        pred = bb.predict(bb.scale_input(sched, x, t), t, cond)
        loss = pred.float().pow(2).flatten(1).sum(1).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        del grads, loss, pred
    secs = time.perf_counter() - start
    done.set()
    sampler.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    n_all = sum(p.numel() for p in bb.denoiser.parameters())
    n_ff = sum(p.numel() for p in get_space("ff", bb.family).select(bb.denoiser).values())
    return {"arch": arch, "what": what, "baseline": baseline, "peak": peak[0], "delta": peak[0] - baseline,
            "malloc_delta": used[0] - used0 if in_use else None,
            "seconds": secs, "build_s": build_s, "params": n_all, "ff": n_ff, "latent": latent, "steps": steps}


def _available_gb() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**30


def bench_memory(archs: list[str], latent: int, steps: int) -> list[dict]:
    out = []
    for arch in archs:
        if _available_gb() < NEED_GB[arch]:
            _row(f"{arch}: peak memory", f"SKIPPED: needs ~{NEED_GB[arch]:.0f} GB, {_available_gb():.1f} GB available")
            continue
        res = {}
        for what in ("fwdbwd", "attribution"):
            cmd = [sys.executable, "-m", "benchmarks.bench_families", "--measure", arch, what, str(latent), str(steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"memory child {arch} {what} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
            res[what] = json.loads(lines[-1])
            m = res[what]
            _row(f"{arch} @{latent}x{latent}: {what} peak above model / total",
                 f"{m['delta'] / 2**30:6.2f} GB  {m['peak'] / 2**30:6.2f} GB  ({m['seconds']:.1f} s; model "
                 f"{m['baseline'] / 2**30:.2f} GB resident)" + (
                     f"; malloc in use {m['malloc_delta'] / 2**30:.2f} GB" if m["malloc_delta"] is not None else ""))
        a, f = res["attribution"], res["fwdbwd"]
        r = {"arch": arch, "latent": latent, "steps": steps, "params": a["params"], "ff": a["ff"],
             "att_delta": a["delta"], "fb_delta": f["delta"], "att_peak": a["peak"], "fb_peak": f["peak"],
             "baseline": a["baseline"], "att_s": a["seconds"], "fb_s": f["seconds"]}
        r["ratio_delta"] = r["att_delta"] / r["fb_delta"]
        r["ratio_total"] = r["att_peak"] / r["fb_peak"]
        r["ratio_malloc"] = a["malloc_delta"] / f["malloc_delta"] if a["malloc_delta"] and f["malloc_delta"] else None
        out.append(r)
        _row(f"{arch}: attribution / forward+backward peak", f"{r['ratio_delta']:5.2f}x above the model, "
             f"{r['ratio_total']:5.2f}x total (target <= 1.3x)" + (
                 f"; {r['ratio_malloc']:5.2f}x malloc in use" if r["ratio_malloc"] else ""))
    return out


def main() -> None:
    threads = os.environ.get("CAD_BENCH_THREADS")
    torch.set_num_threads(int(threads) if threads else 1)
    steps = int(os.environ.get("CAD_BENCH_FAMILY_STEPS", 10))
    repeats = int(os.environ.get("CAD_BENCH_REPEATS", 5))
    latent = int(os.environ.get("CAD_BENCH_MEM_LATENT", 16))
    mem_steps = int(os.environ.get("CAD_BENCH_MEM_STEPS", 2))
    archs = [a for a in os.environ.get("CAD_BENCH_MEM", "sd1,sdxl").split(",") if a in ARCH]
    ROWS.clear()
    print(f"torch threads: {torch.get_num_threads()}, attribution steps: {steps}, repeats: {repeats}")
    times = bench_time(steps, repeats)
    mems = bench_memory(archs, latent, mem_steps)
    print("\nsummary (bench_families)\n")
    print("| family | T | guidance | calls | attribution | T grad calls | T base calls | attribution / floor: "
          "wall (CPU; wall minima) | encode 2 prompts | package_versions() |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in times:
        ms = {k: r[k] * 1e3 for k in ("att_wall", "grad_wall", "base_wall", "enc_wall", "ver_wall")}
        print(f"| {r['family']} | {steps} | {r['guidance']:g} | {r['calls']} | {ms['att_wall']:.1f} ms | "
              f"{ms['grad_wall']:.1f} ms | {ms['base_wall']:.1f} ms | {r['ratio_wall']:.3f}x ({r['ratio_cpu']:.3f}x; "
              f"{r['ratio_wall_min']:.3f}x) | {ms['enc_wall']:.1f} ms | {ms['ver_wall']:.1f} ms |")
    print(f"(medians of {repeats} interleaved repeats; wall seconds)")
    if mems:
        print("\n| UNet (random weights, fp32) | params / ff weights | latents, steps | one fwd+bwd: peak above model "
              "(total) | attribution: peak above model (total) | ratio above model (total) | ratio of malloc in use |")
        print("|---|---|---|---|---|---|---|")
        for r in mems:
            gb = 2**30
            malloc = f"{r['ratio_malloc']:.2f}x" if r["ratio_malloc"] else "n/a"
            print(f"| {r['arch']} | {r['params'] / 1e6:.1f} M / {r['ff'] / 1e6:.1f} M | {r['latent']}x{r['latent']}, "
                  f"{r['steps']} | {r['fb_delta'] / gb:.2f} GB ({r['fb_peak'] / gb:.2f} GB) | "
                  f"{r['att_delta'] / gb:.2f} GB ({r['att_peak'] / gb:.2f} GB) | "
                  f"{r['ratio_delta']:.2f}x ({r['ratio_total']:.2f}x) | {malloc} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        arch, what, latent, steps = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(_measure(arch, what, latent, steps)), flush=True)
    else:
        main()
