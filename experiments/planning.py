"""A run's plan from its config, before any weights load (cad.plan does the arithmetic; this reads the config).

- `run_plan(cfg)`: the stages of one job (attribution or the baseline's edit, generation of every benchmark x
  variant) with the cached work under paths.outputs subtracted: an attribution folder whose meta.json records
  the same model and settings, and the unedited model's images already in the image cache (an edited variant's
  folder is named by its edit, known only once the attribution exists, so those count as to do).
- `resolve_memory(cfg)`: attribution.memory=auto made concrete against the visible GPU's free memory (fast on a
  CPU), or a PreflightError naming what would fit when no mode does; called before the model loads.
- `plan_only=true`: the job prints its plan and stops; in a `-m` sweep the callback (sweep_check.py) prints
  every job's plan and their sum, with work that jobs share (one attribution per concept, the unedited images)
  counted once, then stops before any job launches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cad import plan as planner

from .validate import ConfigError

log = logging.getLogger("cad.experiments")

CAD_METHODS = {"cad_erase": "erase", "cad_amplify": "amplify"}


def _device(cfg: Mapping[str, Any]) -> str:
    import torch

    device = str(cfg.get("device", "auto"))
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device.split(":")[0]


def _dtype(cfg: Mapping[str, Any]) -> str:
    """The model's GPU dtype: a plan is for a GPU run, also when printed on a CPU (which runs half models in fp32)."""
    dtype = str(cfg["model"].get("dtype", "float32"))
    return {"fp16": "float16", "bf16": "bfloat16"}.get(dtype, dtype)


def attribution_cached(cfg: Mapping[str, Any], objective: str, concept: Mapping[str, Any]) -> bool:
    """Whether paths.outputs already holds scores for this model, concept and attribution settings."""
    from .pipeline import attribution_settings

    attribution = cfg.get("attribution") or {}
    if attribution.get("scores"):
        return True
    try:
        settings = attribution_settings(cfg["model"], concept, objective, str(cfg["method"].get("space", "ff")),
                                        attribution)
    except (KeyError, TypeError, ValueError):
        return False
    root = Path(cfg["paths"]["outputs"]) / "attributions"
    for meta in root.glob(f"*/{concept['name']}/*/meta.json"):
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if (m.get("settings") == json.loads(json.dumps(settings)) and str(m.get("model_id")) == str(cfg["model"]["id"])
                and (meta.parent / "scores.safetensors").is_file()):
            return True
    return False


def cached_images(cfg: Mapping[str, Any], bench) -> int:
    """Items of `bench` whose unedited image is in the cache (any weights of this model name and this sampler)."""
    from cad.generate import image_dir

    from .pipeline import sampler_of

    probe = image_dir(cfg["paths"]["outputs"], "MODEL", None, sampler_of(cfg["model"], cfg.get("generation") or {}),
                      bench)
    rel = probe.relative_to(Path(cfg["paths"]["outputs"]) / "images" / "MODEL")
    ids = {it.id for it in bench.items}
    found: set[str] = set()
    for folder in (Path(cfg["paths"]["outputs"]) / "images").glob(f"{cfg['model']['name']}*/{rel}"):
        found |= {p.stem for p in folder.glob("*.png")} & ids
    return len(found)


def variants(cfg: Mapping[str, Any]) -> list[str]:
    method = cfg["method"]
    out = ["original"]
    if cfg.get("erase_method"):
        out.append("erased")
    if method.get("name") not in ("none", "random"):
        out.append("edited")
    out += [f"random-{s}" for s in (method.get("controls") or [])]
    if method.get("name") == "random":
        out.append("random")
    return out


def run_plan(cfg: Mapping[str, Any], *, gpu: str | None = None, free_bytes: int | None = None,
             mode: str | None = None) -> planner.Plan:
    """The plan of one job. `gpu`/`free_bytes` default to the visible GPU's (none on a CPU); `mode` to the
    resolved attribution.memory."""
    from evaluation.benchmarks import load_benchmark

    from .validate import benchmark_specs, effective_concept

    model, gen = cfg["model"], cfg.get("generation") or {}
    device = _device(cfg)
    if gpu is None and free_bytes is None and device == "cuda":
        gpu, free_bytes = planner.visible_gpu()
    arch, dtype, res = planner.arch_of(model), _dtype(cfg), int(model["resolution"])
    kind = "cuda"  # a plan is for a GPU: the CUDA-measured coefficients where they exist, else the CPU ones
    concept, method = effective_concept(cfg["concept"], model["name"]), cfg["method"]
    stages: list[planner.Stage] = []
    att = cfg.get("attribution") or {}
    mode = mode or planner.choose_mode(str(att.get("memory") or "auto"), free_bytes,
                                       lambda m: attribution_stage(cfg, concept, m, gpu, arch, dtype, res))
    name = str(method.get("name"))
    for m_name in [cfg["erase_method"]["name"]] if cfg.get("erase_method") else []:
        st = planner.edit_stage(m_name, arch, resolution=res, dtype=dtype, settings=cfg["erase_method"], gpu=gpu,
                                device=kind)
        if st:
            st.parts["key"] = f"edit/{model['name']}/{m_name}/{concept['name']}"
            stages.append(st)
    if name in CAD_METHODS:
        st = attribution_stage(cfg, concept, mode, gpu, arch, dtype, res)
        st.parts["key"] = f"attribution/{model['name']}/{concept['name']}/{CAD_METHODS[name]}/" + json.dumps(
            {k: att.get(k) for k in ("steps", "num_samples", "seed", "estimator", "guidance", "num_images")},
            sort_keys=True)
        stages.append(st)
    else:
        st = planner.edit_stage(name, arch, resolution=res, dtype=dtype, settings=method, gpu=gpu, device=kind)
        if st:
            st.parts["key"] = f"edit/{model['name']}/{name}/{concept['name']}/" + json.dumps(
                {k: v for k, v in method.items() if isinstance(v, (int, float, str))}, sort_keys=True)
            stages.append(st)
    cfg_on = float(model.get("guidance", 0)) > 1 and model.get("family") != "flux"
    batch = gen.get("batch_size", 8)
    batch = 8 if not isinstance(batch, int) else batch
    notes = []
    for spec in (benchmark_specs(dict(cfg)).values() if cfg.get("task", "erase_eval") == "erase_eval" else ()):
        if gen.get("per_label"):
            spec = {**spec, "limit_per_label": int(gen["per_label"])}
        try:
            bench = load_benchmark(spec, data_dir=cfg["paths"].get("data"), limit=gen.get("limit"))
        except (OSError, ValueError) as err:
            notes.append(f"benchmark {spec.get('name')}: its prompts did not load ({err}); its images are not counted")
            continue
        n = len(bench.items)
        for variant in variants(cfg):
            done = cached_images(cfg, bench) if variant == "original" else 0
            st = planner.generation_stage(arch, resolution=res, dtype=dtype, images=n, steps=int(model["steps"]),
                                          cfg=cfg_on, batch=batch, gpu=gpu, cached_images=done, device=kind,
                                          name=f"generation {bench.key} [{variant}]")
            st.parts["key"] = (f"images/{model['name']}/{bench.key}/original" if variant == "original" else None)
            stages.append(st)
    if device == "cpu":
        notes.append("this job runs on a CPU; the figures are for a GPU (plan_only plans a GPU run)")
    return planner.Plan(arch, dtype, res, stages, gpu or planner.DEFAULT_GPU,
                        planner.source_label(kind), free_bytes, notes)


def attribution_stage(cfg, concept, mode, gpu, arch, dtype, res) -> planner.Stage:
    att, model, name = cfg.get("attribution") or {}, cfg["model"], str(cfg["method"].get("name"))
    objective = CAD_METHODS.get(name, "erase")
    return planner.attribution_stage(
        arch, resolution=res, dtype=dtype, mode=mode, objective=objective, steps=int(att.get("steps", 50)),
        num_samples=int(att.get("num_samples", 1)), micro_batch=att.get("micro_batch"),
        estimator=str(att.get("estimator", "trajectory")), num_images=int(att.get("num_images", 8)),
        image_steps=int(model.get("steps", 50)), gpu=gpu, cached=attribution_cached(cfg, objective, concept))


class DoesNotFitError(ConfigError):
    """The run's attribution fits the free GPU memory in no mode (raised before any weights load)."""


def resolve_memory(cfg: dict) -> str | None:
    """attribution.memory resolved for this machine (auto -> fast or low by the plan against the free GPU memory);
    written back into cfg["attribution"]["memory"]. Raises a ConfigError (exit 2) when the run fits in no mode."""

    att = cfg.get("attribution") or {}
    if str(cfg.get("method", {}).get("name")) not in CAD_METHODS or att.get("scores"):
        return None
    if _device(cfg) != "cuda":
        return None
    if cfg["model"].get("device_map"):  # spread over GPUs: one GPU's free memory is not the limit (not planned)
        return None
    gpu, free = planner.visible_gpu()
    arch, dtype, res = planner.arch_of(cfg["model"]), _dtype(cfg), int(cfg["model"]["resolution"])
    from .validate import effective_concept

    concept = effective_concept(cfg["concept"], cfg["model"]["name"])

    def stage(m, r=res):
        return attribution_stage(cfg, concept, m, gpu, arch, dtype, r)

    wanted = str(att.get("memory") or "auto")
    if wanted == "auto":
        chosen = planner.choose_mode("auto", free, stage)
    else:
        chosen = wanted
    if not planner.fits(stage(chosen).peak_bytes, free):
        other = [m for m in ("fast", "low") if m != chosen and planner.fits(stage(m).peak_bytes, free)]
        fix = (f"attribution.memory={other[0]} (~{planner.fmt_bytes(stage(other[0]).peak_bytes)})" if other else
               planner.what_would_fit(arch, free, resolution=res, dtype=dtype, stage_for=stage))
        raise DoesNotFitError(
            f"the attribution of {cfg['model']['name']} at {res} px needs ~{planner.fmt_bytes(stage(chosen).peak_bytes)} "
            f"in memory={chosen} ({planner.source_label('cuda')}), more than the {planner.fmt_bytes(free)} free on "
            f"{gpu}; nothing was loaded. What would fit: {fix}")
    cfg.setdefault("attribution", {})["memory"] = chosen
    return chosen


def log_plan(cfg: Mapping[str, Any], mode: str | None = None) -> planner.Plan | None:
    """The run's first lines: its plan (a planner failure only warns: the plan informs, the run decides)."""
    try:
        p = run_plan(cfg, mode=mode)
    except Exception as err:  # noqa: BLE001 - an estimate must never stop a run that would work
        log.warning("no plan for this run (%s: %s)", type(err).__name__, err)
        return None
    for line in p.lines():
        log.info("%s", line)
    return p


def sum_plans(plans: list[tuple[str, planner.Plan]]) -> list[str]:
    """A sweep's plan: each job's line, then the total with shared work (same key) counted once."""
    seen, secs, images, peak = set(), 0.0, 0, 0
    lines = [f"plan of a sweep of {len(plans)} jobs ({plans[0][1].source if plans else ''}):"]
    for label, p in plans:
        new = [s for s in p.stages if not (s.parts.get("key") and s.parts["key"] in seen)]
        seen |= {s.parts["key"] for s in p.stages if s.parts.get("key")}
        js = sum(s.seconds for s in new)
        ji = sum(s.images for s in new if s.name.startswith("generation"))
        secs, images, peak = secs + js, images + ji, max(peak, p.peak_bytes)
        lines.append(f"  {label}: {ji:,} images to generate, ~{planner.fmt_seconds(js)} new work, peak "
                     f"~{planner.fmt_bytes(p.peak_bytes)}")
    lines.append(f"  total: {images:,} images to generate, ~{secs / 3600:.2f} GPU-hours, peak "
                 f"~{planner.fmt_bytes(peak)} on one GPU")
    return lines


def plan_only(cfg: dict) -> dict:
    """plan_only=true: the job's checks and its plan, printed by the runner; nothing loads or is written."""
    from .validate import PreflightError, plan_run

    missing = None
    try:
        plan_run(cfg)
    except PreflightError as err:  # a plan is for deciding what to fetch: say what is missing, plan all the same
        missing = str(err)
    lines = run_plan(cfg).lines() + ([f"  before running: {missing}"] if missing else [])
    return {"summary": lines + ["plan_only=true: stopped before loading any model"], "plan_only": True}
