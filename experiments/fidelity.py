"""Attribution fidelity (the paper's Fig. 2): do the scores predict what ablating components does?

Random ablations (each zeroes as many weights per tensor as the top-`ratio` CAD edit would, placed uniformly
at random) are applied one at a time; the measured change of J_erase on the unedited model's trajectories is
compared with the first-order prediction -sum(alpha) over the ablated weights. Pearson r says how well the
linearisation ranks ablations; the scatter plot (fidelity_scatter.png) shows it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from cad import distributed
from cad.io import atomic_write_bytes, atomic_write_json

from .models import load_model
from .pipeline import attribute_cached, claim_run_folder, timed, write_metrics
from .planning import resolve_memory
from .results import append_rows, make_rows
from .validate import ConfigError, check_run

log = logging.getLogger("cad.experiments")
BENCHMARK = "fidelity@v1"


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 3:
        raise ValueError(f"Pearson r needs at least 3 ablations, got {n}; raise fidelity.n_ablations")
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return sxy / (sx * sy) if sx > 0 and sy > 0 else float("nan")


def scatter_png(points: list[dict], r: float, path: Path, title: str) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ratios = sorted({p["ratio"] for p in points})
    for ratio in ratios:
        sel = [p for p in points if p["ratio"] == ratio]
        ax.scatter([p["predicted"] for p in sel], [p["measured"] for p in sel], s=14, label=f"ratio {ratio:g}")
    lo = min(min(p["predicted"], p["measured"]) for p in points)
    hi = max(max(p["predicted"], p["measured"]) for p in points)
    ax.plot([lo, hi], [lo, hi], ":", color="gray", lw=1)
    ax.set_xlabel("predicted ΔJ_erase (−Σ α of ablated weights)")
    ax.set_ylabel("measured ΔJ_erase")
    ax.set_title(f"{title}: Pearson r = {r:.3f}")
    ax.legend(fontsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def run_fidelity(cfg: dict, run_dir: str | Path, *, logger=None) -> dict:
    from cad.edits import Edit
    from cad.objectives import erase_reference, measure_erase_objective

    run_dir = Path(run_dir)
    outputs = Path(cfg["paths"]["outputs"])
    model, method, f = cfg["model"], dict(cfg["method"]), cfg.get("fidelity") or {}
    concept = check_run(cfg)
    if f.get("base_prompt") is not None:  # Fig. 2's own c_base; scores and measurements both use it
        concept = {**concept, "base_prompt": str(f["base_prompt"])}
    if method.get("objective") != "erase":
        raise ConfigError("task=fidelity measures J_erase: use method=cad_erase (or another erase-objective method)")
    ratios = [float(r) for r in f.get("ratios") or [0.01]]
    if any(not 0 < r <= 1 for r in ratios):
        raise ConfigError(f"fidelity.ratios={ratios} must lie in (0, 1]")
    n = int(f.get("n_ablations", 32))
    if n < 3:
        raise ConfigError(f"fidelity.n_ablations={n}: Pearson r needs at least 3")
    resolve_memory(cfg)  # attribution.memory=auto against the visible GPU; a run that fits in no mode stops here
    run_folder = claim_run_folder(run_dir, outputs)  # before the model loads: the run's id and metrics file
    with timed("load model"):
        loaded = load_model(model, device=cfg.get("device", "auto"), toy_kit=cfg["paths"].get("toy_kit"))
    with timed("attribution"):
        scores, scores_dir, reused = attribute_cached(loaded, concept, cfg["attribution"], model, outputs,
                                                      objective="erase", space=method.get("space", "ff"),
                                                      force=bool(method.get("allow_other_model", False)),
                                                      protocol=(cfg.get("protocol") or {}).get("name"))
    res = int(model["resolution"])
    kw = dict(base_prompt=concept.get("base_prompt", ""), steps=int(f.get("steps", cfg["attribution"]["steps"])),
              guidance=float(cfg["attribution"]["guidance"]), num_samples=int(f.get("num_samples", 1)),
              seed=int(cfg["attribution"].get("seed", 0)), height=res, width=res,
              schedule_steps=cfg["attribution"].get("schedule_steps"))  # the scores' timesteps
    pipe, prompt = loaded.backbone, concept["prompt"]
    # The unedited pass: its x_t and base predictions are held fixed for every ablation (base_target="fixed"),
    # which is the J whose first-order change the scores predict.
    reference = erase_reference(pipe, prompt, **kw)
    base = reference.value
    points = []
    with timed(f"{n} ablations"):
        for k in range(n):
            ratio = ratios[k % len(ratios)]
            ref = Edit.from_scores(scores, ratio, "positive", method.get("granularity", "row"))
            ablation = Edit.random_like(ref, int(f.get("seed", 0)) + k)
            predicted = scores.predicted_change(ablation.masks)
            measured = measure_erase_objective(pipe, prompt, edit=ablation, reference=reference, **kw) - base
            points.append({"ratio": ratio, "seed": int(f.get("seed", 0)) + k, "predicted": predicted,
                           "measured": measured, "n_ablated": ablation.n_ablated})
    r = pearson([p["predicted"] for p in points], [p["measured"] for p in points])
    plot = scatter_png(points, r, run_dir / "fidelity_scatter.png", f"{loaded.key} · {concept['name']}")
    atomic_write_json(run_dir / "fidelity_points.json", {"base_objective": base, "points": points})
    run = {"run_id": run_folder.run_id, "experiment": cfg.get("experiment_name"), "model": loaded.key,
           "concept": concept["name"], "method": "random_ablation", "ratio": None, "sign": "positive",
           "granularity": method.get("granularity", "row"), "scores_path": str(scores_dir)}
    metrics = {"fidelity/pearson_r": r, "fidelity/n_ablations": float(n)}
    protocol = {"name": (cfg.get("protocol") or {}).get("name"), "steps": kw["steps"], "guidance": kw["guidance"], "scheduler": model.get("scheduler"),
                "seeds": f"attribution seed {kw['seed']}, ablation seeds {points[0]['seed']}..{points[-1]['seed']}",
                "resolution": res, "ratios": ratios, "objective": "erase", "base_target": "fixed",
                "unet_fingerprint": loaded.fingerprint}
    rows = make_rows(run=run, variant="random", benchmark=BENCHMARK, metrics=metrics,
                     directions={"fidelity/pearson_r": True, "fidelity/n_ablations": None}, protocol=protocol,
                     edit_fingerprint=None)
    if distributed.world().is_main:  # one set of rows per run, in a process group too
        append_rows(outputs / "results.jsonl", rows)
    payload = {"run": run, "attribution_reused": reused, "metrics": {"random": metrics},
               "base_objective": base, "scatter": str(plot), "n_points": len(points)}
    write_metrics(run_folder, payload)
    if logger is not None:
        logger.log_metrics(metrics)
        logger.log_image("fidelity/scatter", str(plot))
        logger.log_table("results", rows)
    payload["summary"] = [f"attribution fidelity on {loaded.key}, concept {concept['name']}: Pearson r = {r:.3f} "
                          f"over {n} random ablations (ratios {ratios})", f"scatter plot: {plot}"]
    return payload
