"""One run of the paper's erase/amplify evaluation from a plain config dict (what experiments.run hands over).

Order: cheap checks -> benchmarks resolve -> model -> attribution (cached) -> edits -> images (cached) ->
scores -> metrics.json in the run folder + rows in <outputs>/results.jsonl (+ W&B if asked).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cad import distributed
from cad.edits import ComposedEdit

from .metric_factory import build_metrics
from .models import erased_view, load_model, resolve_device
from .pipeline import (
    claim_run_folder,
    concept_images_cached,
    directions,
    generate_cached,
    images_to_generate,
    method_edits,
    protocol_name,
    protocol_of,
    score_folder,
    timed,
    write_metrics,
)
from .planning import log_plan, resolve_memory
from .results import append_rows, make_rows
from .validate import benchmark_specs, concept_prompts, plan_run, prompt_override

log = logging.getLogger("cad.experiments")


def run_erase_eval(cfg: dict, run_dir: str | Path, *, logger=None, run_id: str | None = None) -> dict:
    """Attribute, edit, generate and score; returns the metrics payload also written to metrics.json."""
    from evaluation.benchmarks import load_benchmark

    run_dir = Path(run_dir)
    outputs = Path(cfg["paths"]["outputs"])
    model, gen = cfg["model"], cfg.get("generation", {})
    plan = plan_run(cfg)
    concept, plugin, erase_plugin, retained = plan.concept, plan.method, plan.erase_method, plan.retained
    if cfg["concept"].get("name") and concept["name"] != cfg["concept"]["name"]:
        log.info("model=toy: concept %s runs as its toy-world stand-in %s", cfg["concept"]["name"], concept["name"])
    data_dir = cfg["paths"].get("data")
    specs = benchmark_specs(cfg)  # plan_run checked each loads (check_assets)
    # attribution.memory=auto made concrete against the free GPU memory, or the run refused, before any load
    log_plan(cfg, resolve_memory(cfg))
    per_label = gen.get("per_label")
    if per_label:  # an even cut across classes (a plain limit would keep the first class only)
        specs = {role: {**spec, "limit_per_label": int(per_label)} for role, spec in specs.items()}
    benchmarks = {role: load_benchmark(spec, data_dir=data_dir, limit=gen.get("limit")) for role, spec in specs.items()}
    run_folder = claim_run_folder(run_dir, outputs)  # before the model loads: the run's id and metrics file

    # protocol=reference: CAD-Amplify on an erased model takes its concept images from the base model and its
    # gradients from the erased one (the reference code generates before it loads the erased UNet)
    base_images = _base_model_images(cfg, plugin) and (erase_plugin is not None or bool(model.get("checkpoint")))
    if base_images and model.get("checkpoint"):
        with timed("load the base model (concept images)"):
            base = load_model({**model, "checkpoint": None}, device=cfg.get("device", "auto"),
                              toy_kit=cfg["paths"].get("toy_kit"))
        concept, retained = _with_images(base, concept, retained, cfg, outputs)
        del base
    with timed("load model"):
        loaded = load_model(model, device=cfg.get("device", "auto"), toy_kit=cfg["paths"].get("toy_kit"))
    erase_edit = None
    if erase_plugin is not None:
        # Table 6: erase with the built-in baseline (its edit cached like any other), then run the method
        # (CAD-Amplify) on the erased model; the variants compare base, erased and recalled side by side.
        with timed(f"erase with {erase_plugin.name}"):
            erase_edit, _, _ = method_edits(erase_plugin, loaded, concept, [], cfg, outputs)
        if base_images and not concept.get("images"):
            # rendered now, before the erased weights are applied
            concept, retained = _with_images(loaded, concept, retained, cfg, outputs)
        with erase_edit.applied(loaded.pipe), timed(f"method {plugin.name} on the erased model"):
            erased = erased_view(loaded, erase_plugin.name, erase_edit)
            edit, controls, info = method_edits(plugin, erased, concept, retained, cfg, outputs)
        edit = ComposedEdit([erase_edit, edit]) if edit is not None else None
        controls = {k: ComposedEdit([erase_edit, c]) for k, c in controls.items()}
    else:
        with timed(f"method {plugin.name}"):
            edit, controls, info = method_edits(plugin, loaded, concept, retained, cfg, outputs)
    if info.get("scores_path"):
        log.info("attribution scores %s (%s)", info["scores_path"],
                 "reused" if info.get("attribution_reused") else "computed")
    variants: dict[str, Any] = {"original": None}
    if erase_edit is not None:
        variants["erased"] = erase_edit
    if edit is not None:
        variants["edited"] = edit
    variants.update(controls)
    reused = bool(info.get("attribution_reused", False))
    scores_dir = info.get("scores_path")

    sharded = int(gen.get("num_shards", 1)) > 1
    goal = "amplify" if plugin.goal == "amplify" else "erase"
    device = resolve_device(cfg.get("device", "auto"))
    run = {"run_id": run_id or run_folder.run_id, "experiment": cfg.get("experiment_name"), "model": loaded.key,
           "concept": concept["name"], "method": plugin.name, "ratio": None, "sign": None, "granularity": None,
           "concept_prompts": concept_prompts(concept), "concept_override": prompt_override(concept, protocol_name(cfg)),
           **plugin.row_fields(), "method_settings": plugin.settings(),
           "scores_path": str(scores_dir) if scores_dir else None,
           # what the scores were made for (attribution.allow_other_scores may apply another concept's); their
           # key, not their path, identifies the rows (a moved outputs folder keeps its row keys)
           **_scores_fields(scores_dir, info),
           "retain": info.get("retain") or None,
           "erase_method": erase_plugin.settings() if erase_plugin is not None else None}
    payload: dict[str, Any] = {"run": run, "attribution_reused": reused, "metrics": {}, "images": {},
                               "method_info": {k: v for k, v in info.items() if k not in ("scores_path",)},
                               "edits": {k: _edit_info(e) for k, e in variants.items() if e is not None}}
    rows = []
    main = distributed.world().is_main  # in a process group every rank renders its share; rank 0 scores and writes
    if main:  # before the first image: how much each variant renders and how much the cache already holds
        for bench in benchmarks.values():
            for variant, e in variants.items():
                n, cached = images_to_generate(loaded, bench, e, model, gen, outputs)
                log.info("images %s [%s]: %d to render, %d already cached", bench.key, variant, n - cached, cached)
    for role, bench in benchmarks.items():
        folders = {}
        for variant, e in variants.items():
            with timed(f"generate {bench.key} [{variant}]"):
                folders[variant] = generate_cached(loaded, bench, e, model, gen, outputs,
                                                   desc=f"generate {bench.key} [{variant}]")
        payload["images"][bench.key] = {k: str(v) for k, v in folders.items()}
        distributed.barrier()  # every rank's images are in the cache before rank 0 reads it
        if sharded or not main:
            continue  # a shard only fills the cache; the run with num_shards=1 scores
        names = list((bench.meta or {}).get("metrics") or [])
        metrics = build_metrics(names, benchmark=bench, concept=concept, goal=goal, kit=loaded.kit, device=device)
        for variant, folder in folders.items():
            with timed(f"score {bench.key} [{variant}]"):
                results, proto = score_folder(folder, bench, metrics, folders["original"], concept)
            payload["metrics"].setdefault(variant, {}).update(results)
            e = variants[variant]
            rows += make_rows(run=run, variant=variant, benchmark=bench.key, metrics=results,
                              directions=directions(metrics, results, bench.name),
                              protocol=protocol_of(model, gen, bench, proto, loaded, protocol_name(cfg)),
                              edit_fingerprint=None if e is None else e.fingerprint)
        # the target's columns first on the target benchmark; a retain benchmark (another kind) shows every class
        _log_grid(logger, bench, folders, run_dir, concept.get("label", concept["name"]) if role == "target" else None)
    if run.get("erase_method") is not None:  # Table 6's lines: which method erased what the edit recalls
        rows = [{**r, "erase_method": run["erase_method"]} for r in rows]
    write_metrics(run_folder, payload)
    if rows:  # rank 0's (the others score nothing)
        append_rows(outputs / "results.jsonl", rows)
    if logger is not None and main:
        for variant, values in payload["metrics"].items():
            logger.log_metrics({f"{variant}/{k}": v for k, v in values.items()})
        logger.log_table("results", rows)
    payload["rows"] = len(rows)
    return payload


def _scores_fields(scores_dir, info: dict) -> dict:
    """scores_key, scores_concept and scores_objective of the target concept's scores (None without scores)."""
    if not scores_dir:
        return {"scores_key": None, "scores_concept": None, "scores_objective": None}
    from cad.scores import AttributionScores, read_scores_meta

    from .validate import scores_identity

    meta, _ = read_scores_meta(scores_dir)
    made = scores_identity(meta)
    key = info.get("scores_key") or AttributionScores({}, meta).key  # the key of the config that made them
    return {"scores_key": key, "scores_concept": made["concept"],
            "scores_objective": made["objective"]}


def _base_model_images(cfg: dict, plugin) -> bool:
    """Whether amplify_erased renders the concept images with the base model (attribution.image_model=base)
    rather than letting the attribution generate them with the erased model: only for an amplify objective that
    generates its images (no attribution.images folder given)."""
    att = cfg.get("attribution") or {}
    return (getattr(plugin, "objective", None) == "amplify" and not att.get("images")
            and str(att.get("image_model", "erased")) == "base")


def _with_images(source, concept: dict, retained: list[dict], cfg: dict, outputs: Path) -> tuple[dict, list[dict]]:
    """The concept and retained concepts with `images`: folders of concept images rendered by `source`."""
    def add(c: dict) -> dict:
        return {**c, "images": str(concept_images_cached(source, c, cfg["attribution"], cfg["model"], outputs))}

    return add(concept), [add(c) for c in retained]


def _edit_info(edit) -> dict:
    info = {"fingerprint": edit.fingerprint, "kind": edit.kind}
    if hasattr(edit, "n_ablated"):  # mask edits: how many weights are zeroed
        info.update(n_ablated=int(edit.n_ablated), fraction=float(edit.fraction))
    if hasattr(edit, "n_weights"):  # weight edits: how many weights get new values
        info.update(n_weights=int(edit.n_weights))
    return info


def _log_grid(logger, bench, folders: dict[str, Path], run_dir: Path, target: str | None = None) -> None:
    """Original / edited / control rows on the same prompts and seeds, the target concept's columns first (the
    claim), then a few of every other class: grid_<benchmark>.png in the run folder."""
    from evaluation.grids import concept_grid

    try:
        grid = concept_grid(bench, folders, target, run_dir / f"grid_{bench.name}.png",
                            n_target=getattr(logger, "n_images", None) or 6)
    except (FileNotFoundError, ValueError) as err:
        log.warning("no image grid for %s: %s", bench.key, err)
        return
    if logger is not None:
        logger.log_image(f"grid/{bench.name}", grid, caption=grid.info.get("caption", " / ".join(folders)))


def summary_lines(payload: dict) -> list[str]:
    """A readable before/after table for the console: a line per metric, a column per variant."""
    metrics = payload["metrics"]
    if not metrics:
        return ["(no scores: sharded generation run; rerun with generation.num_shards=1 to score)"]
    variants = list(metrics)
    per_label = ("acc", "lpips", "toy_lpips", "nudenet", "toy_detector")  # per-class entries stay in metrics.json
    # every variant's keys: paired metrics (LPIPS) have none for the original images they compare against
    keys = [k for k in dict.fromkeys(k for v in variants for k in metrics[v]) if not any(f"/{p}/" in k for p in per_label)]
    run = payload["run"]
    width = max(len(k) for k in keys) if keys else 10
    ratio = f", ratio {run['ratio']:g}" if run.get("ratio") is not None else ""
    lines = [f"{run['method']} on {run['model']}, concept {run['concept']}{ratio}"
             + (f" (scores {'reused' if payload['attribution_reused'] else 'computed'})" if run["scores_path"] else ""),
             f"{'metric':<{width}}  " + "  ".join(f"{v:>10}" for v in variants)]
    for k in keys:
        lines.append(f"{k:<{width}}  " + "  ".join(f"{metrics[v].get(k, float('nan')):>10.3f}" for v in variants))
    return lines
