"""Method plugins: one module and one conf/method/<name>.yaml per method, instantiated from its `_target_`.

A method builds an edit (a mask edit or a weight edit, cad.edits) from a backbone, a concept and its own
settings. Settings are dataclass fields, so a yaml key the method does not declare is refused when the method
is built (`build_method`), before any model loads, and `validate()` checks their values then too.

    method = build_method({"_target_": "cad.methods.uce.UCE", "name": "uce", "lamb": 0.5})
    out = method.build(MethodContext(backbone=bb, concept={"name": "church", "prompt": "church"}))
    with out.edit.applied(bb.pipe):
        ...

The runner hands a method what it may need in a `MethodContext`: the backbone, the concept (name, prompt,
base_prompt, kind, and any method-specific prompt lists), the attribution settings, a seed, and `scores`, a
callable returning cached CAD attribution scores (so CAD-based methods never recompute what a sweep shares).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar

from cad.backbones import Backbone
from cad.errors import UserError

log = logging.getLogger("cad.methods")


class MethodConfigError(UserError, ValueError):
    """A method's settings are unknown or out of range; the message says what to change."""


@dataclass
class MethodContext:
    backbone: Backbone
    concept: dict
    attribution: dict = field(default_factory=dict)   # steps, guidance, num_samples, seed, estimator, height, width
    seed: int = 0
    # (concept dict, objective "erase"|"amplify", space) -> AttributionScores, cached by the caller.
    scores: Callable[..., Any] | None = None
    retain: list[dict] = field(default_factory=list)  # concepts to keep (resolved concept dicts)
    progress: bool = False


@dataclass
class MethodOutput:
    edit: Any = None                                   # a cad.edits.BaseEdit, or None (the unedited model)
    controls: dict[str, Any] = field(default_factory=dict)   # name -> control edit (random ablations)
    info: dict = field(default_factory=dict)           # what the run should record (loss curve, timings, ...)


@dataclass
class Method:
    """Base of every method; subclasses are dataclasses whose fields are their settings."""

    name: str = ""
    goal: ClassVar[str] = "erase"        # "erase", "amplify", or "none" (the unedited model)
    # Whether the method's edit depends on CAD attribution scores (the runner then attributes first).
    uses_scores: ClassVar[bool] = False

    def validate(self) -> None:
        """Raise MethodConfigError for out-of-range settings (cheap; called by build_method)."""

    def build(self, ctx: MethodContext) -> MethodOutput:
        raise NotImplementedError

    def settings(self) -> dict:
        """Every setting (the cache key and the results rows record them)."""
        return dataclasses.asdict(self)

    def row_fields(self) -> dict:
        """Settings worth a column of their own in results rows and reports (ratio for sweep curves)."""
        return {}


# Where a `_target_` may point: a class under cad.methods, or one an installed package registers in this entry
# point group (pyproject.toml: [project.entry-points."cad.methods"] mine = "mypkg.methods:Mine").
BUILTIN_PACKAGE = "cad.methods"
ENTRY_POINT_GROUP = "cad.methods"
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def plugin_entry_points() -> list:
    """The method plugins installed packages register (read from their metadata; nothing is imported)."""
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _locate(target: str, where: str = "method"):
    """The class a `_target_` names. Only cad.methods and registered plugins are imported: a config must not be
    able to import (and so run) an arbitrary module, so the name is checked before anything is imported."""
    text = str(target).strip()
    if _DOTTED.match(text) and text.startswith(BUILTIN_PACKAGE + "."):
        module, _, attr = text.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise MethodConfigError(f"{where}._target_={text!r} cannot be imported ({err}); it must name a Method "
                                    "class, e.g. cad.methods.cad_erase.CADErase") from err
    for ep in plugin_entry_points():
        if text in (ep.name, ep.value, ep.value.replace(":", ".")):
            try:
                return ep.load()
            except (ImportError, AttributeError) as err:
                raise MethodConfigError(f"{where}._target_={text!r}: the plugin entry point {ep.name} = "
                                        f"{ep.value!r} cannot be loaded ({err}); reinstall the package that "
                                        "provides it") from err
    registered = sorted(f"{ep.name} ({ep.value})" for ep in plugin_entry_points())
    raise MethodConfigError(
        f"{where}._target_={text!r} is refused: methods are loaded only from {BUILTIN_PACKAGE} (e.g. "
        f"cad.methods.cad_erase.CADErase) or from a registered plugin, and nothing else is imported. Fix: choose "
        f"a method option (method=cad_erase, uce, ...), or register your class in your package's pyproject.toml "
        f"as [project.entry-points.\"{ENTRY_POINT_GROUP}\"] <name> = \"<module>:<Class>\", pip install it, and set "
        f"_target_ to <name> or <module>.<Class>"
        + (f". Registered plugins: {', '.join(registered)}" if registered else ""))


def build_method(cfg: dict, where: str = "method") -> Method:
    """The Method a config names (`_target_` plus its settings), with unknown keys refused by name (`where`:
    the config key the settings sit under, for the message: method, erase_method)."""
    cfg = dict(cfg)
    target = cfg.pop("_target_", None)
    if not target:
        raise MethodConfigError(f"method config {cfg.get('name')!r} has no _target_; add e.g. "
                                "`_target_: cad.methods.cad_erase.CADErase` to its yaml")
    cls = _locate(str(target), where)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise MethodConfigError(f"method _target_ {target!r} is not a cad.methods.Method subclass")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in cfg if k not in known]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, known, n=1)
            hints.append(f"{where}.{k}" + (f" (did you mean {where}.{close[0]}?)" if close else ""))
        raise MethodConfigError(f"method {cfg.get('name', target)!r} has no setting {', '.join(hints)}; its "
                                f"settings are {sorted(known)}. Remove it (a `+key=` override adds keys Hydra "
                                "does not know; cad refuses them instead of ignoring them)")
    method = cls(**cfg)
    method.validate()
    return method


def check_fraction(name: str, value, *, allow_zero: bool = False, example: str = "0.01") -> float:
    try:
        v = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (0.0 <= v <= 1.0):
        raise MethodConfigError(f"{name}={value!r} is not a fraction in [0, 1]; e.g. {name}={example}")
    if v == 0.0 and not allow_zero:
        raise MethodConfigError(f"{name}=0 does nothing; use method=none for the unedited model, or e.g. "
                                f"{name}={example}")
    return v


def check_positive(name: str, value, *, integer: bool = False, allow_zero: bool = False) -> float:
    try:
        v = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        v = float("nan")
    ok = v >= 0 if allow_zero else v > 0
    if not ok or v != v or v == float("inf") or (integer and v != int(v)):
        kind = "integer" if integer else "number"
        raise MethodConfigError(f"{name}={value!r} must be a {'non-negative' if allow_zero else 'positive'} {kind}")
    return int(v) if integer else v


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise MethodConfigError(f"{name}={value!r}; use one of {list(choices)}")
