"""Checks that run before any model is loaded: bad input stops in milliseconds with an error naming the fix.

`check_run` (called first by every task) checks, in order: the schema (unknown keys are refused even when
added with `+`, with a "did you mean"), names that reach the file system, every number's range, the device,
the model, the method, the concept, retained concepts, given scores, sharding and (erase_eval) each
metric's weights and reference data. The schema is generic: for each config group the allowed keys are those
of the chosen option's own yaml file (conf/<group>/<option>.yaml, found by the option's `name`; every option
of the group when no file has that name) plus the few optional keys in OPTIONAL_KEYS; top-level keys are
those of conf/config.yaml, the groups, and what `@package _global_` options (experiments, twins, worlds,
launchers) set; a method's settings are the fields of its plugin dataclass (cad.methods.build_method). A new
model family or method plugin therefore needs its module and yaml file only.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cad.io import UnsafeNameError, safe_name
from cad.retain import REDUCES as RETAIN_REDUCES

from . import CONF_DIR


class ConfigError(ValueError):
    """The run's configuration cannot work; the message says what to change."""


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# Keys an option may carry without its yaml file listing them (read with .get(...) by the runners).
OPTIONAL_KEYS: dict[str, set[str]] = {
    "model": {"checkpoint", "scheduler", "vae_scale_factor", "family", "backbone"},
    "concept": {"toy", "kind", "label", "base_prompt", "negative_prompt", "images", "prompts", "image_prompt",
                "amplify_prompt"},
    "benchmark": {"limit_per_label", "subset", "meta", "limit", "description"},
    "attribution": {"images", "batch_size", "scores"},
    "generation": set(),
    "logger": set(),
    "paths": set(),
}
# Groups whose sections are method settings, checked against the plugin's dataclass fields instead.
METHOD_GROUPS = ("method", "erase_method", "method_world")
# Top-level keys beyond conf/config.yaml, the groups and what global-package options set.
OPTIONAL_TOP_KEYS = {"hydra"}


@lru_cache(maxsize=256)
def _yaml(path: Path) -> tuple[dict, bool]:
    """(content, is a `@package _global_` file) of a conf file."""
    import yaml

    text = path.read_text()
    return (yaml.safe_load(text) or {}), "@package _global_" in text[:300]


def _option_keys(group: str, option: str | None) -> set[str] | None:
    """Keys of conf/<group>/<option>.yaml (following `defaults:` entries of the same group); None if absent."""
    path = CONF_DIR / group / f"{option}.yaml"
    if option is None or not path.is_file():
        return None
    data, _ = _yaml(path)
    keys = {k for k in data if k != "defaults"}
    for entry in data.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            keys |= _option_keys(group, entry.rsplit("/", 1)[-1]) or set()
    return keys


def _group_dirs() -> list[str]:
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def _global_sets() -> dict[str, set[str]]:
    """What `@package _global_` options set: top-level key -> the keys they set under it ("" = scalars)."""
    out: dict[str, set[str]] = {}
    for group in _group_dirs():
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            data, is_global = _yaml(path)
            if not is_global:
                continue
            for key, value in data.items():
                if key in ("defaults", "hydra"):
                    continue
                out.setdefault(key, set()).update(value if isinstance(value, dict) else ())
            for entry in data.get("defaults") or []:  # `- /benchmark@twin_benchmarks.target: toy_objects`
                if isinstance(entry, dict):
                    for target in entry:
                        if "@" in str(target):
                            out.setdefault(str(target).split("@", 1)[1].split(".")[0], set())
    return out


def _unknown(keys, allowed: set[str], where: str) -> None:
    bad = sorted(k for k in keys if k not in allowed)
    if not bad:
        return
    key = bad[0]
    close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
    hint = f"; did you mean {where}{close[0]}?" if close else ""
    raise ConfigError(f"unknown config key {where}{key}{hint} Known keys of {where.rstrip('.') or 'the config'}: "
                      f"{', '.join(sorted(allowed))}. Remove it (a `+key=` override adds keys Hydra does not know; "
                      "cad refuses them instead of ignoring them)")


def check_schema(cfg: Mapping[str, Any]) -> None:
    """Refuse keys that no config file defines (typos such as `+method.ration=0.01`), naming the closest key."""
    base, _ = _yaml(CONF_DIR / "config.yaml")
    globals_ = _global_sets()
    # Method sections are checked by their plugin's own fields (check_method, cad.methods.build_method), so
    # the groups that compose method settings need no file-based schema here.
    groups = [g for g in _group_dirs() if not all(_yaml(p)[1] for p in (CONF_DIR / g).glob("*.yaml"))
              and g not in METHOD_GROUPS]
    top = ({k for k in base if k not in ("defaults", "hydra")} | set(groups) | set(globals_) | OPTIONAL_TOP_KEYS
           | {"method", "erase_method"})
    _unknown(cfg, top, "")
    for group in groups:
        section = cfg.get(group)
        if not isinstance(section, Mapping):
            continue
        name = section.get("name")
        keys = _option_keys(group, None if name is None else str(name))
        if keys is None:  # an option renamed by an override (model.name=mine): any option's keys are fine
            keys = set().union(*(_option_keys(group, o) or set() for o in _options(group)))
        allowed = keys | OPTIONAL_KEYS.get(group, set()) | globals_.get(group, set())
        if group == "benchmark":
            from evaluation.benchmarks import _SPEC_KEYS

            allowed |= set(_SPEC_KEYS)
        _unknown(section, allowed, f"{group}.")
    for key, value in base.items():
        if isinstance(value, dict) and value and isinstance(cfg.get(key), Mapping):
            allowed = set(value) | OPTIONAL_KEYS.get(key, set()) | globals_.get(key, set())
            _unknown(cfg[key], allowed, f"{key}.")
    for role, spec in (cfg.get("retain") or {}).items():
        if isinstance(spec, Mapping):
            from evaluation.benchmarks import _SPEC_KEYS

            _unknown(spec, set(_SPEC_KEYS) | OPTIONAL_KEYS["benchmark"], f"retain.{role}.")
    protocol = cfg.get("protocol")
    if isinstance(protocol, Mapping):  # conf/protocol options are global-package files: their keys are the schema
        _unknown(protocol, globals_.get("protocol", set()), "protocol.")
        if protocol.get("name") not in _options("protocol"):
            raise ConfigError(f"protocol.name={protocol.get('name')!r} is not a protocol; choose protocol=reference "
                              f"(the authors' code's settings) or protocol=cad (conf/protocol: "
                              f"{', '.join(_options('protocol'))})")


def check_names(cfg: Mapping[str, Any], concept: Mapping[str, Any] | None = None) -> None:
    """Names that become folder names (outputs/attributions/<model>/<concept>/..., W&B run names, image
    caches) must be single plain path components: `..`, separators and absolute paths are refused."""
    named = [("model.name", (cfg.get("model") or {}).get("name")),
             ("concept.name", (cfg.get("concept") or {}).get("name")),
             ("experiment_name", cfg.get("experiment_name")),
             ("method.name", (cfg.get("method") or {}).get("name")),
             ("benchmark.name", (cfg.get("benchmark") or {}).get("name"))]
    if concept is not None:
        named.append(("concept.toy", concept.get("name")))
    named += [(f"retain.{role}.name", spec.get("name")) for role, spec in (cfg.get("retain") or {}).items()
              if isinstance(spec, Mapping)]
    logger = cfg.get("logger") or {}
    if isinstance(logger, Mapping) and logger.get("group") is not None:
        named.append(("logger.group", logger.get("group")))
    for what, value in named:
        if value is None and what in ("experiment_name", "logger.group"):
            continue
        try:
            safe_name(value, what)
        except UnsafeNameError as err:
            raise ConfigError(str(err)) from err


def _number(value, what: str, *, lo=None, integer=False, fix: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and integer:
        ok = float(value).is_integer()
    if ok and lo is not None:
        ok = float(value) >= lo
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{what}={value!r} must be {kind}" + (f" >= {lo:g}" if lo is not None else "") + f"; {fix}")
    return float(value)


def vae_scale_factor(model: Mapping[str, Any], toy_kit: str | None = None) -> int:
    """Pixels per latent cell, read from the VAE config where it is on disk (toy kit, local folders), else
    model.vae_scale_factor, else 8 (every Stable Diffusion family)."""
    if model.get("vae_scale_factor"):
        return int(model["vae_scale_factor"])
    mid = str(model.get("id", ""))
    if mid == "toy":
        from cad.toy.kit import DEFAULT_KIT

        folder = Path(toy_kit) if toy_kit else DEFAULT_KIT
        candidates = [folder / "pipeline" / "vae" / "config.json"]
    else:
        candidates = [Path(mid).expanduser() / "vae" / "config.json"]
    for path in candidates:
        try:
            channels = json.loads(path.read_text())["block_out_channels"]
            return 2 ** (len(channels) - 1)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 8


def family_size_unit(model: Mapping[str, Any], factor: int) -> tuple[int, str]:
    """(the multiple every image side must be, why) for the model's family (Backbone.size_multiple), given its
    VAE factor and, for a local folder, its denoiser config: checked here instead of failing after attribution."""
    from cad.backbones import get_family

    try:
        family = get_family(str(model.get("family") or "sd"))
    except ValueError as err:
        raise ConfigError(f"model.family={model.get('family')!r}: {err}") from err
    try:
        path = Path(str(model.get("id", ""))).expanduser() / family.denoiser_attr / "config.json"
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        config = {}
    return family.size_multiple(factor, config)


def check_numbers(cfg: Mapping[str, Any]) -> None:
    """Every number in range, before anything is loaded."""
    model, method = cfg.get("model") or {}, cfg.get("method") or {}
    att, gen, fid = cfg.get("attribution") or {}, cfg.get("generation") or {}, cfg.get("fidelity") or {}
    for what, value in (("model.guidance", model.get("guidance")), ("attribution.guidance", att.get("guidance"))):
        if value is not None:
            _number(value, what, lo=0, fix="classifier-free guidance scales are >= 0 (SD uses 7.5; 1 = no guidance)")
    for what, value in (("model.steps", model.get("steps")), ("attribution.steps", att.get("steps")),
                        ("fidelity.steps", fid.get("steps"))):
        if value is not None:
            _number(value, what, lo=1, integer=True, fix="the sampler needs at least one step, e.g. 50")
    for what, value in (("generation.batch_size", gen.get("batch_size")),
                        ("attribution.batch_size", att.get("batch_size")),
                        ("attribution.num_samples", att.get("num_samples")),
                        ("fidelity.num_samples", fid.get("num_samples")),
                        ("fidelity.n_ablations", fid.get("n_ablations"))):
        if value is not None:
            _number(value, what, lo=1, integer=True, fix="use a positive count, e.g. 8")
    for what, value in (("generation.num_shards", gen.get("num_shards")),):
        if value is not None:
            _number(value, what, lo=1, integer=True, fix="use 1 for one job, or the number of shard jobs")
    for what, value in (("generation.limit", gen.get("limit")), ("generation.per_label", gen.get("per_label"))):
        if value is not None:
            _number(value, what, lo=1, integer=True, fix="use a positive count, or null for every item")
    seeds = [("seed", cfg.get("seed")), ("attribution.seed", att.get("seed")),
             ("generation.fixed_seed", gen.get("fixed_seed")), ("generation.shard", gen.get("shard")),
             ("method.seed", method.get("seed")), ("fidelity.seed", fid.get("seed"))]
    seeds += [(f"method.controls[{i}]", s) for i, s in enumerate(method.get("controls") or [])]
    for what, value in seeds:
        if value is not None:
            _number(value, what, lo=0, integer=True, fix="seeds are non-negative integers, e.g. 0")
    if att.get("num_images") is not None:
        _number(att["num_images"], "attribution.num_images", lo=1, integer=True,
                fix="CAD-Amplify needs at least one concept image, e.g. 50")
    if att.get("schedule_steps") is not None:
        _number(att["schedule_steps"], "attribution.schedule_steps", lo=max(1, int(att.get("steps") or 1)),
                integer=True, fix="the trajectory takes attribution.steps timesteps of a schedule this long (the "
                "reference's 50), so it must be >= attribution.steps; or null for a schedule of exactly steps")
    if att.get("image_model") not in (None, "base", "erased"):
        raise ConfigError(f"attribution.image_model={att.get('image_model')!r}; use base (CAD-Amplify on an erased "
                          "model renders its concept images with the base model) or erased (with the erased model)")
    for i, r in enumerate(fid.get("ratios") or []):
        _number(r, f"fidelity.ratios[{i}]", lo=0, fix="ratios are fractions in [0, 1]")
        if float(r) > 1:
            raise ConfigError(f"fidelity.ratios[{i}]={r} is not a fraction in [0, 1]; e.g. 0.01")
    res = model.get("resolution")
    if res is not None:
        _number(res, "model.resolution", lo=1, integer=True, fix="use the model's native size, e.g. 512")
        factor = vae_scale_factor(model, (cfg.get("paths") or {}).get("toy_kit"))
        if int(res) % factor:
            lower = int(res) // factor * factor
            raise ConfigError(f"model.resolution={res} is not divisible by the VAE's downsampling factor {factor} "
                              f"of model {model.get('name')!r}; use a multiple of {factor}, e.g. "
                              f"{lower or factor} or {lower + factor}")
        unit, why = family_size_unit(model, factor)
        if int(res) % unit:
            lower = int(res) // unit * unit
            raise ConfigError(f"model.resolution={res} is not a multiple of {unit} ({why}) for model "
                              f"{model.get('name')!r} of family {model.get('family') or 'sd'}; use e.g. "
                              f"{lower or unit} or {lower + unit}")


def check_device(device: Any) -> None:
    """The device exists on this machine (asked for cuda without CUDA is an error now, not after loading)."""
    import torch

    text = str(device if device is not None else "auto")
    m = re.fullmatch(r"(auto|cpu|mps|cuda)(?::(\d+))?", text)
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ConfigError(f"device={text!r} is not a device; use device=auto (cuda if available), cpu, cuda or "
                          "cuda:<index>")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={text} but CUDA is not available on this machine (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda}); use device=cpu or "
                              "device=auto, or install a CUDA build of torch on a GPU machine")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"device={text} but this machine has {torch.cuda.device_count()} CUDA devices; use "
                              f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device={text} but MPS is not available here; use device=cpu or device=auto")


def load_concept(name: str, protocol: str | None = None) -> dict:
    """A concept option as a plain dict (a real concept's toy-world stand-in, retained concepts), its prompts
    resolved for `protocol` (conf/protocol; None: reference, the default) as the composed config resolves them."""
    path = CONF_DIR / "concept" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown concept {name!r}; choose one of: {', '.join(_options('concept'))}")
    import yaml
    from omegaconf import OmegaConf

    raw = yaml.safe_load(path.read_text())
    view = OmegaConf.create({"protocol": {"name": protocol or "reference"}, "concept": raw})
    return OmegaConf.to_container(view.concept, resolve=True)


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


def check_method(method: Mapping[str, Any], where: str = "method"):
    """The method plugin the config names, built before any model loads: its dataclass fields are its schema
    (an unknown key is refused with a "did you mean"), `validate()` checks the values."""
    from cad.methods import MethodConfigError, build_method

    try:
        return build_method(dict(method), where)
    except MethodConfigError as err:
        raise ConfigError(str(err)) from err


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
        from cad.checkpoints import CheckpointFormatError, detect_format

        try:
            detect_format(path)  # headers and key names only: a wrong or pickled file stops before the model loads
        except CheckpointFormatError as err:
            raise ConfigError(f"model.checkpoint={ckpt}: {err}") from err


def check_scores_folder(folder: str | None, model_id: str) -> None:
    """Given scores must exist and name this model (the UNet fingerprint is checked again once loaded)."""
    if not folder:
        return
    from cad.scores import ScoresCorruptError, ScoresMismatchError, read_scores_meta

    path = Path(str(folder)).expanduser()
    if not (path / "scores.safetensors").is_file():
        raise ConfigError(f"attribution.scores={folder}: no scores.safetensors there; point it at a folder under "
                          "outputs/attributions/ or leave it null to compute scores")
    try:
        meta, _ = read_scores_meta(path)  # the identity embedded in the file; a disagreeing sidecar is an error
    except (ScoresCorruptError, ScoresMismatchError) as err:
        raise ConfigError(f"attribution.scores={folder}: {err}") from err
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


# Metrics that split a benchmark's items by the target concept's label (acc_target / acc_others, LPIPS
# erased / others): on the target benchmark that label must be one of its classes.
LABELLED_METRICS = ("classifier_accuracy", "lpips", "toy_lpips")


def benchmark_labels(spec: Any, data_dir: str | None = None) -> list[str] | None:
    """The class labels of a benchmark spec, known before any model loads: the toy world's vocabulary for a
    toy generator, the prompt file's label column otherwise; None when the file cannot be read here (then
    check_benchmarks reports why)."""
    from evaluation.benchmarks import load_benchmark, load_spec

    try:
        spec = load_spec(spec)
    except ValueError:
        return None
    source = spec.get("source") or {}
    if isinstance(source, Mapping) and source.get("generator") == "toy":
        from cad.toy.world import KINDS

        fields = re.findall(r"{(\w+)}", str(source.get("template", "")))
        field = source.get("label", fields[-1] if fields else None)
        return list(KINDS[field]) if field in KINDS else None
    try:
        return load_benchmark(spec, data_dir=data_dir).labels
    except Exception:  # noqa: BLE001 - a missing or broken file is check_benchmarks' error to report
        return None


def check_target_label(spec: Any, concept: Mapping[str, Any], data_dir: str | None = None) -> None:
    """The target benchmark has the concept's label as a class where its metrics need one (otherwise
    acc_target would silently score a placeholder class). Retention benchmarks of another kind are fine."""
    if not isinstance(spec, Mapping) or not any(m in LABELLED_METRICS for m in spec.get("metrics") or []):
        return
    labels = benchmark_labels(spec, data_dir)
    label = concept.get("label")
    if labels is None or label in labels:
        return
    fits = []
    for option in _options("benchmark"):
        other = _yaml(CONF_DIR / "benchmark" / f"{option}.yaml")[0]
        if any(m in LABELLED_METRICS for m in other.get("metrics") or []) and \
                label in (benchmark_labels(other, data_dir) or []):
            fits.append(option)
    fix = (f"choose benchmark={' or benchmark='.join(fits)}, whose labels include {label!r}" if fits
           else "choose a benchmark whose labels include it")
    raise ConfigError(f"concept {concept.get('name')!r} (label {label!r}) is not a class of the target benchmark "
                      f"{spec.get('name')!r}, whose labels are: {', '.join(map(str, labels))}; {fix}, or a "
                      "concept among those labels")


def retain_concepts(method: Mapping[str, Any], concept: Mapping[str, Any], model_name: str,
                    protocol: str | None = None) -> list[dict]:
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
        c = effective_concept(load_concept(name, protocol), model_name)
        if c["name"] == concept["name"]:
            raise ConfigError(f"method.retain names the erased concept itself ({name!r} -> {c['name']!r}); drop it")
        if all(c["name"] != o["name"] for o in out):
            out.append(c)
    reduce = method.get("retain_reduce", "mean")
    if out and reduce not in RETAIN_REDUCES:
        raise ConfigError(f"method.retain_reduce={reduce!r}; use one of {RETAIN_REDUCES}")
    return out


@dataclass
class RunPlan:
    """What the checks resolved, so the runner does not resolve it again: the effective concept, the method
    plugin, the erasing plugin of amplify_erased (or None) and the retained concepts."""

    concept: dict
    method: Any
    erase_method: Any
    retained: list[dict]


def check_run(cfg: Mapping[str, Any]) -> dict:
    """All cheap checks for one run; returns the effective concept."""
    return plan_run(cfg).concept


def plan_run(cfg: Mapping[str, Any]) -> RunPlan:
    """All cheap checks for one run, before anything is loaded; returns what they resolved."""
    check_schema(cfg)
    check_names(cfg)
    check_numbers(cfg)
    check_device(cfg.get("device", "auto"))
    check_model(cfg["model"], cfg.get("paths", {}).get("toy_kit"))
    method = check_method(cfg["method"])
    erase_method = check_method(cfg["erase_method"], "erase_method") if cfg.get("erase_method") else None
    if cfg.get("experiment_name") == "amplify_erased" and not cfg.get("erase_method") \
            and not (cfg.get("model") or {}).get("checkpoint"):
        raise ConfigError("experiment=amplify_erased needs an erased model: erase_method=<esd|uce|rece|conceptprune|"
                          "cad_erase> (erased here) or model.checkpoint=<the erased model's weights>")
    concept = effective_concept(cfg["concept"], cfg["model"]["name"])
    check_names(cfg, concept)
    retained = retain_concepts(cfg["method"], concept, cfg["model"]["name"], (cfg.get("protocol") or {}).get("name"))
    if retained and cfg.get("attribution", {}).get("scores"):
        raise ConfigError("attribution.scores and method.retain together: given scores are used as they are; "
                          "unset attribution.scores to rank against the retained concepts")
    check_scores_folder(cfg.get("attribution", {}).get("scores"), str(cfg["model"]["id"]))
    gen = cfg.get("generation", {})
    if not (0 <= int(gen.get("shard", 0)) < int(gen.get("num_shards", 1))):
        raise ConfigError(f"generation.shard={gen.get('shard')} must be in 0..num_shards-1 "
                          f"(num_shards={gen.get('num_shards')})")
    if cfg.get("task", "erase_eval") == "erase_eval":
        check_target_label(cfg.get("benchmark"), concept, (cfg.get("paths") or {}).get("data"))
        check_metrics(cfg)
    return RunPlan(concept, method, erase_method, retained)


def check_metrics(cfg: Mapping[str, Any]) -> None:
    """Every metric of every benchmark the run scores finds its weights and reference data now (an offline GPU
    node must not learn after hours of generation that ResNet-50 or the FID reference folder is missing)."""
    from .metric_factory import MetricPreflightError, preflight_metrics

    specs = {"target": cfg.get("benchmark")}
    specs.update({role: spec for role, spec in (cfg.get("retain") or {}).items() if spec is not None})
    toy = str((cfg.get("model") or {}).get("id")) == "toy"
    for role, spec in specs.items():
        if not isinstance(spec, Mapping):
            continue
        try:
            preflight_metrics(list(spec.get("metrics") or []), spec, toy=toy)
        except MetricPreflightError as err:
            raise ConfigError(f"benchmark {role!r} ({spec.get('name')}): {err}") from err


def preflight(cfg: Mapping[str, Any]) -> RunPlan:
    """Every check a run makes before it loads anything: what the runners call first, and what a sweep runs on
    each of its jobs before launching any (experiments/sweep_check.py)."""
    plan = plan_run(cfg)
    if cfg.get("task", "erase_eval") == "erase_eval":
        specs = {"target": cfg.get("benchmark")}
        specs.update({role: spec for role, spec in (cfg.get("retain") or {}).items() if spec is not None})
        check_benchmarks(specs, (cfg.get("paths") or {}).get("data"))
    return plan
