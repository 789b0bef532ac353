"""The planner's coefficients on this CPU: peak memory above the model of one attribution gradient pass per memory
mode, and FLOPs per denoiser call, written to cad/plan_coefficients.json (cad.plan reads it).

Memory: the SD 1.x, SDXL and SD 3.5 Medium denoisers at their real architectures (random weights; SD 1.x in
float32, SDXL and SD 3 in bfloat16 so that they fit a 24 GB machine), at latents of CAD_PLAN_LATENTS (default 16
and 32), batch 1. Each (architecture, latent size) runs in its own subprocess: build, then for `infer` (a no-grad
forward, generation's peak), `low` and `fast` (benchmarks.denoisers.gradient_pass) the resident set is read,
sampled every 1 ms while the pass runs, and the peak above that baseline is kept; malloc_trim between passes
gives freed memory back so each baseline is clean. The planner subtracts what it computes exactly (float32
gradient sums, half-precision gradients) and fits the rest, the activations, as bytes per dtype byte =
a + b x sequence length (latent pixels for a UNet; image + text tokens for an MMDiT). SDXL and SD 3 take every
8th / 4th `ff` tensor as their space here (the first always, so the backward pass still reaches the first block)
to keep the float32 sums within this machine; the planner is told the same space.

FLOPs: torch's FlopCounterMode over one forward on the meta device (no memory, no compute) for every
architecture at two latent sizes each, fitted as c + d x L + e x L^2 per sample (attention is quadratic).

`python -m benchmarks.bench_plan` (or via `make bench`) measures and writes the file; it takes ~10 minutes here
and ~14 GB at its peak (SDXL's bf16 weights and sums). CAD_PLAN_ARCHS narrows the architectures (then the
existing entries of the others are kept).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import torch

from benchmarks import denoisers

ARCHS = {"sd1": ("float32", 1, 77), "sdxl": ("bfloat16", 8, 77), "sd35m": ("bfloat16", 4, 77)}
MODES = ("infer", "low", "fast")
FLOP_LATENTS = {"sd1": (32, 64), "sd2": (48, 96), "sd2_base": (32, 64), "sdxl": (64, 128), "sd35m": (64, 128),
                "sd35l": (64, 128), "flux": (64, 128), "flux_dev": (64, 128)}


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _sample(proc, peak: list, done: threading.Event) -> None:
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.001)


def measure(arch: str, latent: int, dtype: str, every: int, text: int, modes=MODES) -> dict:
    """Child body: peak RSS above the loaded model of each mode's pass (bytes), seconds, and the space's sizes."""
    import psutil

    torch.set_num_threads(int(os.environ.get("CAD_BENCH_THREADS") or 1))
    model = denoisers.random_denoiser(arch, getattr(torch, dtype))
    params = denoisers.space_params(model, denoisers.family_of(arch), every)
    kw = denoisers.inputs(arch, model, 1, latent, text_tokens=text)
    proc = psutil.Process()
    out = {"arch": arch, "latent": latent, "dtype": dtype, "text_tokens": text, "space_every": every,
           "space_numel": sum(p.numel() for p in params.values()),
           "space_max": max(p.numel() for p in params.values()),
           "params": sum(p.numel() for p in model.parameters()),
           "seq": denoisers.sequence_length(arch, latent, text)}
    for mode in modes:
        _trim()
        base = proc.memory_info().rss
        peak, done = [base], threading.Event()

        th = threading.Thread(target=_sample, args=(proc, peak, done), daemon=True)
        th.start()
        start = time.perf_counter()
        if mode == "infer":
            denoisers.forward(model, kw)
        else:
            denoisers.gradient_pass(model, params, kw, mode)
        secs = time.perf_counter() - start
        done.set()
        th.join()
        out[mode] = {"delta": max(peak[0], proc.memory_info().rss) - base, "seconds": secs, "baseline": base}
    return out


def run_child(arch: str, latent: int, dtype: str | None = None, every: int | None = None, text: int | None = None,
              modes=MODES) -> dict:
    d, e, t = ARCHS[arch]
    cmd = [sys.executable, "-m", "benchmarks.bench_plan", "--measure", arch, str(latent), dtype or d,
           str(every or e), str(text or t), ",".join(modes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"plan child {arch}@{latent} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def flops(arch: str, latent: int) -> float:
    """FLOPs of one forward of batch 1 (meta device: nothing computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cad.architectures import build_on_meta

    model = build_on_meta(arch)
    with torch.device("meta"):
        kw = denoisers.inputs(arch, model, 1, latent)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(**kw)
    return float(counter.get_total_flops())


def flop_fits(archs=None) -> dict:
    """arch -> [c, d, e]: FLOPs per sample = c + d L + e L^2 from three sizes (L the sequence length)."""
    import numpy as np

    out = {}
    for arch in archs or FLOP_LATENTS:
        lo, hi = FLOP_LATENTS[arch]
        sizes = [lo, (lo + hi) // 2 // 8 * 8, hi]
        seq = [denoisers.sequence_length(arch, s) for s in sizes]
        f = [flops(arch, s) for s in sizes]
        c, d, e = np.linalg.solve(np.array([[1.0, s, s * s] for s in seq]), np.array(f))
        out[arch] = {"coef": [float(c), float(d), float(e)], "sizes": sizes, "flops": f}
        print(f"{arch}: forward FLOPs at latents {sizes}: {[f'{x / 1e12:.2f} T' for x in f]}", flush=True)
    return out


def main() -> None:
    from cad import plan

    latents = [int(x) for x in os.environ.get("CAD_PLAN_LATENTS", "16,32").split(",")]
    archs = [a for a in os.environ.get("CAD_PLAN_ARCHS", ",".join(ARCHS)).split(",") if a in ARCHS]
    data = plan.load_coefficients()
    raw = []
    for arch in archs:
        for latent in latents:
            m = run_child(arch, latent)
            raw.append(m)
            print(f"{arch} @{latent}x{latent} ({m['dtype']}, seq {m['seq']}): " + ", ".join(
                f"{mode} {m[mode]['delta'] / 2**30:.2f} GB above the model in {m[mode]['seconds']:.1f} s"
                for mode in MODES), flush=True)
    cpu = data.setdefault("devices", {}).setdefault("cpu", {"archs": {}})
    import platform

    cpu.update(device=f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"torch {torch.__version__}, 1 thread",
               date=datetime.now(timezone.utc).date().isoformat(), how="peak RSS above the model, 1 ms sampling",
               latents=latents, batch=1)
    for arch in archs:
        cpu["archs"][arch] = plan.fit_activations([m for m in raw if m["arch"] == arch])
    data["flops"] = {**data.get("flops", {}), **flop_fits()}
    data["counts"] = {**data.get("counts", {}), **{a: plan.count_architecture(a) for a in FLOP_LATENTS},
                      "toy": plan._toy_counts()}
    print(f"wrote {plan.save_coefficients(data)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        a, lat, dt, ev, tx, md = sys.argv[2:8]
        print(json.dumps(measure(a, int(lat), dt, int(ev), int(tx), tuple(md.split(",")))), flush=True)
    else:
        main()
