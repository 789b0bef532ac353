"""Methods benchmark: the cost of producing each method's edit, side by side in one run.

1. Toy world (the committed kit's pipeline, cad.toy.kit.load_kit().load_pipeline(), 32 px = 8x8 latents):
   seconds from settings to edit for every method, each built with `cad.methods.build_method` from its
   conf/method/<name>.yaml, merged with conf/method_world/<name>_toy.yaml where that exists (the toy
   recipes), on the concept `diamond` (conf/concept/diamond.yaml) with the toy model's attribution sampler
   (conf/model/toy.yaml: 20 DDIM steps, guidance 7.5, 32 px). cad_erase's time is the attribution (computed,
   not cached) plus the selection; the others' is `method.build` (UCE / RECE solves, ConceptPrune's
   activation pass, ESD's fine-tuning). A method whose module or yaml is missing or fails is reported as such
   and the others still run. Repeats: CAD_BENCH_METHOD_REPEATS (3) per method, ESD CAD_BENCH_ESD_REPEATS (1);
   the median and the range are printed.
2. SD 1.4 UNet architecture (cad.architectures "sd1": 859.5 M params, random weights, float32, CPU) inside
   a pipeline with the tiny VAE and a tiny CLIP text encoder of width 768 (see bench_families), concept
   `church`, at CAD_BENCH_SD_LATENT (16) x 16 latents:
   - CAD: `cad.attribute` with CAD_BENCH_SD_CAD_STEPS (3) DDIM steps, guidance 3; a forward pre/post hook on
     the UNet (public nn.Module hooks) times each step, so fixed costs (the two weight hashes, encoding)
     and the per-step cost are separated: CAD(50) = fixed + 50 x per step (+ the selection, timed).
   - ESD (esd-x, reference defaults: lr 1e-5, η 1, start guidance 3, DDIM 50, batch 1): the plugin for
     CAD_BENCH_SD_ESD_ITERS (2) iterations. The hooks time each UNet call: c_g, a no-grad guided call (CFG
     batch of 2), and c_train, the gradient call with its backward and the Adam step. ESD(1000) =
     1000 x (E[n] x c_g + c_g + c_train), E[n] = 26.48 the expected DDIM steps per iteration under the
     reference's t_enc rule (t_enc ~ U{0..49}, min(50, 51 - t_enc) steps). The seed is chosen so the timed
     iterations run few DDIM steps (cheap to measure; the extrapolation uses E[n], not those steps).
   - UCE, RECE: the full closed-form edit, timed end to end (no extrapolation needed).
   Ratios CAD:ESD and CAD:UCE (CAD's time over the other's) are printed for the full recipes.

Environment: CAD_BENCH_THREADS; CAD_BENCH_METHODS (comma list, default all); CAD_BENCH_SD (0 skips part 2).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("cad_erase", "uce", "rece", "conceptprune", "esd")
ROWS: list[tuple[str, str]] = []
ESD_EXPECTED_STEPS = (50 + sum(range(2, 51))) / 50  # 26.48: E[min(50, 51 - t_enc)], t_enc ~ U{0..49}


def _row(label: str, value: str) -> None:
    ROWS.append((label, value))
    print(f"{label:<58} {value}", flush=True)


def method_config(name: str, world: str | None = None) -> dict:
    """conf/method/<name>.yaml, with conf/method_world/<name>_<world>.yaml (the world's recipe) merged on top."""
    path = ROOT / "conf" / "method" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path.relative_to(ROOT)} does not exist (yet)")
    cfg = yaml.safe_load(path.read_text()) or {}
    cfg.pop("defaults", None)
    over = ROOT / "conf" / "method_world" / f"{name}_{world}.yaml" if world else None
    if over is not None and over.is_file():
        extra = yaml.safe_load(over.read_text()) or {}
        # `# @package method` files hold the settings at top level; `_global_` ones under `method:`.
        cfg.update(extra["method"] if isinstance(extra.get("method"), dict) else extra)
    return cfg


def concept(name: str) -> dict:
    from experiments.validate import load_concept

    return load_concept(name)  # prompts resolved for the default protocol


class Clock:
    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def build_edit(name: str, cfg: dict, bb, conc: dict, attribution: dict, seed: int = 0) -> dict:
    """Build one method's edit from scratch; returns its (wall, CPU) seconds and info."""
    from cad import attribute
    from cad.methods import MethodContext, build_method

    method = build_method(cfg)
    timings = {}

    def scores(c, objective, space):
        clock = Clock()
        s = attribute(bb, c["prompt"], objective=objective, base_prompt=c.get("base_prompt", ""),
                      steps=int(attribution["steps"]), guidance=float(attribution["guidance"]),
                      seed=int(attribution.get("seed", 0)), estimator="trajectory", space=space,
                      height=attribution["height"], width=attribution["width"], progress=False)
        timings["attribution"] = clock.stop()
        return s

    ctx = MethodContext(backbone=bb, concept=conc, attribution=dict(attribution), seed=seed, scores=scores)
    clock = Clock()
    out = method.build(ctx)
    total = clock.stop()
    edit = out.edit
    n = getattr(edit, "n_ablated", None) or getattr(edit, "n_weights", None)
    return {"total": total, "attribution": timings.get("attribution"), "n": n, "info": out.info,
            "kind": type(edit).__name__}


# ---- 1. toy world ---------------------------------------------------------------------------------------
def bench_toy(names: list[str]) -> list[dict]:
    from cad.backbones import wrap
    from cad.toy.kit import load_kit

    model = yaml.safe_load((ROOT / "conf" / "model" / "toy.yaml").read_text())
    res = int(model["resolution"])
    attribution = {"steps": int(model["steps"]), "guidance": float(model["guidance"]), "seed": 0,
                   "num_samples": 1, "estimator": "trajectory", "height": res, "width": res}
    bb = wrap(load_kit().load_pipeline())
    conc = concept("diamond")
    repeats = int(os.environ.get("CAD_BENCH_METHOD_REPEATS", 3))
    esd_repeats = int(os.environ.get("CAD_BENCH_ESD_REPEATS", 1))
    out = []
    for name in names:
        r = {"method": name}
        try:
            cfg = method_config(name, "toy")
            runs = [build_edit(name, cfg, bb, conc, attribution) for _ in range(esd_repeats if name == "esd" else repeats)]
        except Exception as err:  # a plugin being written by someone else: report it, keep the others
            r["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            _row(f"toy {name}", f"NOT RUN: {r['error']}")
            out.append(r)
            continue
        walls = [x["total"][0] for x in runs]
        r.update(wall=statistics.median(walls), cpu=statistics.median(x["total"][1] for x in runs),
                 lo=min(walls), hi=max(walls), runs=len(runs), n=runs[0]["n"], kind=runs[0]["kind"],
                 settings={k: v for k, v in cfg.items() if k in ("ratio", "granularity", "iterations", "lr",
                                                                "ddim_steps", "variant", "image_size")})
        if runs[0]["attribution"] is not None:
            r["attribution"] = statistics.median(x["attribution"][0] for x in runs)
        out.append(r)
        extra = f", attribution {r['attribution']:.2f} s" if "attribution" in r else ""
        _row(f"toy {name}: edit seconds (median of {len(runs)})",
             f"{r['wall']:7.2f} s wall [{r['lo']:.2f}, {r['hi']:.2f}], {r['cpu']:.2f} s CPU{extra}; {r['kind']} "
             f"of {r['n']:,} weights")
    return out


# ---- 2. SD 1.4 architecture -----------------------------------------------------------------------------
class CallTimer:
    """Forward pre/post hooks on the denoiser: per call (start, end, grad enabled, batch) in wall seconds."""

    def __init__(self, module: torch.nn.Module):
        self.calls: list[dict] = []
        self.handles = [module.register_forward_pre_hook(self._pre, with_kwargs=True),
                        module.register_forward_hook(self._post)]

    def _pre(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("sample")
        self.calls.append({"start": time.perf_counter(), "grad": torch.is_grad_enabled(), "batch": int(x.shape[0])})

    def _post(self, module, args, output):
        self.calls[-1]["end"] = time.perf_counter()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _esd_draws(seed: int, iterations: int, steps: int, latent_shape) -> list[int]:
    """DDIM steps each ESD iteration runs for this seed, replaying the plugin's generator use (t_enc, the
    scored timestep, x_T); only used to pick a cheap seed."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(iterations):
        k = int(torch.randint(steps, (1,), generator=gen))
        lo, hi = round(k / steps * 1000), round((k + 1) / steps * 1000)
        torch.randint(lo, max(hi, lo + 1), (1,), generator=gen)
        torch.randn(latent_shape, generator=gen, dtype=torch.float32)
        out.append(min(steps, steps - k + 1))
    return out


def bench_sd() -> dict:
    from benchmarks.bench_families import real_arch_pipeline
    from cad import attribute, select_components
    from cad.backbones import wrap

    latent = int(os.environ.get("CAD_BENCH_SD_LATENT", 16))
    cad_steps = int(os.environ.get("CAD_BENCH_SD_CAD_STEPS", 3))
    esd_iters = int(os.environ.get("CAD_BENCH_SD_ESD_ITERS", 2))
    clock = Clock()
    bb = wrap(real_arch_pipeline("sd1"))
    size = latent * bb.vae_scale_factor
    _row("SD 1.4 arch: build (random weights, fp32)", f"{clock.stop()[0]:.0f} s; {latent}x{latent} latents ({size} px "
         f"through the tiny VAE)")
    conc = concept("church")
    out = {"latent": latent}

    # CAD: a few attribution steps, timed per step with hooks.
    timer = CallTimer(bb.denoiser)
    clock = Clock()
    scores = attribute(bb, conc["prompt"], base_prompt=conc.get("base_prompt", ""), steps=cad_steps, guidance=3.0,
                       estimator="trajectory", height=size, width=size, progress=False)
    total = clock.stop()[0]
    timer.remove()
    base_starts = [c["start"] for c in timer.calls if not c["grad"]]  # each step opens with its base call
    grad_calls = [c for c in timer.calls if c["grad"]]
    per_step = (base_starts[-1] - base_starts[0]) / (len(base_starts) - 1)
    loop = base_starts[-1] - base_starts[0] + per_step
    fixed = total - loop
    clock = Clock()
    select_components(scores.scores, 0.01, "positive", "row")
    t_select = clock.stop()[0]
    out["cad"] = {"steps": cad_steps, "total": total, "per_step": per_step, "fixed": fixed, "select": t_select,
                  "full": fixed + 50 * per_step + t_select,
                  "grad_fwd": statistics.median(c["end"] - c["start"] for c in grad_calls)}
    _row(f"SD 1.4 arch: CAD attribution, {cad_steps} steps", f"{total:.1f} s (fixed {fixed:.1f} s + {per_step:.2f} s "
         f"per step); select {t_select:.2f} s")
    _row("SD 1.4 arch: CAD, 50 steps (extrapolated)", f"{out['cad']['full']:.0f} s")

    # ESD: a few iterations of the plugin with its reference settings.
    from cad.methods import MethodContext, build_method

    shape = bb.latent_shape(1, size, size)
    seed = min(range(200), key=lambda s: sum(_esd_draws(s, esd_iters, 50, shape)))
    cfg = {"_target_": "cad.methods.esd.ESD", "name": "esd", "variant": "x", "iterations": esd_iters,
           "lr": 1e-5, "negative_guidance": 1.0, "start_guidance": 3.0, "ddim_steps": 50, "image_size": size}
    try:
        method = build_method(cfg)
        timer = CallTimer(bb.denoiser)
        clock = Clock()
        res = method.build(MethodContext(backbone=bb, concept=conc, seed=seed))
        end = time.perf_counter()
        total = clock.stop()[0]
        timer.remove()
        calls = timer.calls
        nograd = [c["end"] - c["start"] for c in calls if not c["grad"]]
        trains = []
        for i, c in enumerate(calls):
            if c["grad"]:
                nxt = calls[i + 1]["start"] if i + 1 < len(calls) else end
                trains.append(nxt - c["start"])
        c_g, c_train = statistics.median(nograd), statistics.median(trains)
        per_iter = (ESD_EXPECTED_STEPS + 1) * c_g + c_train
        out["esd"] = {"iters": esd_iters, "seed": seed, "total": total, "c_g": c_g, "c_train": c_train,
                      "guided_calls": len(nograd), "per_iter": per_iter, "full": 1000 * per_iter,
                      "n_weights": res.edit.n_weights, "n_tensors": res.info.get("n_tensors")}
        _row(f"SD 1.4 arch: ESD-x, {esd_iters} iterations (seed {seed})",
             f"{total:.1f} s; {len(nograd)} no-grad calls of {c_g:.2f} s, train step {c_train:.2f} s")
        _row("SD 1.4 arch: ESD-x, 1000 iterations (extrapolated)",
             f"{out['esd']['full']:.0f} s = {out['esd']['full'] / 3600:.1f} h ({per_iter:.1f} s per iteration)")
    except Exception as err:
        out["esd"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
        _row("SD 1.4 arch: ESD", f"NOT RUN: {out['esd']['error']}")

    # UCE and RECE: the whole closed-form edit.
    for name in ("uce", "rece"):
        try:
            r = build_edit(name, method_config(name), bb, conc, {"height": size, "width": size})
            out[name] = {"total": r["total"][0], "n": r["n"]}
            _row(f"SD 1.4 arch: {name} (full edit)", f"{r['total'][0]:.2f} s wall, {r['total'][1]:.2f} s CPU; "
                 f"{r['n']:,} weights")
        except Exception as err:
            out[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
            _row(f"SD 1.4 arch: {name}", f"NOT RUN: {out[name]['error']}")
    return out


def main() -> None:
    threads = os.environ.get("CAD_BENCH_THREADS")
    torch.set_num_threads(int(threads) if threads else 1)
    wanted = os.environ.get("CAD_BENCH_METHODS")
    names = [m for m in METHODS if not wanted or m in wanted.split(",")]
    ROWS.clear()
    print(f"torch threads: {torch.get_num_threads()}")
    toy = bench_toy(names)
    sd = bench_sd() if os.environ.get("CAD_BENCH_SD", "1") != "0" else None
    print("\nsummary (bench_methods)\n")
    print("| method (toy world, concept diamond) | edit | settings | seconds to the edit: median wall [min, max] "
          "(CPU) | runs |")
    print("|---|---|---|---|---|")
    for r in toy:
        if "error" in r:
            print(f"| {r['method']} | — | — | not run: {r['error']} | 0 |")
            continue
        att = f"; attribution {r['attribution']:.2f} s" if "attribution" in r else ""
        print(f"| {r['method']} | {r['kind']}, {r['n']:,} weights | {r['settings'] or 'yaml defaults'} | "
              f"{r['wall']:.2f} s [{r['lo']:.2f}, {r['hi']:.2f}] ({r['cpu']:.2f} s{att}) | {r['runs']} |")
    if sd:
        cad, esd = sd["cad"], sd.get("esd", {})
        print(f"\n| SD 1.4 UNet arch (random weights, fp32 CPU, {sd['latent']}x{sd['latent']} latents) | measured | "
              "full recipe (extrapolated) | CAD : method |")
        print("|---|---|---|---|")
        print(f"| CAD-Erase (attribution + select) | {cad['steps']} steps: {cad['total']:.1f} s (fixed {cad['fixed']:.1f} s,"
              f" {cad['per_step']:.2f} s/step) | 50 steps: {cad['full']:.0f} s | 1 |")
        if "error" not in esd:
            print(f"| ESD-x | {esd['iters']} iterations: {esd['total']:.1f} s (guided call {esd['c_g']:.2f} s, train "
                  f"step {esd['c_train']:.2f} s) | 1000 iterations: {esd['full']:.0f} s ({esd['full'] / 3600:.1f} h) | "
                  f"1 : {esd['full'] / cad['full']:.0f} |")
        else:
            print(f"| ESD-x | not run: {esd['error']} | — | — |")
        for name in ("uce", "rece"):
            r = sd.get(name, {})
            if "error" in r:
                print(f"| {name.upper()} | not run: {r['error']} | — | — |")
            else:
                print(f"| {name.upper()} (closed form) | full edit: {r['total']:.2f} s | same | "
                      f"{cad['full'] / r['total']:.0f} : 1 |")


if __name__ == "__main__":
    main()
