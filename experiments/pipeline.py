"""The run as plain functions: attribute (cached by content) -> edit -> generate (cached) -> score -> rows.

Every stage is content-addressed under the outputs root, so a sweep such as
`method.ratio=0.001,0.003,0.01 concept=church,parachute` computes each concept's scores once and renders the
unedited images once per benchmark; only the edited images are new per point. Runs in parallel on one outputs
root (a joblib sweep, a SLURM array) claim what they compute (cad.claims): one process attributes, renders the
concept images or builds a baseline edit, the others wait for it and reuse it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cad import distributed
from cad.claims import HOST, compute_once, new_token, read_claim
from cad.io import atomic_write_json, package_versions, path_under, stable_hash

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
    from cad.scores import AttributionScores

    if attribution.get("scores"):
        folder = Path(str(attribution["scores"])).expanduser()
        return AttributionScores.load(folder, unet=loaded.pipe, force=force), folder, True
    settings = attribution_settings(model, concept, objective, space, attribution)
    key = stable_hash({"pipeline": loaded.pipeline_fingerprint, **settings})  # denoiser, text encoders and VAE
    folder = path_under(outputs, "attributions", loaded.key, concept["name"], key)
    if distributed.world().size > 1:
        return _attribute_together(loaded, concept, attribution, model, folder, settings, objective, space,
                                   protocol, force)
    with compute_once(folder / CLAIM_FILE, lambda: _saved(folder, "scores.safetensors"),
                      what=f"attribution {folder}") as mine:
        if not mine:
            return AttributionScores.load(folder, unet=loaded.pipe, force=force), folder, True
        return _attribute(loaded, concept, attribution, model, folder, settings, objective, space, protocol), \
            folder, False


# A cache folder's claim: the process computing what the folder holds (cad.claims.compute_once).
CLAIM_FILE = ".claim"


def _attribute_together(loaded: LoadedModel, concept: dict, attribution: dict, model: dict, folder: Path,
                        settings: dict, objective: str, space: str, protocol: str | None, force: bool):
    """attribute_cached in a process group: rank 0 holds the folder's claim and decides; every rank then either
    reads the cached scores or takes its share of the trajectories, and rank 0 alone writes them."""
    from cad.scores import AttributionScores

    main = distributed.world().is_main
    claim = compute_once(folder / CLAIM_FILE, lambda: _saved(folder, "scores.safetensors"),
                         what=f"attribution {folder}") if main else contextlib.nullcontext()
    with claim as mine:
        if not distributed.broadcast(mine):
            return AttributionScores.load(folder, unet=loaded.pipe, force=force), folder, True
        scores = _attribute(loaded, concept, attribution, model, folder, settings, objective, space, protocol)
    distributed.barrier()  # the folder is complete before any rank reads it back (the run's scores fields)
    return scores, folder, False


def _saved(folder: Path, main: str) -> bool:
    """Whether an artifact folder is complete: its tensors and, written last, its meta.json."""
    return (folder / main).is_file() and (folder / "meta.json").is_file()


def attribute_kwargs(concept: dict, attribution: dict, model: dict, objective: str, space: str, *,
                     progress: bool = True) -> dict:
    """cad.attribute's arguments (`prompt` among them) for the settings attribute_cached names its folder by: the
    one mapping from a run's config to the call, so every caller computes the cached scores' very attribution."""
    s = attribution_settings(model, concept, objective, space, attribution)
    res = int(model["resolution"])
    return dict(prompt=s["prompt"], objective=objective, base_prompt=s["base_prompt"], steps=s["steps"],
                guidance=s["guidance"], num_samples=s["num_samples"], seed=s["seed"],
                estimator=attribution.get("estimator", "trajectory"), space=space, images=s["images"],
                image_prompt=image_prompt_of(concept, attribution), num_images=int(attribution.get("num_images", 8)),
                image_guidance=float(attribution.get("image_guidance", model["guidance"])),
                schedule_steps=s.get("schedule_steps"), height=res, width=res, progress=progress,
                memory=str(attribution.get("memory") or "auto"), micro_batch=attribution.get("micro_batch"))


def _attribute(loaded: LoadedModel, concept: dict, attribution: dict, model: dict, folder: Path, settings: dict,
               objective: str, space: str, protocol: str | None):
    from cad.attribution import attribute

    kw = attribute_kwargs(concept, attribution, model, objective, space)
    scores = attribute(loaded.backbone, kw.pop("prompt"), **kw)
    # concept_name: what a later attribution.scores=<this folder> is checked against (validate.check_scores_folder)
    scores.meta.update(model_id=str(model["id"]), model_key=loaded.key, settings=settings, protocol=protocol,
                       concept_name=concept["name"])
    if distributed.world().is_main:  # every rank holds the all-reduced scores; one writes them
        scores.save(folder)
    return scores


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
        folder = path_under(outputs, "edits", loaded.key, method.name, key)
        # in a process group rank 0 builds and writes the edit; the other ranks then find it cached
        with distributed.main_first(), compute_once(folder / CLAIM_FILE, lambda: _saved(folder, "edit.safetensors"),
                                                    what=f"{method.name} edit {folder}") as mine:
            if not mine:
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
        folder = path_under(outputs, "edits", loaded.key, e.fingerprint)
        if distributed.world().is_main and not (folder / "edit.safetensors").is_file():
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
    res = int(model["resolution"])
    spec = {"prompt": image_prompt_of(concept, attribution), "num_images": int(attribution.get("num_images", 8)),
            "steps": int(attribution["steps"]), "guidance": float(attribution.get("image_guidance", model["guidance"])),
            "seed": int(attribution.get("seed", 0)), "resolution": res}
    folder = path_under(outputs, "concept_images", loaded.cache_key, concept["name"], stable_hash(spec))
    with distributed.main_first(), compute_once(folder / CLAIM_FILE, (folder / "meta.json").is_file,
                                                what=f"concept images {folder}") as mine:
        if mine:
            _render_concept_images(loaded, spec, int(attribution.get("batch_size") or 8), folder)
    return folder


def _render_concept_images(loaded: LoadedModel, spec: dict, batch: int, folder: Path) -> None:
    import torch

    from cad.io import atomic_save_image

    res = spec["resolution"]
    gen = torch.Generator("cpu").manual_seed(spec["seed"])
    n, done = spec["num_images"], 0
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


def sampler_of(model: dict, generation: dict) -> dict:
    res = int(model["resolution"])
    return {"steps": int(model["steps"]), "guidance": float(model["guidance"]), "height": res, "width": res,
            "seed_mode": generation.get("seed_mode", "per_item"), "fixed_seed": int(generation.get("fixed_seed", 0))}


def generate_cached(loaded: LoadedModel, benchmark, edit, model: dict, generation: dict, outputs: Path,
                    desc: str | None = None) -> Path:
    """Render the benchmark's missing images (this shard's) into the cache folder; returns the folder. In a process
    group each rank renders its share of the shard (generation.shard / num_shards split again by rank) into the same
    folder; call distributed.barrier() before reading the folder whole."""
    from cad.generate import generate, image_dir, sampler_settings

    s = sampler_of(model, generation)
    w = distributed.world()
    shard, num_shards = int(generation.get("shard", 0)), int(generation.get("num_shards", 1))
    shard, num_shards = shard + num_shards * w.rank, num_shards * w.size  # items[shard::num_shards], split by rank
    sampler = sampler_settings(loaded.pipe, **s)
    out = image_dir(outputs, loaded.cache_key, edit, sampler, benchmark)
    generate(loaded.pipe, benchmark, out, edit=edit, call_kwargs=_call_kwargs(loaded, s["guidance"]), steps=s["steps"], guidance=s["guidance"], height=s["height"],
             width=s["width"], batch_size=_batch_size(generation), seed_mode=s["seed_mode"],
             compile=bool(generation.get("compile", False)), channels_last=generation.get("channels_last", "auto"),
             fixed_seed=s["fixed_seed"], shard=shard, num_shards=num_shards, progress=w.is_main, desc=desc,
             info={"model": loaded.source, "model_key": loaded.key, "unet_fingerprint": loaded.fingerprint,
                   "pipeline_fingerprint": loaded.pipeline_fingerprint, "checkpoint": loaded.checkpoint})
    return out


def images_to_generate(loaded: LoadedModel, benchmark, edit, model: dict, generation: dict,
                       outputs: Path) -> tuple[int, int]:
    """(items this run renders for `edit` on `benchmark`, how many of them are already in the image cache): what
    the run says before it starts generating. Cached = recorded in the folder's manifest with its PNG present
    (generation still verifies each one against its item before trusting it)."""
    from cad.generate import image_dir, read_manifest, sampler_settings

    out = image_dir(outputs, loaded.cache_key, edit, sampler_settings(loaded.pipe, **sampler_of(model, generation)),
                    benchmark)
    shard, num_shards = int(generation.get("shard", 0)), int(generation.get("num_shards", 1))
    mine = benchmark.items[shard::num_shards]
    done = read_manifest(out) if out.is_dir() else {}
    cached = sum(1 for it in mine if str(it.id) in done and (out / f"{it.id}.png").is_file())
    return len(mine), cached


def _batch_size(generation: dict) -> int | str:
    """generation.batch_size: a count, or "auto" (cad.speed: the largest batch that fits)."""
    value = generation.get("batch_size", 8)
    return "auto" if value == "auto" else int(value)


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
    source = (benchmark.meta or {}).get("source") or {}
    # a prompt list given by path is pinned by nothing else (the shipped files by PROMPT_FILES, so their rows
    # keep the protocol they had)
    own = {"benchmark_file_sha256": source["sha256"]} if source.get("path") else {}
    # CLIP presence's numbers depend on the texts compared (the concept's prompt and its anchors)
    texts = {n: {"text": p["text"], "anchors": p["anchors"]} for n, p in score_protocol.get("metrics", {}).items()
             if "anchors" in p}
    if texts:
        own["presence_texts"] = texts
    return {**own, "name": name, "steps": int(model["steps"]), "guidance": float(model["guidance"]),
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


def run_id_of(run_dir: Path, outputs: Path, token: str | None = None) -> str:
    """The run id: the run folder relative to the outputs root ("multirun/<date>/<time>/3"; the absolute folder
    outside it), plus "#<token>" for a run that found its folder already taken (claim_run_folder), so that two
    runs never share an id even when they share a folder."""
    try:
        folder = str(Path(run_dir).resolve().relative_to(Path(outputs).resolve()))
    except ValueError:
        folder = str(Path(run_dir).resolve())
    return folder if token is None else f"{folder}#{token}"


# Written (exclusively) by the first run in a run folder: whose folder it is.
RUN_CLAIM = ".cad_run.json"


@dataclass(frozen=True)
class RunFolder:
    """A run's folder as this run holds it: its run id and the file its metrics go to."""

    folder: Path
    run_id: str
    metrics: Path


def claim_run_folder(run_dir: Path, outputs: Path) -> RunFolder:
    """Take the run folder before anything expensive runs. The first run there gets the folder's own id and
    metrics.json. A later run (two sweeps started in the same instant, a hand-set hydra.run.dir used twice, a
    rerun into a finished run's folder) never overwrites them: it gets the id `<folder>#<token>` and writes
    metrics.<token>.json, with a warning naming the folder's owner. In a process group rank 0 claims it and every
    rank gets its answer: one run, one folder, one id."""
    if distributed.world().size > 1:
        return distributed.broadcast(_claim_run_folder(run_dir, outputs) if distributed.world().is_main else None)
    return _claim_run_folder(run_dir, outputs)


def _claim_run_folder(run_dir: Path, outputs: Path) -> RunFolder:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    token = new_token()[:8]
    claim = run_dir / RUN_CLAIM
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        fd = None
    first = fd is not None and not (run_dir / "metrics.json").exists()  # a folder from before claims
    run_id = run_id_of(run_dir, outputs, None if first else token)
    if fd is not None:
        with os.fdopen(fd, "w") as f:
            json.dump({"run_id": run_id, "pid": os.getpid(), "host": HOST, "token": token, "time": time.time()}, f)
    if first:
        return RunFolder(run_dir, run_id, run_dir / "metrics.json")
    owner = read_claim(claim) or {}
    metrics = run_dir / f"metrics.{token}.json"
    log.warning("run folder %s already belongs to run %s (pid %s on %s); this run is %s and writes %s instead of "
                "overwriting its metrics.json. Give every run its own folder (the default hydra.run.dir and "
                "hydra.sweep.dir have microseconds)", run_dir, owner.get("run_id", "?"), owner.get("pid", "?"),
                owner.get("host", "?"), run_id, metrics.name)
    return RunFolder(run_dir, run_id, metrics)


def write_metrics(run_dir: Path | RunFolder, payload: dict) -> Path:
    """metrics.json of the run folder, or the claimed run's own metrics file (rank 0's alone in a process group)."""
    path = run_dir.metrics if isinstance(run_dir, RunFolder) else Path(run_dir) / "metrics.json"
    return atomic_write_json(path, payload) if distributed.world().is_main else path
