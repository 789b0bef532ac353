"""The run as plain functions: attribute (cached by content) -> edit -> generate (cached) -> score -> rows.

Every stage is content-addressed under the outputs root, so a sweep such as
`method.ratio=0.001,0.003,0.01 concept=church,parachute` computes each concept's scores once and renders the
unedited images once per benchmark; only the edited images are new per point.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from cad.io import atomic_write_json, package_versions, stable_hash

from .metric_factory import PAIRED, retention_keys
from .models import LoadedModel

log = logging.getLogger("cad.experiments")


def attribution_settings(model: dict, concept: dict, method: dict, attribution: dict) -> dict:
    """Everything that determines the scores (and so names their cache folder)."""
    return {
        "prompt": concept["prompt"], "base_prompt": concept.get("base_prompt", ""),
        "objective": method["objective"], "space": method.get("space", "ff"),
        "steps": int(attribution["steps"]), "guidance": float(attribution["guidance"]),
        "num_samples": int(attribution.get("num_samples", 1)), "seed": int(attribution.get("seed", 0)),
        "estimator": attribution.get("estimator", "trajectory") if method["objective"] == "erase" else "direct",
        "resolution": int(model["resolution"]), "images": attribution.get("images"),
    }


def attribute_cached(loaded: LoadedModel, concept: dict, method: dict, attribution: dict, model: dict,
                     outputs: Path) -> tuple[Any, Path, bool]:
    """Scores from the cache folder named by the model fingerprint and settings, computed once if absent.

    Returns (scores, folder, reused). Scores given explicitly (attribution.scores) are checked against the
    loaded UNet (cad.scores raises ScoresMismatchError for another model's scores).
    """
    from cad.attribution import attribute
    from cad.scores import AttributionScores

    if attribution.get("scores"):
        folder = Path(str(attribution["scores"])).expanduser()
        return AttributionScores.load(folder, unet=loaded.pipe.unet), folder, True
    settings = attribution_settings(model, concept, method, attribution)
    key = stable_hash({"pipeline": loaded.pipeline_fingerprint, **settings})  # UNet, text encoder and VAE
    folder = outputs / "attributions" / loaded.key / concept["name"] / key
    if (folder / "scores.safetensors").is_file():
        return AttributionScores.load(folder, unet=loaded.pipe.unet), folder, True
    res = int(model["resolution"])
    scores = attribute(loaded.pipe, settings["prompt"], objective=settings["objective"],
                       base_prompt=settings["base_prompt"], steps=settings["steps"], guidance=settings["guidance"],
                       num_samples=settings["num_samples"], seed=settings["seed"],
                       estimator=attribution.get("estimator", "trajectory"), space=settings["space"],
                       images=settings["images"], height=res, width=res, progress=False)
    scores.meta.update(model_id=str(model["id"]), model_key=loaded.key, settings=settings)
    scores.save(folder)
    return scores, folder, False


def retain_ranking_cached(scores, loaded: LoadedModel, concept: dict, method: dict, attribution: dict, model: dict,
                          outputs: Path) -> tuple[Any, list[Path]]:
    """With method.retain set, the target's scores ranked against the retained concepts' (cad.retain_ranking;
    each retained concept attributed, and cached, like the target); else the scores unchanged."""
    from cad.retain import retain_ranking

    from .validate import retain_concepts

    retained = retain_concepts(method, concept, model["name"])
    if not retained:
        return scores, []
    kept = [attribute_cached(loaded, c, method, attribution, model, outputs) for c in retained]
    ranked = retain_ranking(scores, [k[0] for k in kept], reduce=method.get("retain_reduce", "mean"),
                            names=[c["name"] for c in retained])
    return ranked, [k[1] for k in kept]


def build_edits(scores, method: dict, outputs: Path, model_key: str) -> tuple[Any, dict[str, Any]]:
    """(the method's edit or None, {variant name: random control edit}); edits are saved by fingerprint."""
    from cad.edits import Edit

    if method["name"] == "none" or scores is None:
        return None, {}
    edit = Edit.from_scores(scores, float(method["ratio"]), method["sign"], method["granularity"])
    controls = {}
    seeds = [method["seed"]] if method["name"] == "random" else list(method.get("controls") or [])
    for seed in seeds:
        controls[f"random-{seed}"] = Edit.random_like(edit, int(seed))
    for e in [edit, *controls.values()]:
        folder = outputs / "edits" / model_key / e.fingerprint
        if not (folder / "edit.safetensors").is_file():
            e.save(folder)
    if method["name"] == "random":
        return None, controls
    return edit, controls


def sampler_of(model: dict, generation: dict) -> dict:
    res = int(model["resolution"])
    return {"steps": int(model["steps"]), "guidance": float(model["guidance"]), "height": res, "width": res,
            "seed_mode": generation.get("seed_mode", "per_item"), "fixed_seed": int(generation.get("fixed_seed", 0))}


def generate_cached(loaded: LoadedModel, benchmark, edit, model: dict, generation: dict, outputs: Path) -> Path:
    """Render the benchmark's missing images (this shard's) into the cache folder; returns the folder."""
    from cad.generate import generate, image_dir, sampler_settings

    s = sampler_of(model, generation)
    sampler = sampler_settings(loaded.pipe, **s)
    out = image_dir(outputs, loaded.cache_key, edit, sampler, benchmark)
    generate(loaded.pipe, benchmark, out, edit=edit, steps=s["steps"], guidance=s["guidance"], height=s["height"],
             width=s["width"], batch_size=int(generation.get("batch_size", 8)), seed_mode=s["seed_mode"],
             fixed_seed=s["fixed_seed"], shard=int(generation.get("shard", 0)),
             num_shards=int(generation.get("num_shards", 1)), progress=False,
             info={"model": loaded.source, "model_key": loaded.key, "unet_fingerprint": loaded.fingerprint,
                   "pipeline_fingerprint": loaded.pipeline_fingerprint, "checkpoint": loaded.checkpoint})
    return out


def score_folder(images: Path, benchmark, metrics: dict, reference: Path | None, concept: dict) -> tuple[dict, dict]:
    """(flat results, protocol) for one image folder; paired metrics (LPIPS) read the original images too."""
    from evaluation.score import score, score_protocols

    plain = {k: m for k, m in metrics.items() if k not in PAIRED}
    results = score(images, benchmark, plain) if plain else {}
    for name in PAIRED:
        if name not in metrics:
            continue
        if reference is None or reference == images:
            continue  # the original model compared with itself carries no information
        # the paired metric reads each item's original image from the reference folder itself
        metrics[name].reference_dir = Path(reference)
        results.update(score(images, benchmark, {name: metrics[name]}, batch_size=16))
    results = retention_keys(results, benchmark, concept)
    return results, score_protocols(images, list(metrics.values()))


def directions(metrics: dict, results: dict, benchmark_name: str) -> dict[str, bool | None]:
    out = {}
    for key in results:
        short = key[len(benchmark_name) + 1:]
        hib = None
        for m in metrics.values():
            hib = m.is_higher_better(short)
            if hib is not None:
                break
        out[key] = True if short == "acc_mean" else hib
    return out


def protocol_of(model: dict, generation: dict, benchmark, score_protocol: dict, loaded: LoadedModel) -> dict:
    backbones = {name: p.get("backbone_weights") or p.get("weights") or p.get("feature_name")
                 or p.get("detector") for name, p in score_protocol.get("metrics", {}).items()}
    return {"steps": int(model["steps"]), "guidance": float(model["guidance"]), "scheduler": model.get("scheduler"),
            "seeds": generation.get("seed_mode", "per_item"), "resolution": int(model["resolution"]),
            "dtype": model.get("dtype"), "backbones": backbones, "n_items": len(benchmark),
            "benchmark_items_hash": (benchmark.meta or {}).get("items_hash"), "unet_fingerprint": loaded.fingerprint,
            "versions": package_versions()}


@contextlib.contextmanager
def timed(label: str):
    """Log how long a stage took (the report's cost estimates come from these lines)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        log.info("%s: %.1fs", label, time.perf_counter() - start)


def run_id_of(run_dir: Path, outputs: Path) -> str:
    """A unique run id: the run folder relative to the outputs root ("multirun/<date>/<time>/3")."""
    try:
        return str(Path(run_dir).resolve().relative_to(Path(outputs).resolve()))
    except ValueError:
        return str(Path(run_dir).resolve())


def write_metrics(run_dir: Path, payload: dict) -> Path:
    return atomic_write_json(run_dir / "metrics.json", payload)
