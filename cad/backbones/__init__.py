"""Model-family adapters (one module per family; see base.py for the interface).

    bb = cad.backbones.load("stabilityai/stable-diffusion-xl-base-1.0", family="sdxl", dtype="float16")
    bb = cad.backbones.wrap(pipe)        # any supported diffusers pipeline, family found by its class

A new family is one module here defining a `Backbone` subclass with a `family` name (it registers itself
when imported; `get_family` imports every module of this package once) and one conf/model/<name>.yaml.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import torch

from cad.backbones.base import (
    REGISTRY,
    Backbone,
    Conditioning,
    ModelLoadError,
    module_fingerprint,
    module_identity,
    resolve_dtype,
)

__all__ = ["Backbone", "Conditioning", "ModelLoadError", "denoiser_of", "families", "family_of", "get_family",
           "load", "module_fingerprint", "module_identity", "resolve_dtype", "wrap"]

_discovered = False


def _discover() -> None:
    global _discovered
    if not _discovered:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _discovered = True


def families() -> list[str]:
    _discover()
    return sorted(REGISTRY)


def get_family(name: str) -> type[Backbone]:
    _discover()
    if name not in REGISTRY:
        raise ValueError(f"unknown model family {name!r}; use one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def family_of(pipe) -> str:
    """The family whose pipeline classes include `pipe`'s class (or one of its bases)."""
    _discover()
    names = [c.__name__ for c in type(pipe).__mro__]
    for fam, cls in REGISTRY.items():
        if any(n in cls.pipeline_classes for n in names):
            return fam
    raise TypeError(f"no cad backbone for {type(pipe).__name__}; supported pipelines: "
                    f"{sorted(c for cls in REGISTRY.values() for c in cls.pipeline_classes)}")


def wrap(obj) -> Backbone:
    """A Backbone for a pipeline (or the Backbone itself)."""
    if isinstance(obj, Backbone):
        return obj
    return get_family(family_of(obj))(obj)


def denoiser_of(obj):
    """The denoiser module of a Backbone or pipeline; a bare module (a UNet or transformer) is returned as is."""
    if isinstance(obj, Backbone):
        return obj.denoiser
    for attr in ("unet", "transformer"):
        module = getattr(obj, attr, None)
        if isinstance(module, torch.nn.Module):
            return module
    return obj


def detect_family(source: str) -> str | None:
    """The family of a local pipeline folder from its model_index.json (None for hub ids: say family=)."""
    index = Path(str(source)).expanduser() / "model_index.json"
    if not index.is_file():
        return None
    cls_name = json.loads(index.read_text()).get("_class_name")
    _discover()
    for fam, cls in REGISTRY.items():
        if cls_name in cls.pipeline_classes:
            return fam
    raise ModelLoadError(f"{index} names pipeline class {cls_name!r}, which no cad family wraps "
                         f"({', '.join(sorted(REGISTRY))}); pass a pipeline folder of a supported family")


def load(source, *, family: str | None = None, **kw) -> Backbone:
    """Load a pipeline as its family's Backbone; the family comes from a folder's model_index.json or `family`
    (default "sd" for hub ids), and kw go to Backbone.load (dtype, device, scheduler, local_files_only)."""
    found = detect_family(source)
    if family and found and family != found:
        raise ModelLoadError(f"{source} holds a {found} pipeline but model.family={family}; set model.family={found}")
    return get_family(family or found or "sd").load(source, **kw)
