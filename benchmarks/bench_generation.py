"""Generation overhead: images/s of cad.generate against a plain diffusers call on the same pipeline,
prompts, seeds and batches (target: cad's overhead <= 5%, i.e. ratio >= 0.95).

cad.generate adds per-item generators, PNG encoding, atomic writes and the manifest; the plain call only
returns PIL images. Run: `python -m benchmarks.bench_generation` (or `make bench`, which calls main()).
"""

from __future__ import annotations

import tempfile
import time

import torch

from cad.generate import generate
from evaluation.benchmarks import load_benchmark


def _plain(pipe, items, *, steps, guidance, batch_size, size):
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        gens = [torch.Generator("cpu").manual_seed(i.seed) for i in batch]
        pipe(prompt=[i.prompt for i in batch], generator=gens, num_inference_steps=steps, guidance_scale=guidance,
             height=size, width=size, output_type="pil")


def compare(pipe, items, *, steps=8, guidance=3.0, batch_size=8, size=32, repeats=2) -> dict:
    """Alternating timed runs of each after a warm-up batch (best of `repeats`, which damps the noise of a
    shared machine); returns images/s of both and their ratio (cad / plain)."""
    kw = {"steps": steps, "guidance": guidance, "batch_size": batch_size}
    _plain(pipe, items[:batch_size], size=size, **kw)  # warm-up: allocator, kernels
    plain_s = cad_s = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        _plain(pipe, items, size=size, **kw)
        plain_s = min(plain_s, time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as out:  # a fresh folder: every item is generated
            t0 = time.perf_counter()
            generate(pipe, items, out, height=size, width=size, progress=False, **kw)
            cad_s = min(cad_s, time.perf_counter() - t0)
    n = len(items)
    return {"images": n, "plain_img_per_s": n / plain_s, "cad_img_per_s": n / cad_s, "ratio": plain_s / cad_s}


def _toy_pipeline():
    """The toy world's trained pipeline, if the kit is available (cad.toy.kit); None otherwise, with why."""
    try:
        from cad.loading import load_pipeline
        from cad.toy.kit import load_kit

        return load_pipeline(str(load_kit().pipeline_path)), None
    except Exception as err:  # the kit is optional for this benchmark: report and go on
        return None, f"{type(err).__name__}: {err}"


def main(n_items: int = 64) -> dict:
    from cad.tiny import build_tiny_pipeline

    torch.set_grad_enabled(False)
    items = list(load_benchmark("toy_objects").items[:n_items])
    results = {"tiny": compare(build_tiny_pipeline(0), items, repeats=3)}
    toy, why = _toy_pipeline()
    if toy is not None:
        # the toy pipeline renders ~60 img/s: 4x the items so a timed run lasts seconds, not milliseconds
        toy_items = list(load_benchmark("toy_objects").items[: 4 * n_items])
        results["toy"] = compare(toy, toy_items, repeats=3)
    else:
        print(f"[bench_generation] toy pipeline unavailable, skipped ({why})")
    for name, r in results.items():
        verdict = "ok" if r["ratio"] >= 0.95 else "OVER 5% overhead"
        print(f"[bench_generation] {name}: plain {r['plain_img_per_s']:.2f} img/s, cad {r['cad_img_per_s']:.2f} "
              f"img/s, ratio {r['ratio']:.3f} ({verdict}; {r['images']} images)")
    return results


if __name__ == "__main__":
    main()
