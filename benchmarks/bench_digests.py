"""The weights' digests (cad.backbones.digests): a walk over the weights (fingerprint + identity) against a memo hit
(reading the weights' state: pointers, versions, integer bit sums) and against the memo after an edit's restore,
on SD 1.4's UNet architecture with random weights in float16 and bfloat16 on this CPU. Target: a memo hit
<= 0.1x a walk. On a GPU the walk was 31 s of a one-step FLUX attribution (benchmarks/results/bench_gpu_h200.md).

Run: `python -m benchmarks.bench_digests` (or `make bench`). Medians of 3; each walk starts from an empty memo.
"""

from __future__ import annotations

import statistics
import time

import torch


def _median_seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model: torch.nn.Module, repeats: int = 3) -> dict:
    from cad.backbones import digests as dg
    from cad.edits import Edit

    def walk():
        dg._DIGESTS.pop(model, None)
        dg.module_fingerprint_and_identity(model)

    cold = _median_seconds(walk, repeats)
    dg.module_fingerprint_and_identity(model)
    hit = _median_seconds(lambda: dg.module_fingerprint_and_identity(model), repeats)
    state = _median_seconds(lambda: dg.weights_state(model), repeats)
    name, p = next((n, p) for n, p in model.named_parameters() if n.endswith("ff.net.2.weight"))
    mask = torch.zeros_like(p, dtype=torch.bool)
    mask.view(-1)[:64] = True
    edit = Edit({name: mask}, {"made_for": dg.module_identity(model)})

    def edited_and_restored():
        with edit.applied(model):
            pass
        dg.module_fingerprint_and_identity(model)

    restored = _median_seconds(edited_and_restored, repeats)
    gb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e9
    return {"gb": gb, "walk_s": cold, "hit_s": hit, "state_s": state, "edit_restored_s": restored,
            "hit_over_walk": hit / cold}


def main() -> dict:
    from benchmarks.denoisers import random_denoiser

    out = {}
    for dtype in (torch.float16, torch.bfloat16):
        model = random_denoiser("sd1", dtype)
        r = measure(model)
        out[str(dtype).removeprefix("torch.")] = r
        print(f"[bench_digests] sd1 UNet, {r['gb']:.2f} GB {dtype}: walk {r['walk_s']:.2f} s, memo hit "
              f"{r['hit_s']:.3f} s (state read {r['state_s']:.3f} s) = {r['hit_over_walk']:.3f}x the walk "
              f"(target <= 0.1: {'ok' if r['hit_over_walk'] <= 0.1 else 'MISSED'}); an edit applied, restored and "
              f"the digests asked again: {r['edit_restored_s']:.3f} s", flush=True)
        del model
    return out


if __name__ == "__main__":
    main()
