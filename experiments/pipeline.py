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


def image_prompt_of(concept: dict, attribution: dict) -> str:
    """CAD-Amplify's image-generation prompt: attribution.image_prompt, else the concept's (set by the
    protocol: "a photo of church" under reference), else the concept prompt."""
    return str(attribution.get("image_prompt") or concept.get("image_prompt") or concept["prompt"])


def attribution_settings(model: dict, concept: dict, objective: str, space: str, attribution: dict) -> dict:
    """Everything that determines the scores (and so names their cache folder). `prompt` is the one the objective
    is conditioned on: for amplify the concept's amplify_prompt where it has one (the bare target under the
    reference protocol), else its prompt."""
    prompt = concept["prompt"]
    if objective == "amplify" and concept.get("amplify_prompt"):
        prompt = concept["amplify_prompt"]
    settings = {
        "prompt": prompt, "base_prompt": concept.get("base_prompt", ""),
        "objective": objective, "space": space,
        "steps": int(attribution["steps"]), "guidance": float(attribution["guidance"]),
        "num_samples": int(attribution.get("num_samples", 1)), "seed": int(attribution.get("seed", 0)),
        "estimator": attribution.get("estimator", "trajectory") if objective == "erase" else "direct",
        "resolution": int(model["resolution"]), "images": concept.get("images") or attribution.get("images"),
    }
    schedule = attribution.get("schedule_steps")
    if schedule is not None and int(schedule) != settings["steps"]:  # other timesteps than a `steps` schedule
        settings["schedule_steps"] = int(schedule)
    if objective == "amplify" and settings["images"] is None:  # the images it generates
        settings.update(image_prompt=image_prompt_of(concept, attribution),
                        num_images=int(attribution.get("num_images", 8)),
                        image_guidance=float(attribution.get("image_guidance", model["guidance"])))
    return settings


def attribute_cached(loaded: LoadedModel, concept: dict, attribution: dict, model: dict, outputs: Path, *,
                     objective: str = "erase", space: str = "ff", force: bool = False,
                     protocol: str | None = None) -> tuple[Any, Path, bool]:
    """Scores from the cache folder named by the model fingerprint and settings, computed once if absent.

    Returns (scores, folder, reused). Scores given explicitly (attribution.scores) are checked against the
    loaded denoiser (cad.scores raises ScoresMismatchError for another model's scores unless force).
    `protocol` (reference, cad) is recorded in the scores' meta; the settings it chose name the folder.
    """
    from cad.attribution import attribute
    from cad.scores import AttributionScores

    if attribution.get("scores"):
        folder = Path(str(attribution["scores"])).expanduser()
        return AttributionScores.load(folder, unet=loaded.pipe, force=force), folder, True
    settings = attribution_settings(model, concept, objective, space, attribution)
    key = stable_hash({"pipeline": loaded.pipeline_fingerprint, **settings})  # denoiser, text encoders and VAE
    folder = outputs / "attributions" / loaded.key / concept["name"] / key
    if (folder / "scores.safetensors").is_file():
        return AttributionScores.load(folder, unet=loaded.pipe, force=force), folder, True
    res = int(model["resolution"])
    scores = attribute(loaded.backbone, settings["prompt"], objective=objective,
                       base_prompt=settings["base_prompt"], steps=settings["steps"], guidance=settings["guidance"],
                       num_samples=settings["num_samples"], seed=settings["seed"],
                       estimator=attribution.get("estimator", "trajectory"), space=space,
                       images=settings["images"], image_prompt=image_prompt_of(concept, attribution),
                       num_images=int(attribution.get("num_images", 8)),
                       image_guidance=float(attribution.get("image_guidance", model["guidance"])),
                       schedule_steps=settings.get("schedule_steps"), height=res, width=res, progress=True)
    scores.meta.update(model_id=str(model["id"]), model_key=loaded.key, settings=settings, protocol=protocol)
    scores.save(folder)
    return scores, folder, False


def method_edits(method, loaded: LoadedModel, concept: dict, retained: list[dict], cfg: dict,
                 outputs: Path) -> tuple[Any, dict[str, Any], dict]:
    """(the method's edit or None, {variant name: control edit}, info) for one run.

    CAD-based methods get cached attribution scores through the context (cheap to rebuild the mask); any other
    method's edit (ESD, UCE, ...) is cached itself, under edits/<model>/<method>/<hash of its settings, the
    concept and the weights>, so a rerun or a second benchmark never trains twice. Every edit is also saved by
    its fingerprint (what results rows point at).
    """
    from cad.edits import load_edit
    from cad.methods import MethodContext

    model, attribution = cfg["model"], cfg["attribution"]
    used: list[tuple[Path, bool]] = []
    force = bool(getattr(method, "allow_other_model", False))

    def scores(c: dict, objective: str, space: str):
        s, folder, reused = attribute_cached(loaded, c, attribution, model, outputs, objective=objective,
                                             space=space, force=force, protocol=protocol_name(cfg))
        used.append((folder, reused))
        return s

    res = int(model["resolution"])
    ctx = MethodContext(backbone=loaded.backbone, concept=concept, retain=retained, seed=int(cfg.get("seed", 0)),
                        attribution={**attribution, "height": res, "width": res}, scores=scores)
    info: dict[str, Any] = {}
    stored = False  # whether `edit` already lives in its method's own cache folder
    if method.uses_scores or method.goal == "none":
        out = method.build(ctx)
        edit, controls, info = out.edit, out.controls, dict(out.info)
    else:
        key = stable_hash({"method": method.settings(), "concept": concept, "pipeline": loaded.pipeline_fingerprint,
                           "resolution": res, "seed": ctx.seed})
        folder = outputs / "edits" / loaded.key / method.name / key
        if (folder / "edit.safetensors").is_file():
            edit, controls, info = load_edit(folder), {}, {"edit_reused": str(folder)}
        else:
            with timed(f"build {method.name} edit"):
                out = method.build(ctx)
            edit, controls, info = out.edit, out.controls, dict(out.info)
            if edit is not None:
                edit.save(folder)
        stored = edit is not None
        info["edit_path"] = str(folder)
    if force:
        # An intended transfer (method.allow_other_model): the edits now target this model; where they were
        # made stays on record.
        here = loaded.backbone.denoiser_identity()
        for e in [edit, *controls.values()]:
            if e is not None and e.made_for not in (None, here):
                e.meta.update(transferred_from=e.made_for, made_for=here)
    for e in [edit, *controls.values()]:
        if e is None or (e is edit and stored):
            continue  # a trained or closed-form edit (GBs for ESD-u) is stored once, in its method's folder
        folder = outputs / "edits" / loaded.key / e.fingerprint
        if not (folder / "edit.safetensors").is_file():
            e.save(folder)
    if used:
        info["scores_path"] = str(used[0][0])
        info["attribution_reused"] = used[0][1]  # the target concept's scores (retained ones follow)
    return edit, controls, info


def protocol_name(cfg: dict) -> str | None:
    """The run's protocol (conf/protocol: reference or cad)."""
    return (cfg.get("protocol") or {}).get("name")


def concept_images_cached(loaded: LoadedModel, concept: dict, attribution: dict, model: dict, outputs: Path) -> Path:
    """CAD-Amplify's concept images rendered by the model as it is now, as PNGs in a folder named by its weights
    and the generation settings, written once (meta.json last marks it complete). amplify_erased renders them
    with the base model before the erased weights are applied, as the reference code does
    (compute_negative_neurons.py generates before loading the erased UNet); meta.json records which model."""
    import torch

    from cad.io import atomic_save_image

    res = int(model["resolution"])
    spec = {"prompt": image_prompt_of(concept, attribution), "num_images": int(attribution.get("num_images", 8)),
            "steps": int(attribution["steps"]), "guidance": float(attribution.get("image_guidance", model["guidance"])),
            "seed": int(attribution.get("seed", 0)), "resolution": res}
    folder = outputs / "concept_images" / loaded.cache_key / concept["name"] / stable_hash(spec)
    if (folder / "meta.json").is_file():
        return folder
    gen = torch.Generator("cpu").manual_seed(spec["seed"])
    batch, n, done = int(attribution.get("batch_size") or 8), spec["num_images"], 0
    with timed(f"render {n} concept images with {loaded.key}"):
        while done < n:
            m = min(batch, n - done)
            out = loaded.pipe(spec["prompt"], num_images_per_prompt=m, num_inference_steps=spec["steps"], height=res,
                              width=res, generator=gen, **loaded.backbone.call_kwargs(spec["guidance"]))
            for img in out.images:
                atomic_save_image(folder / f"{done:04d}.png", img)
                done += 1
    atomic_write_json(folder / "meta.json", {**spec, "model_key": loaded.key, "unet_fingerprint": loaded.fingerprint,
                                             "pipeline_fingerprint": loaded.pipeline_fingerprint,
                                             "checkpoint": loaded.checkpoint})
    return folder


def sampler_of(model: dict, generation: dict) -> dict:
    res = int(model["resolution"])
    return {"steps": int(model["steps"]), "guidance": float(model["guidance"]), "height": res, "width": res,
            "seed_mode": generation.get("seed_mode", "per_item"), "fixed_seed": int(generation.get("fixed_seed", 0))}


def generate_cached(loaded: LoadedModel, benchmark, edit, model: dict, generation: dict, outputs: Path,
                    desc: str | None = None) -> Path:
    """Render the benchmark's missing images (this shard's) into the cache folder; returns the folder."""
    from cad.generate import generate, image_dir, sampler_settings

    s = sampler_of(model, generation)
    sampler = sampler_settings(loaded.pipe, **s)
    out = image_dir(outputs, loaded.cache_key, edit, sampler, benchmark)
    generate(loaded.pipe, benchmark, out, edit=edit, call_kwargs=_call_kwargs(loaded, s["guidance"]), steps=s["steps"], guidance=s["guidance"], height=s["height"],
             width=s["width"], batch_size=int(generation.get("batch_size", 8)), seed_mode=s["seed_mode"],
             fixed_seed=s["fixed_seed"], shard=int(generation.get("shard", 0)),
             num_shards=int(generation.get("num_shards", 1)), progress=True, desc=desc,
             info={"model": loaded.source, "model_key": loaded.key, "unet_fingerprint": loaded.fingerprint,
                   "pipeline_fingerprint": loaded.pipeline_fingerprint, "checkpoint": loaded.checkpoint})
    return out


def _call_kwargs(loaded: LoadedModel, guidance: float) -> dict:
    """The family's own pipeline arguments besides guidance (e.g. FLUX's max_sequence_length)."""
    return {k: v for k, v in loaded.backbone.call_kwargs(guidance).items() if k != "guidance_scale"}


def score_folder(images: Path, benchmark, metrics: dict, reference: Path | None, concept: dict) -> tuple[dict, dict]:
    """(flat results, protocol) for one image folder; paired metrics (LPIPS) read the original images too."""
    from evaluation.score import score, score_protocols

    plain = {k: m for k, m in metrics.items() if k not in PAIRED}
    results = score(images, benchmark, plain, progress=True) if plain else {}
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


def protocol_of(model: dict, generation: dict, benchmark, score_protocol: dict, loaded: LoadedModel,
                name: str | None = None) -> dict:
    """What a result row was measured under; `name` is the run's attribution protocol (reference or cad)."""
    backbones = {name: p.get("backbone_weights") or p.get("weights") or p.get("feature_name")
                 or p.get("detector") for name, p in score_protocol.get("metrics", {}).items()}
    return {"name": name, "steps": int(model["steps"]), "guidance": float(model["guidance"]),
            "scheduler": model.get("scheduler"),
            "seeds": generation.get("seed_mode", "per_item"), "resolution": int(model["resolution"]),
            "dtype": loaded.dtype or model.get("dtype"), "backbones": backbones, "n_items": len(benchmark),
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
