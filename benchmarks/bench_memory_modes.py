"""Memory modes: the peak memory and time of `memory=low` against `memory=fast` on the SD 1.4 UNet architecture.

The real UNet config (cad.architectures "sd1", random float32 weights on the CPU, inside a pipeline with tiny
encoders of the real conditioning width; benchmarks.bench_families.real_arch_pipeline) attributes at 64x64
latents (512 px, the paper's resolution) with K = CAD_BENCH_MODES_K trajectories (default 2, so micro-batching
shows) and CAD_BENCH_MODES_STEPS steps (default 1). Each mode runs in its own subprocess, which samples RSS every
1 ms; the figure is the peak above the loaded model. Targets (issue 17): low <= 0.6x of fast's peak above the
model, in <= 1.3x its time. CAD_BENCH_MODES_LATENT changes the latent size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _child(mode: str, latent: int, steps: int, k: int) -> dict:
    env = {**os.environ, "CAD_BENCH_MODES_K": str(k)}
    cmd = [sys.executable, "-m", "benchmarks.bench_families", "--measure", "sd1", f"attribution-{mode}", str(latent),
           str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory-mode child {mode} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    latent = int(os.environ.get("CAD_BENCH_MODES_LATENT", 64))
    steps = int(os.environ.get("CAD_BENCH_MODES_STEPS", 1))
    k = int(os.environ.get("CAD_BENCH_MODES_K", 2))
    res = {mode: _child(mode, latent, steps, k) for mode in ("fast", "low")}
    gb = 2**30
    for mode, m in res.items():
        print(f"sd1 @{latent}x{latent}, K={k}, {steps} steps, memory={mode}: peak above model "
              f"{m['delta'] / gb:.2f} GB (total {m['peak'] / gb:.2f} GB), {m['seconds']:.1f} s", flush=True)
    mem = res["low"]["delta"] / res["fast"]["delta"]
    secs = res["low"]["seconds"] / res["fast"]["seconds"]
    print(f"\n| UNet (random fp32) | latents | K, steps | fast: peak above model, time | low: peak above model, time "
          f"| low / fast memory (target <= 0.6x) | low / fast time (target <= 1.3x) |\n|---|---|---|---|---|---|---|\n"
          f"| sd1 | {latent}x{latent} | {k}, {steps} | {res['fast']['delta'] / gb:.2f} GB, {res['fast']['seconds']:.1f} s "
          f"| {res['low']['delta'] / gb:.2f} GB, {res['low']['seconds']:.1f} s | {mem:.2f}x | {secs:.2f}x |")


if __name__ == "__main__":
    main()
