"""Core benchmark: trajectory vs restart estimator cost, and select + apply time on SD 1.4's UNet.

1. J_erase attribution at 50 DDIM steps with the `trajectory` (O(T)) and `restart` (O(T^2), the
   reference's) estimators, on a tiny UNet and a mid-size one (block_out_channels (128, 256, 512)):
   wall time and UNet calls, as ratios. Arithmetic bound of the call ratio: (1,275 guided calls + 2 x 50
   gradient-step calls) / (2 x 50) = 13.75.
2. select_components (row, positive, ratio 0.01) + Edit apply on the full SD 1.4 UNet architecture with
   random weights and random scores (148.7 M ff weights), beside the reference's per-row argsort.

Environment: CAD_BENCH_THREADS (torch threads; default torch's own), CAD_BENCH_MID_LATENT (mid-size
latent side, default 16; 32 is the issue's example and costs about 4x more), CAD_BENCH_STEPS (50),
CAD_BENCH_DEVICE (default "cpu"; "cuda" runs everything on the GPU).
"""

from __future__ import annotations

import os
import time

import torch

ROWS: list[tuple[str, str]] = []


def _row(label: str, value: str) -> None:
    ROWS.append((label, value))
    print(f"{label:<64} {value}", flush=True)


def bench_estimators(label: str, pipe, steps: int) -> None:
    """Wall time, process CPU time (insensitive to other jobs on a shared CPU) and UNet calls per estimator."""
    from cad import attribute

    out = {}
    for est in ("trajectory", "restart"):
        wall, cpu = time.perf_counter(), time.process_time()
        scores = attribute(pipe, "a photo of a church", steps=steps, estimator=est, progress=False)
        out[est] = (time.perf_counter() - wall, time.process_time() - cpu, scores.meta["unet_calls"])
        _row(f"{label}: {est} wall / CPU / UNet calls",
             f"{out[est][0]:8.2f} s  {out[est][1]:8.2f} s  {out[est][2]:6d} calls")
    (tw, tc, tn), (rw, rc, rn) = out["trajectory"], out["restart"]
    _row(f"{label}: restart / trajectory",
         f"{rw / tw:6.2f}x wall  {rc / tc:6.2f}x CPU  {rn / tn:6.2f}x calls (target >= 12x)")


def sd14_unet():
    """SD 1.4's UNet architecture with random weights (meta init then normal fill: fast, no download)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                                    attention_head_dim=8, layers_per_block=2, sample_size=64)
    unet = unet.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02, generator=gen)
    return unet


def naive_argsort_masks(scores: dict, ratio: float) -> dict:
    """The reference's way (benchmarking/utils.py ablate_model): a full argsort of every row."""
    out = {}
    for n, s in scores.items():
        k = int(ratio * s.shape[1])
        order = torch.argsort(s, dim=-1, descending=True)
        mask = torch.zeros_like(s, dtype=torch.bool)
        mask.scatter_(1, order[:, :k], True)
        out[n] = mask & (s >= 0)
    return out


def bench_sd14(ratio: float = 0.01, device: str = "cpu") -> None:
    from cad import Edit, get_space, select_components

    start = time.perf_counter()
    unet = sd14_unet().to(device)
    params = get_space("ff").select(unet)
    n_all = sum(p.numel() for p in unet.parameters())
    n_ff = sum(p.numel() for p in params.values())
    _row("SD 1.4 UNet: params / ff tensors / ff weights",
         f"{n_all / 1e6:.1f} M / {len(params)} / {n_ff / 1e6:.1f} M (built in {time.perf_counter() - start:.0f} s)")
    gen = torch.Generator().manual_seed(1)
    scores = {n: torch.randn(p.shape, generator=gen).to(device) for n, p in params.items()}

    start = time.perf_counter()
    masks = select_components(scores, ratio, "positive", "row")
    t_select = time.perf_counter() - start
    start = time.perf_counter()
    edit = Edit(masks, {"kind": "bench", "ratio": ratio})
    edit.apply_(unet)
    t_apply = time.perf_counter() - start
    _row(f"SD 1.4: select (row, ratio {ratio}) / build + apply_", f"{t_select:6.2f} s / {t_apply:6.2f} s")
    _row("SD 1.4: select + apply total (target < 10 s)",
         f"{t_select + t_apply:6.2f} s  ({edit.n_ablated:,} weights, {edit.fraction:.4%})")
    start = time.perf_counter()
    with edit.applied(unet):
        pass
    _row("SD 1.4: applied() enter + bit-exact restore", f"{time.perf_counter() - start:6.2f} s")
    start = time.perf_counter()
    naive = naive_argsort_masks(scores, ratio)
    t_naive = time.perf_counter() - start
    same = all(torch.equal(naive[n], masks[n]) for n in masks)
    _row("SD 1.4: naive per-row argsort masks", f"{t_naive:6.2f} s  ({t_naive / t_select:.1f}x select; "
         f"identical masks: {same})")


def main() -> None:
    from cad.tiny import build_tiny_pipeline

    threads = os.environ.get("CAD_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    steps = int(os.environ.get("CAD_BENCH_STEPS", 50))
    mid_latent = int(os.environ.get("CAD_BENCH_MID_LATENT", 16))
    device = os.environ.get("CAD_BENCH_DEVICE", "cpu")
    ROWS.clear()
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, steps: {steps}")
    bench_estimators("tiny (32, 64) @16x16", build_tiny_pipeline(0, image_size=32).to(device), steps)
    mid = build_tiny_pipeline(0, image_size=2 * mid_latent, unet_channels=(128, 256, 512), text_hidden=64)
    bench_estimators(f"mid (128, 256, 512) @{mid_latent}x{mid_latent}", mid.to(device), steps)
    del mid
    bench_sd14(device=device)
    print("\nsummary (bench_core)")
    print("-" * 100)
    for label, value in ROWS:
        print(f"{label:<64} {value}")


if __name__ == "__main__":
    main()
