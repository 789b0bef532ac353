"""Checks that run before any model is loaded: bad input stops in milliseconds with an error naming the fix."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cad.retain import REDUCES as RETAIN_REDUCES
from cad.selection import GRANULARITIES as KNOWN_GRANULARITY
from cad.selection import SIGNS as KNOWN_SIGNS

from . import CONF_DIR


class ConfigError(ValueError):
    """The run's configuration cannot work; the message says what to change."""


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_concept(name: str) -> dict:
    """A concept option as a plain dict (used to swap in a real concept's toy-world stand-in)."""
    path = CONF_DIR / "concept" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown concept {name!r}; choose one of: {', '.join(_options('concept'))}")
    import yaml

    return yaml.safe_load(path.read_text())


def effective_concept(concept: Mapping[str, Any], model_name: str) -> dict:
    """The concept a run works on: on the toy world a real concept is replaced by its `toy` stand-in."""
    concept = dict(concept)
    is_toy_concept = str(concept.get("kind", "")).startswith("toy_")
    if model_name == "toy" and not is_toy_concept:
        if not concept.get("toy"):
            raise ConfigError(f"concept {concept.get('name')!r} has no toy-world stand-in (`toy:` in its config); "
                              f"with model=toy choose a toy concept, e.g. concept=circle")
        return load_concept(concept["toy"])
    if model_name != "toy" and is_toy_concept:
        raise ConfigError(f"concept {concept['name']!r} exists only in the toy world; with model={model_name} "
                          "choose a real one, e.g. concept=church (Imagenette), concept=nudity or concept=van_gogh")
    return concept


def check_method(method: Mapping[str, Any]) -> None:
    ratio = method.get("ratio")
    try:
        ok = 0.0 <= float(ratio) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"method.ratio={ratio!r} is not a fraction in [0, 1]; e.g. method.ratio=0.01 ablates 1% "
                          "of the component weights")
    if method.get("name") != "none" and float(ratio) == 0.0:
        raise ConfigError(f"method.ratio=0 ablates nothing with method={method.get('name')}; use method=none for "
                          "the unedited model or a ratio > 0")
    if method.get("sign") not in KNOWN_SIGNS:
        raise ConfigError(f"method.sign={method.get('sign')!r}; use one of {KNOWN_SIGNS}")
    if method.get("granularity") not in KNOWN_GRANULARITY:
        raise ConfigError(f"method.granularity={method.get('granularity')!r}; use one of {KNOWN_GRANULARITY}")


def check_model(model: Mapping[str, Any], toy_kit: str | None = None) -> None:
    for key in ("name", "id", "dtype", "steps", "guidance", "resolution"):
        if model.get(key) in (None, ""):
            raise ConfigError(f"model config lacks {key!r}; pick a model option ({', '.join(_options('model'))}) or "
                              "set model.<key>")
    mid = str(model["id"])
    looks_local = mid.startswith(("/", ".", "~")) or Path(mid).expanduser().exists()
    if mid != "toy" and looks_local and not Path(mid).expanduser().is_dir():
        raise ConfigError(f"model.id={mid!r} is not a folder; pass a diffusers pipeline folder (save_pretrained "
                          "layout) or a hub id such as CompVis/stable-diffusion-v1-4")
    if mid == "toy" and toy_kit and not Path(toy_kit).is_dir():
        raise ConfigError(f"toy kit folder {toy_kit} not found; unset CAD_TOY_KIT / paths.toy_kit to use the "
                          "bundled kit, or train one with `make kit`")
    ckpt = model.get("checkpoint")
    if ckpt:
        path = Path(str(ckpt)).expanduser()
        if not path.exists():
            raise ConfigError(f"model.checkpoint={ckpt} does not exist; pass the erased model's UNet weights (a "
                              ".safetensors/.pt/.bin state dict, or a diffusers pipeline/unet folder)")
        if path.is_file() and path.suffix not in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
            raise ConfigError(f"model.checkpoint={ckpt} is not a weights file (.safetensors, .pt, .pth, .bin, .ckpt) "
                              "or a folder")


def check_scores_folder(folder: str | None, model_id: str) -> None:
    """Given scores must exist and name this model (the UNet fingerprint is checked again once loaded)."""
    if not folder:
        return
    path = Path(str(folder)).expanduser()
    if not (path / "scores.safetensors").is_file():
        raise ConfigError(f"attribution.scores={folder}: no scores.safetensors there; point it at a folder under "
                          "outputs/attributions/ or leave it null to compute scores")
    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    made_for = meta.get("model_id")  # set by experiments; other scores are checked by UNet fingerprint on load
    if made_for and str(made_for) != str(model_id):
        raise ConfigError(f"attribution.scores={folder} were made for model {made_for!r}, not {model_id!r}; "
                          "leave attribution.scores null to compute scores for this model")


def check_benchmarks(specs: Mapping[str, Any], data_dir: str | None) -> None:
    """Every benchmark resolves (file present or fetchable, spec valid) before the model is loaded."""
    from evaluation.benchmarks import load_benchmark

    for role, spec in specs.items():
        if spec is None:
            continue
        try:
            load_benchmark(spec, data_dir=data_dir, limit=1)
        except Exception as err:
            raise ConfigError(f"benchmark {role!r} ({spec.get('name', spec) if isinstance(spec, Mapping) else spec}) "
                              f"cannot be loaded: {err}") from err


def retain_concepts(method: Mapping[str, Any], concept: Mapping[str, Any], model_name: str) -> list[dict]:
    """The concepts method.retain names, as effective concepts: a list of concept options, or "siblings" (every
    concept option of the target's kind, e.g. the other toy colours for red, the other Imagenette classes for
    church). Empty when method.retain is unset."""
    spec = method.get("retain") or []
    if spec == "siblings":
        names = [n for n in _options("concept") if n != concept["name"]
                 and str(load_concept(n).get("kind")) == str(concept.get("kind"))]
        if not names:
            raise ConfigError(f"method.retain=siblings: no other concept of kind {concept.get('kind')!r}; list the "
                              "concepts to keep, e.g. method.retain=[church,parachute]")
    elif isinstance(spec, str) or not all(isinstance(n, str) for n in spec):
        raise ConfigError(f"method.retain={spec!r}: give a list of concept options (method.retain=[green,blue]) or "
                          "method.retain=siblings")
    else:
        names = list(spec)
    out = []
    for name in names:
        c = effective_concept(load_concept(name), model_name)
        if c["name"] == concept["name"]:
            raise ConfigError(f"method.retain names the erased concept itself ({name!r} -> {c['name']!r}); drop it")
        if all(c["name"] != o["name"] for o in out):
            out.append(c)
    reduce = method.get("retain_reduce", "mean")
    if out and reduce not in RETAIN_REDUCES:
        raise ConfigError(f"method.retain_reduce={reduce!r}; use one of {RETAIN_REDUCES}")
    return out


def check_run(cfg: Mapping[str, Any]) -> dict:
    """All cheap checks for one run; returns the effective concept."""
    check_model(cfg["model"], cfg.get("paths", {}).get("toy_kit"))
    check_method(cfg["method"])
    concept = effective_concept(cfg["concept"], cfg["model"]["name"])
    retained = retain_concepts(cfg["method"], concept, cfg["model"]["name"])
    if retained and cfg.get("attribution", {}).get("scores"):
        raise ConfigError("attribution.scores and method.retain together: given scores are used as they are; "
                          "unset attribution.scores to rank against the retained concepts")
    check_scores_folder(cfg.get("attribution", {}).get("scores"), str(cfg["model"]["id"]))
    gen = cfg.get("generation", {})
    if not (0 <= int(gen.get("shard", 0)) < int(gen.get("num_shards", 1))):
        raise ConfigError(f"generation.shard={gen.get('shard')} must be in 0..num_shards-1 "
                          f"(num_shards={gen.get('num_shards')})")
    return concept
