"""Checks that run before any model is loaded: bad input stops in milliseconds with an error naming the fix.

`check_run` (called first by every task) checks, in order: the schema (unknown keys are refused even when
added with `+`, with a "did you mean"), names that reach the file system, every number's range (seeds within
what torch.Generator takes), the device, the outputs folder (writable; results.jsonl not a folder), the model
config, the method, the concept, retained concepts, given scores, sharding and (erase_eval) the metric lists;
each of these config errors stops alone. Then `check_assets` looks for every file the run needs (the model
snapshot: a local folder's model_index.json and its files readable from their headers, or a hub id in the HF
cache when offline; model.checkpoint; the toy kit; for erase_eval each benchmark's prompt data and each
metric's weights and reference data) and reports all that are missing at once, as one checklist
(`PreflightError`, a list of `AssetCheck`). The schema is generic: for each config group the allowed keys are those
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

from cad.errors import UserError
from cad.io import UnsafeNameError, safe_name, stable_hash
from cad.retain import REDUCES as RETAIN_REDUCES

from . import CONF_DIR


class ConfigError(UserError, ValueError):
    """The run's configuration cannot work; the message says what to change."""


@dataclass(frozen=True)
class AssetCheck:
    """One missing or invalid asset of a run: what it is, where cad looked (None: the fix says), and the fix
    (what is wrong and what to do)."""

    what: str
    where: str | None
    fix: str


class PreflightError(ConfigError):
    """Every missing or invalid asset of a run at once (model snapshot, checkpoint, prompt files, metric
    weights, FID reference) as one checklist: a user on an offline node fixes them all in one round instead of
    learning of the next one after each rerun. `checks` holds them."""

    def __init__(self, checks):
        super().__init__(list(checks))  # args = (checks,): the error pickles (sweep jobs) with its checklist

    @property
    def checks(self) -> list[AssetCheck]:
        return self.args[0]

    def __str__(self) -> str:
        return checklist(self.checks)


def checklist(checks: list[AssetCheck]) -> str:
    one = len(checks) == 1
    lines = [f"this run cannot start: {len(checks)} of its assets {'is' if one else 'are'} missing or invalid "
             f"(all looked for before loading anything; fix {'it' if one else 'them all'}, then rerun):"]
    for check in checks:
        lines.append(f"  [ ] {check.what}" + (f"  (looked in {check.where})" if check.where else ""))
        lines += [f"      {line}" for line in str(check.fix).strip().splitlines()]
    return "\n".join(lines)


def _stop(checks: list[AssetCheck]) -> None:
    if checks:
        raise PreflightError(checks)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# Keys an option may carry without its yaml file listing them (read with .get(...) by the runners).
OPTIONAL_KEYS: dict[str, set[str]] = {
    "model": {"checkpoint", "scheduler", "vae_scale_factor", "family", "backbone", "device_map"},
    "concept": {"toy", "kind", "label", "base_prompt", "negative_prompt", "images", "prompts", "image_prompt",
                "amplify_prompt", "anchors"},
    "benchmark": {"limit_per_label", "subset", "meta", "limit", "description"},
    "attribution": {"images", "batch_size", "scores", "allow_other_scores"},
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
    """Names that become folder or file names (outputs/attributions/<model>/<concept>/...,
    outputs/edits/<model>/<method or erase_method>/..., conf/concept/<retained>.yaml, W&B run names, image
    caches, grid files) must be single plain path components: `..`, separators and absolute paths are refused."""
    named = [("model.name", (cfg.get("model") or {}).get("name")),
             ("concept.name", (cfg.get("concept") or {}).get("name")),
             ("experiment_name", cfg.get("experiment_name")),
             ("method.name", (cfg.get("method") or {}).get("name")),
             ("benchmark.name", (cfg.get("benchmark") or {}).get("name"))]
    if cfg.get("erase_method"):  # amplify_erased: its edit is cached under edits/<model>/<erase_method.name>/
        named.append(("erase_method.name", (cfg.get("erase_method") or {}).get("name")))
    toy = (cfg.get("concept") or {}).get("toy")
    if toy is not None:  # read as conf/concept/<toy>.yaml
        named.append(("concept.toy", toy))
    retain = (cfg.get("method") or {}).get("retain")
    if isinstance(retain, (list, tuple)):  # read as conf/concept/<name>.yaml
        named += [(f"method.retain[{i}]", n) for i, n in enumerate(retain)]
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
        if value is None and what == "concept.name" and (cfg.get("concept") or {}).get("kind") == CUSTOM:
            continue  # concept=custom: named after its prompt (custom_name), checked once derived
        if value is None and what == "benchmark.name" and "path" in (cfg.get("benchmark") or {}):
            continue  # benchmark=file: named after its file (evaluation/prompt_lists.py), a safe name by construction
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


def check_seed(value, what: str) -> int:
    """A seed torch.Generator.manual_seed takes as given: an integer in [0, 2**64) (a larger one fails with
    "Overflow when unpacking long long" only after the model has loaded)."""
    from evaluation.benchmarks import SEED_LIMIT

    fix = "seeds are non-negative integers below 2**64 (0 <= seed < 2**64 = 18446744073709551616), e.g. 0"
    _number(value, what, lo=0, integer=True, fix=fix)
    if int(value) >= SEED_LIMIT:
        raise ConfigError(f"{what}={value!r} is too large: {fix}")
    return int(value)


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
    if gen.get("batch_size") not in (None, "auto"):
        _number(gen["batch_size"], "generation.batch_size", lo=1, integer=True,
                fix="use a positive count, e.g. 8, or auto (the largest batch that fits the GPU)")
    if not isinstance(gen.get("compile", False), bool):
        raise ConfigError(f"generation.compile={gen['compile']!r} must be true or false (true: torch.compile the "
                          "denoiser for generation)")
    if gen.get("channels_last", "auto") != "auto" and not isinstance(gen.get("channels_last"), bool):
        raise ConfigError(f"generation.channels_last={gen['channels_last']!r} must be auto (channels-last for UNets "
                          "compiled on CUDA), true or false")
    for what, value in (("attribution.batch_size", att.get("batch_size")),
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
            check_seed(value, what)
    if att.get("num_images") is not None:
        _number(att["num_images"], "attribution.num_images", lo=1, integer=True,
                fix="CAD-Amplify needs at least one concept image, e.g. 50")
    if att.get("schedule_steps") is not None:
        _number(att["schedule_steps"], "attribution.schedule_steps", lo=max(1, int(att.get("steps") or 1)),
                integer=True, fix="the trajectory takes attribution.steps timesteps of a schedule this long (the "
                "reference's 50), so it must be >= attribution.steps; or null for a schedule of exactly steps")
    if str(att.get("memory") or "auto") not in ("auto", "fast", "low"):
        raise ConfigError(f"attribution.memory={att.get('memory')!r}; use auto (the fastest mode that fits the GPU), "
                          "fast (one batch, activations kept) or low (gradient checkpointing and micro-batches)")
    if att.get("micro_batch") is not None:
        _number(att["micro_batch"], "attribution.micro_batch", lo=1, integer=True,
                fix="trajectories or images per gradient pass, e.g. 1 (or null for the mode's default)")
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


def check_outputs(outputs: Any) -> None:
    """paths.outputs is a folder cad can create or write, and its results.jsonl is not a folder: otherwise the
    run would fail writing its first artifact, or (results.jsonl) only after generating and scoring everything."""
    import os

    if outputs in (None, ""):
        return
    root = Path(str(outputs)).expanduser()
    where = f"paths.outputs={root}"
    fix = "point paths.outputs (or $CAD_OUTPUTS) at a folder you can write (it is created if missing)"
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{where} is a file, not a folder: every artifact and results.jsonl go under it; move "
                          f"that file away, or {fix}")
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{where} cannot be created: {existing} is a file, not a folder; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == root else f"cannot be created: {existing} is not writable"
        raise ConfigError(f"{where} {what} for this user; {fix}")
    results = root / "results.jsonl"
    if results.exists() and not results.is_file():
        raise ConfigError(f"{results} is a folder (or not a regular file), but the run appends its result rows to "
                          f"that file; move or delete that folder, or {fix}")
    if results.is_file() and not os.access(results, os.W_OK):
        raise ConfigError(f"{results} is not writable for this user, but the run appends its result rows to it; "
                          f"make it writable (chmod u+w), or {fix}")


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


CUSTOM = "custom"  # conf/concept/custom.yaml: a concept named by its prompt on the command line


def custom_name(prompt: str) -> str:
    """A file-safe name for an ad-hoc concept: its prompt as a slug ("pikachu", "a_striped_circle"), plus a short
    hash of the exact prompt when the slug lost something (case, punctuation), so two prompts never share a
    name (its caches are keyed by the prompt too; the name is what tables and folders show)."""
    words = " ".join(str(prompt).split())
    slug = re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_")[:48].strip("_") or "concept"
    if slug.replace("_", " ") != words:
        slug += "-" + stable_hash(words, 6)
    return slug


PROMPT_KEYS = ("prompt", "base_prompt", "image_prompt", "amplify_prompt")


def concept_prompts(concept: Mapping[str, Any]) -> dict:
    """The prompts a concept runs with (what its attribution, edits and rows depend on)."""
    return {k: concept.get(k) for k in PROMPT_KEYS if concept.get(k) is not None}


def prompt_override(concept: Mapping[str, Any], protocol: str | None = None) -> str | None:
    """What differs from the concept option's own prompts (an override such as concept=diamond
    concept.prompt="a striped circle"): the overriding prompt, or `key='text'` pairs for the other prompts; None
    when the concept runs with its own (and for concept=custom, which its prompt names)."""
    if concept.get("kind") == CUSTOM or not concept.get("name"):
        return None
    try:
        own = load_concept(str(concept["name"]), protocol)
    except ConfigError:
        return None
    diffs = [k for k in PROMPT_KEYS if (concept.get(k) or None) != (own.get(k) or None)]
    if not diffs:
        return None
    if diffs == ["prompt"]:
        return str(concept["prompt"])
    return "; ".join(f"{k}={concept.get(k)!r}" for k in diffs)


def effective_concept(concept: Mapping[str, Any], model_name: str) -> dict:
    """The concept a run works on: on the toy world a real concept is replaced by its `toy` stand-in; an ad-hoc
    concept (concept=custom) runs as given on any model, named after its prompt unless concept.name is set."""
    concept = dict(concept)
    if concept.get("kind") == CUSTOM:
        prompt = concept.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError("concept=custom needs the concept's prompt: concept.prompt=\"pikachu\" (optionally "
                              "concept.base_prompt, concept.label, concept.name)")
        if concept.get("name") in (None, ""):
            concept["name"] = custom_name(prompt)
        for key in ("image_prompt", "amplify_prompt"):
            if concept.get(key) in (None, ""):
                concept.pop(key, None)
        return concept
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


def _normal_prompt(text: str) -> str:
    return " ".join(text.split()).casefold()


def check_concept_prompts(concept: Mapping[str, Any], where: str = "concept") -> None:
    """The concept's prompts say something: a prompt of spaces only passes an emptiness check yet conditions on
    nothing, and a base prompt equal to the prompt makes J_erase zero everywhere (every alpha 0, an edit of
    ties)."""
    prompt = concept.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{where}.prompt={prompt!r} is empty or whitespace only; set {where}.prompt to the "
                          "concept's text, e.g. 'a diamond' or 'church'")
    for key in ("base_prompt", "negative_prompt", "image_prompt", "amplify_prompt"):
        value = concept.get(key)
        if isinstance(value, str) and value and not value.strip():
            fix = ("'' for the unconditional (empty) prompt" if key in ("base_prompt", "negative_prompt")
                   else "null to use the concept prompt")
            raise ConfigError(f"{where}.{key}={value!r} is whitespace only; write the text, or use {fix}")
    base = concept.get("base_prompt")
    if isinstance(base, str) and base.strip() and _normal_prompt(base) == _normal_prompt(prompt):
        raise ConfigError(f"{where}.base_prompt={base!r} is the concept prompt {prompt!r} itself (up to case and "
                          "spaces): J_erase, the noise gap between the two, is then zero for every weight and "
                          f"nothing can be attributed. Set {where}.base_prompt to an anchor (another concept, e.g. "
                          "'a circle') or '' (the unconditional prompt)")


def check_method(method: Mapping[str, Any], where: str = "method"):
    """The method plugin the config names, built before any model loads: its dataclass fields are its schema
    (an unknown key is refused with a "did you mean"), `validate()` checks the values."""
    from cad.methods import MethodConfigError, build_method

    try:
        return build_method(dict(method), where)
    except MethodConfigError as err:
        raise ConfigError(str(err)) from err


def check_model_config(model: Mapping[str, Any]) -> None:
    """The model option names what a run needs (a config error, before its files are looked for)."""
    for key in ("name", "id", "dtype", "steps", "guidance", "resolution"):
        if model.get(key) in (None, ""):
            raise ConfigError(f"model config lacks {key!r}; pick a model option ({', '.join(_options('model'))}) or "
                              "set model.<key>")


def check_model(model: Mapping[str, Any], toy_kit: str | None = None) -> None:
    check_model_config(model)
    _stop(model_assets(model, toy_kit))


def model_assets(model: Mapping[str, Any], toy_kit: str | None = None) -> list[AssetCheck]:
    """The model's files, found without loading them: a local folder is a diffusers pipeline folder (it holds
    model_index.json and every file reads), a hub id is in the Hugging Face cache when offline (online,
    from_pretrained downloads it at load), the toy kit folder exists, and model.checkpoint is a weights file
    of a layout cad reads."""
    mid = str(model["id"])
    what = f"model snapshot (model.id={mid})"
    folder = Path(mid).expanduser()
    looks_local = mid.startswith(("/", ".", "~")) or folder.exists()
    out = []
    if mid != "toy" and looks_local and not folder.is_dir():
        out.append(AssetCheck(what, str(folder), f"model.id={mid!r} is not a folder; pass a diffusers pipeline "
                              "folder (save_pretrained layout) or a hub id such as CompVis/stable-diffusion-v1-4"))
    elif mid != "toy" and folder.is_dir() and not (folder / "model_index.json").is_file():
        out.append(AssetCheck(what, str(folder), "the folder holds no model_index.json, so it is not a diffusers "
                              "pipeline folder; save the pipeline with `pipe.save_pretrained(folder)` or download a "
                              f"snapshot (`huggingface-cli download <hub id> --local-dir {folder}`), or pass a hub "
                              "id such as CompVis/stable-diffusion-v1-4"))
    elif mid != "toy" and folder.is_dir():
        from cad.weight_files import LOCAL_FOLDER_FIX, folder_problems

        problems = folder_problems(mid)  # headers only: a truncated or pickled file stops before the load
        if problems:
            out.append(AssetCheck(what, str(folder), f"model.id={mid}: {len(problems)} file(s) of this local "
                                  f"folder cannot be read: {'; '.join(problems)}. Fix: {LOCAL_FOLDER_FIX}"))
    elif mid != "toy":
        out += _hub_snapshot(mid, what)
    if mid == "toy" and toy_kit and not Path(toy_kit).is_dir():
        out.append(AssetCheck("toy kit", str(toy_kit), f"toy kit folder {toy_kit} not found; unset CAD_TOY_KIT / "
                              "paths.toy_kit to use the bundled kit, or train one with `make kit`"))
    ckpt = model.get("checkpoint")
    if ckpt:
        problem = _checkpoint_problem(ckpt)
        if problem:
            out.append(AssetCheck("model.checkpoint (the erased model's weights)", str(Path(str(ckpt)).expanduser()),
                                  problem))
    return out


def _hub_snapshot(mid: str, what: str) -> list[AssetCheck]:
    """Offline, a hub id must already be in the Hugging Face cache (its model_index.json is; nothing is read)."""
    from cad.backbones.base import offline

    if not offline():
        return []
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(mid, "model_index.json")
    except ValueError as err:  # not a well-formed repo id (HFValidationError)
        return [AssetCheck(what, None, f"model.id={mid!r} is neither a folder nor a hub id ({err}); pass a diffusers "
                           "pipeline folder or a hub id such as CompVis/stable-diffusion-v1-4")]
    if isinstance(hit, str):
        return []
    return [AssetCheck(what, constants.HF_HUB_CACHE,
                       f"{mid} is not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE=1); download "
                       f"it where there is network (`huggingface-cli download {mid}`) and copy the cache (HF_HOME) "
                       "here, or pass a saved pipeline folder as model.id=<folder>, or unset HF_HUB_OFFLINE to "
                       "download it at load")]


def _checkpoint_problem(ckpt) -> str | None:
    path = Path(str(ckpt)).expanduser()
    if not path.exists():
        return (f"model.checkpoint={ckpt} does not exist; pass the erased model's UNet weights (a "
                ".safetensors/.pt/.bin state dict, or a diffusers pipeline/unet folder)")
    if path.is_file() and path.suffix not in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        return f"model.checkpoint={ckpt} is not a weights file (.safetensors, .pt, .pth, .bin, .ckpt) or a folder"
    from cad.checkpoints import CheckpointFormatError, detect_format

    try:
        detect_format(path)  # headers and key names only: a wrong or pickled file stops before the model loads
    except CheckpointFormatError as err:
        return f"model.checkpoint={ckpt}: {err}"
    return None


def check_scores_folder(folder: str | None, model_id: str, *, concept: Mapping[str, Any] | None = None,
                        objective: str | list[str] | None = None, space: str | list[str] | None = None,
                        allow_other: bool = False) -> None:
    """Given scores must exist and name this model (the UNet fingerprint is checked again once loaded), and,
    unless `allow_other` (attribution.allow_other_scores), the run's concept, objective(s) and component
    space(s) as their meta records them."""
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
    if allow_other:
        return
    made = scores_identity(meta)
    wrong = []
    if concept is not None and made["concept"] is not None:
        if made["concept_name"] is not None:
            same = made["concept_name"] == concept.get("name")
        else:  # scores from before names were recorded: the prompt they were conditioned on
            same = _normal_prompt(str(made["prompt"])) in {_normal_prompt(str(p)) for p in (
                concept.get("prompt"), concept.get("amplify_prompt")) if p}
        if not same:
            wrong.append(f"concept {made['concept']!r}, not {concept.get('name')!r}")
    for what, want in (("objective", objective), ("space", space)):
        for w in ([want] if isinstance(want, str) else want or []):
            if made[what] is not None and w is not None and str(made[what]) != str(w):
                wrong.append(f"{what} {made[what]!r}, not {w!r}")
    if wrong:
        raise ConfigError(f"attribution.scores={folder} were made for {'; '.join(wrong)} (what this run's concept and "
                          "method need): applied here, the edit would be another concept's or objective's, and the "
                          "rows would name this run's concept. Leave attribution.scores null to compute this run's "
                          "scores, or set attribution.allow_other_scores=true to apply them on purpose (the rows "
                          "then record the scores' own concept and objective)")


def scores_identity(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a scores folder was made for, from its meta: concept (its name where the runner recorded it, else
    the prompt), the prompt, the objective and the component space's name (None where not recorded)."""
    settings = meta.get("settings") or {}
    space = settings.get("space", meta.get("space"))
    if isinstance(space, Mapping):
        space = space.get("name")
    name = meta.get("concept_name")
    prompt = settings.get("prompt", meta.get("concept"))
    return {"concept_name": name, "prompt": prompt, "concept": name if name is not None else prompt,
            "objective": meta.get("objective", settings.get("objective")), "space": space}


def space_shapes(cfg: Mapping[str, Any], space: str) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the component space's tensors, known without loading weights: the given scores' safetensors
    header, else the denoiser built on the meta device from its config on disk (toy kit, local folder); None
    when neither is at hand (a hub id: the edit itself is checked once built)."""
    folder = (cfg.get("attribution") or {}).get("scores")
    if folder:
        from safetensors import safe_open

        try:
            with safe_open(str(Path(str(folder)).expanduser() / "scores.safetensors"), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception:  # noqa: BLE001 - check_scores_folder reports an unreadable file
            return None
    model = cfg.get("model") or {}
    from cad.backbones import get_family
    from cad.components import get_space

    try:
        family = get_family(str(model.get("family") or "sd"))
    except ValueError:
        return None
    if str(model.get("id")) == "toy":
        from cad.toy.kit import DEFAULT_KIT

        root = Path((cfg.get("paths") or {}).get("toy_kit") or DEFAULT_KIT) / "pipeline"
    else:
        root = Path(str(model.get("id", ""))).expanduser()
    try:
        config = json.loads((root / family.denoiser_attr / "config.json").read_text())
        import diffusers
        import torch

        cls = getattr(diffusers, config["_class_name"])
        with torch.device("meta"):
            denoiser = cls.from_config(config)
        return {n: tuple(p.shape) for n, p in get_space(space, family.family).select(denoiser).items()}
    except Exception:  # noqa: BLE001 - no config on disk (hub id) or another layout: checked after the edit
        return None


def check_selectable(cfg: Mapping[str, Any], method: Any) -> None:
    """A mask method's ratio selects at least one weight of its component space (method.ratio=1e-9 would leave
    the "edited" model the original one, its rows looking like a result)."""
    ratio, granularity = getattr(method, "ratio", None), getattr(method, "granularity", None)
    if not getattr(method, "uses_scores", False) or ratio is None or granularity is None:
        return
    shapes = space_shapes(cfg, getattr(method, "space", "ff"))
    if not shapes:
        return
    numels = [math.prod(s) for s in shapes.values()]
    if granularity == "row":
        unit, what = max(math.prod(s[1:]) if len(s) >= 2 else math.prod(s) for s in shapes.values()), "columns of a row"
    elif granularity == "tensor":
        unit, what = max(numels), "weights of a tensor"
    else:
        unit, what = sum(numels), "weights"
    if int(float(ratio) * unit) == 0:
        fix = " or method.granularity=tensor" if granularity == "row" else ""
        raise ConfigError(f"method.ratio={float(ratio):g} selects no component of space "
                          f"{getattr(method, 'space', 'ff')!r} at granularity={granularity}: k = int(ratio x {unit} "
                          f"{what}) = 0 everywhere, so the edited model would be the original. Use "
                          f"method.ratio >= {1.0 / unit:.3g}{fix}")


def check_benchmarks(specs: Mapping[str, Any], data_dir: str | None) -> None:
    """Every benchmark resolves (file present or fetchable, spec valid) before the model is loaded."""
    _stop(benchmark_assets(specs, data_dir))


def benchmark_assets(specs: Mapping[str, Any], data_dir: str | None) -> list[AssetCheck]:
    from evaluation.benchmarks import load_benchmark

    out = []
    for role, spec in specs.items():
        if spec is None:
            continue
        try:
            load_benchmark(spec, data_dir=data_dir, limit=1)
        except Exception as err:  # noqa: BLE001 - whatever stops it, the checklist names the benchmark and why
            what = (spec.get("name") or spec.get("path") or spec) if isinstance(spec, Mapping) else spec
            out.append(AssetCheck(f"benchmark {role!r} ({what}) prompt data", None, f"benchmark {role!r} ({what}) "
                                  f"cannot be loaded: {err}"))
    return out


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
    spec = resolved_spec(spec)
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
    check_outputs((cfg.get("paths") or {}).get("outputs"))
    check_model_config(cfg["model"])
    method = check_method(cfg["method"])
    erase_method = check_method(cfg["erase_method"], "erase_method") if cfg.get("erase_method") else None
    if cfg.get("experiment_name") == "amplify_erased" and not cfg.get("erase_method") \
            and not (cfg.get("model") or {}).get("checkpoint"):
        raise ConfigError("experiment=amplify_erased needs an erased model: erase_method=<esd|uce|rece|conceptprune|"
                          "cad_erase> (erased here) or model.checkpoint=<the erased model's weights>")
    concept = effective_concept(cfg["concept"], cfg["model"]["name"])
    check_names(cfg, concept)
    check_concept_prompts(concept)
    retained = retain_concepts(cfg["method"], concept, cfg["model"]["name"], (cfg.get("protocol") or {}).get("name"))
    for c in retained:
        check_concept_prompts(c, f"retained concept {c['name']!r}: concept")
    if retained and cfg.get("attribution", {}).get("scores"):
        raise ConfigError("attribution.scores and method.retain together: given scores are used as they are; "
                          "unset attribution.scores to rank against the retained concepts")
    users = [m for m in (method, erase_method) if m is not None and getattr(m, "uses_scores", False)]
    check_scores_folder(cfg.get("attribution", {}).get("scores"), str(cfg["model"]["id"]), concept=concept,
                        objective=[getattr(m, "objective", None) for m in users],
                        space=[getattr(m, "space", None) for m in users],
                        allow_other=bool(cfg.get("attribution", {}).get("allow_other_scores", False)))
    gen = cfg.get("generation", {})
    if not (0 <= int(gen.get("shard", 0)) < int(gen.get("num_shards", 1))):
        raise ConfigError(f"generation.shard={gen.get('shard')} must be in 0..num_shards-1 "
                          f"(num_shards={gen.get('num_shards')})")
    if cfg.get("task", "erase_eval") == "erase_eval":
        check_target_label(cfg.get("benchmark"), concept, (cfg.get("paths") or {}).get("data"))
        check_metric_lists(cfg)
        check_some_metric(cfg, concept)
        check_generation_cut(cfg, concept)
    check_export(cfg)
    # every config error above stops alone; the missing files stop all at once, before the check that reads them
    check_assets(cfg)
    check_selectable(cfg, method)  # last: it may import diffusers to build the denoiser on the meta device
    return RunPlan(concept, method, erase_method, retained)


def check_assets(cfg: Mapping[str, Any]) -> None:
    """Every file the run needs, looked for before anything loads and reported as one checklist
    (PreflightError): the model snapshot, toy kit and model.checkpoint, and for
    erase_eval the benchmarks' prompt files and each metric's weights and reference data."""
    model = cfg["model"]
    checks = model_assets(model, (cfg.get("paths") or {}).get("toy_kit"))
    if cfg.get("task", "erase_eval") == "erase_eval":
        checks += benchmark_assets(benchmark_specs(cfg), (cfg.get("paths") or {}).get("data"))
        checks += metric_assets(cfg)
    _stop(checks)


def benchmark_specs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """role -> benchmark spec: the `benchmark` group (target) plus the experiment's `retain` entries."""
    specs = {"target": cfg.get("benchmark")}
    specs.update({role: spec for role, spec in (cfg.get("retain") or {}).items() if spec is not None})
    return specs


def check_metric_lists(cfg: Mapping[str, Any]) -> None:
    """Each benchmark's metric list is valid for this model (known names; toy-only metrics on the toy world)."""
    from .metric_factory import MetricPreflightError, check_metric_names

    toy = str((cfg.get("model") or {}).get("id")) == "toy"
    for role, spec in benchmark_specs(cfg).items():
        if not isinstance(spec, Mapping):
            continue
        spec = resolved_spec(spec, role)
        try:
            check_metric_names(list(spec.get("metrics") or []), toy=toy)
        except MetricPreflightError as err:
            raise ConfigError(f"benchmark {role!r} ({spec.get('name')}): {err}") from err


def metric_assets(cfg: Mapping[str, Any]) -> list[AssetCheck]:
    """Each metric's weights and reference data that are missing, over every benchmark the run scores."""
    from .metric_factory import MetricPreflightError, preflight_metrics

    toy = str((cfg.get("model") or {}).get("id")) == "toy"
    out = []
    for role, spec in benchmark_specs(cfg).items():
        if not isinstance(spec, Mapping):
            continue
        spec = resolved_spec(spec, role)
        try:
            preflight_metrics(list(spec.get("metrics") or []), spec, toy=toy)
        except MetricPreflightError as err:
            missing = err.missing or [(None, None, str(err))]
            out += [AssetCheck(f"benchmark {role!r} ({spec.get('name')})" + (f", metric {name!r}" if name else ""),
                               where, message) for name, where, message in missing]
    return out


def resolved_spec(spec: Mapping[str, Any], role: str = "target") -> Mapping[str, Any]:
    """A benchmark spec as the run will use it: one given by path (benchmark=file benchmark.path=...) read from
    its file now, so a missing, empty or unreadable file stops here with the fix, and a yaml's own metrics count."""
    if not isinstance(spec, Mapping) or "path" not in spec:
        return spec
    from evaluation.benchmarks import load_spec

    try:
        return load_spec(spec)
    except (ValueError, OSError) as err:
        raise ConfigError(f"benchmark {role!r} ({spec.get('name') or 'file'}): {err}") from err


def check_export(cfg: Mapping[str, Any]) -> None:
    """export=true / push_to_hub=<repo>: something to export and a way to upload it (experiments/export.py)."""
    from .export import check_export as check

    check(dict(cfg))


def check_some_metric(cfg: Mapping[str, Any], concept: Mapping[str, Any]) -> None:
    """A run that scores nothing is refused before generation (it would print an empty table), naming the
    metrics that fit: clip_presence fits any concept, clip_score any prompt list, classifier_accuracy a
    benchmark whose labels hold the concept's label."""
    specs = [cfg.get("benchmark"), *(cfg.get("retain") or {}).values()]
    if any(isinstance(s, Mapping) and resolved_spec(s).get("metrics") for s in specs):
        return
    fits = ["clip_presence (any concept: the share of images CLIP finds it in)", "clip_score (any prompt list)"]
    target = cfg.get("benchmark")
    if isinstance(target, Mapping) and concept.get("label") in (benchmark_labels(resolved_spec(target),
                                                                                  (cfg.get("paths") or {}).get("data")) or []):
        fits.insert(0, f"classifier_accuracy (the benchmark's labels include {concept.get('label')!r})")
    raise ConfigError("no metric to score: the benchmark lists none (benchmark.metrics=[]), so the run would "
                      "generate images and print an empty table. Set benchmark.metrics=[clip_presence] or another "
                      f"metric that fits concept {concept.get('name')!r}: {'; '.join(fits)}")


def check_target_items(benchmark: Any, concept: Mapping[str, Any], generation: Mapping[str, Any]) -> None:
    """After generation.limit / per_label cut the target benchmark, its labelled metrics still have items of the
    concept to score (a limit of 4 on a benchmark ordered by class keeps only the first class: acc_target would
    silently turn into acc_mean after all images were made). Called once the items are known, before the
    model loads."""
    metrics = (benchmark.meta or {}).get("metrics") or []
    label = concept.get("label")
    if not any(m in LABELLED_METRICS for m in metrics) or label is None or not benchmark.items:
        return
    if any(it.label == label for it in benchmark.items):
        return
    kept = sorted({str(it.label) for it in benchmark.items})
    cut = ", ".join(f"generation.{k}={generation.get(k)}" for k in ("limit", "per_label") if generation.get(k))
    raise ConfigError(f"{cut or 'the benchmark limit'} keeps {len(benchmark.items)} items of benchmark "
                      f"{benchmark.key!r}, none labelled {label!r} (only: "
                      f"{', '.join(kept)}), so concept {concept.get('name')!r} could not be scored (acc_target). Use "
                      "generation.per_label=<n> (an even cut across classes, e.g. generation.per_label=2) instead of "
                      "generation.limit, or a larger limit")


def check_generation_cut(cfg: Mapping[str, Any], concept: Mapping[str, Any]) -> None:
    """generation.limit / per_label applied to the target benchmark as the run will apply them, then
    check_target_items; nothing to do without a cut."""
    gen = cfg.get("generation") or {}
    spec = cfg.get("benchmark")
    if not (gen.get("limit") or gen.get("per_label")) or not isinstance(spec, Mapping):
        return
    from evaluation.benchmarks import load_benchmark

    spec = resolved_spec(spec)
    if gen.get("per_label"):  # as experiments.erase_eval cuts it
        spec = {**spec, "limit_per_label": int(gen["per_label"])}
    try:
        bench = load_benchmark(spec, data_dir=(cfg.get("paths") or {}).get("data"), limit=gen.get("limit"))
    except Exception:  # noqa: BLE001 - check_benchmarks reports a benchmark that cannot load
        return
    check_target_items(bench, concept, gen)
