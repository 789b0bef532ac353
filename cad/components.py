"""Component spaces: the one place that decides which denoiser tensors are attributed and edited.

A space is a regex over parameter names plus the tensor ranks it admits. Presets are per model family
(`Backbone.spaces`, e.g. cad/backbones/sd.py): `ff` always means the feed-forward weights of the
denoiser's transformer blocks, the paper's choice (on SD 1.4: 32 tensors, 148,684,800 weights, the same
tensors as the reference implementation's filter, mail-research/CAD-attribution4diffusion `ablate_model`);
on SD 3 / FLUX the image stream's `ff` apart from `ff_context`. "regex:<re>" picks any tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from cad.backbones import Backbone, denoiser_of


@dataclass(frozen=True)
class ComponentSpace:
    """Which parameters are components: names matching `pattern` (re.search) with a rank in `ndims`."""

    name: str
    pattern: str
    ndims: tuple[int, ...] | None = None

    def matches(self, name: str, tensor: torch.Tensor) -> bool:
        if self.ndims is not None and tensor.ndim not in self.ndims:
            return False
        return re.search(self.pattern, name) is not None

    def select(self, unet) -> dict[str, torch.nn.Parameter]:
        """The chosen parameters of a denoiser (or a pipeline's / backbone's), in the module's own order."""
        unet = denoiser_of(unet)
        chosen = {n: p for n, p in unet.named_parameters() if self.matches(n, p)}
        if not chosen:
            example = next(iter(dict(unet.named_parameters())), "<none>")
            raise ValueError(
                f"component space {self.name!r} (pattern {self.pattern!r}, ranks {self.ndims}) matches no "
                f"parameter of this UNet (names look like {example!r}); pick another space or fix the regex"
            )
        return chosen

    def describe(self) -> dict:
        return {"name": self.name, "pattern": self.pattern, "ndims": list(self.ndims) if self.ndims else None}


def presets(family: str = "sd") -> dict[str, tuple[str, tuple[int, ...] | None]]:
    """The component-space presets of a model family."""
    from cad.backbones import get_family

    return get_family(family).spaces


def get_space(space: str | ComponentSpace = "ff", family: str = "sd") -> ComponentSpace:
    """A preset of `family` by name ("ff", "attn", "cross_attn", "linear", "conv", ...) or "regex:<re>"."""
    if isinstance(space, ComponentSpace):
        return space
    if not isinstance(space, str):
        raise TypeError(f"space must be a preset name or 'regex:<re>', got {type(space).__name__}")
    if space.startswith("regex:"):
        pattern = space[len("regex:"):]
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"invalid regex in component space {space!r}: {e}") from e
        if not pattern:
            raise ValueError("empty regex in component space 'regex:'; write e.g. 'regex:attn2\\.to_k'")
        return ComponentSpace(space, pattern, None)
    from cad.backbones import get_family

    fam = get_family(family)
    if space in fam.absent_spaces:
        raise ValueError(fam.absent_spaces[space])
    table = fam.spaces
    if space not in table:
        raise ValueError(f"unknown component space {space!r} for the {family} family; choose one of "
                         f"{sorted(table)} or 'regex:<re>'")
    pattern, ndims = table[space]
    return ComponentSpace(space, pattern, ndims)


def enable_only(unet, space: str | ComponentSpace, family: str | None = None) -> dict[str, torch.nn.Parameter]:
    """Give `requires_grad` to the space's tensors only (every other denoiser parameter is frozen).

    Returns the chosen parameters. Freezing the rest keeps autograd from storing gradients nobody reads.
    A preset name resolves in `family` (default: the family of the pipeline or backbone given, else "sd").
    """
    family = family or _family_of(unet)
    unet = denoiser_of(unet)
    chosen = get_space(space, family).select(unet)
    for name, p in unet.named_parameters():
        p.requires_grad_(name in chosen)
    return chosen


def requires_grad_state(unet: torch.nn.Module) -> dict[str, bool]:
    """Snapshot of every parameter's requires_grad flag, to restore after an attribution."""
    unet = denoiser_of(unet)
    return {n: p.requires_grad for n, p in unet.named_parameters()}


def restore_requires_grad(unet: torch.nn.Module, state: dict[str, bool]) -> None:
    unet = denoiser_of(unet)
    for n, p in unet.named_parameters():
        p.requires_grad_(state.get(n, p.requires_grad))


def _family_of(obj) -> str:
    if isinstance(obj, Backbone):
        return obj.family
    from cad.backbones import families, family_of, get_family

    if isinstance(obj, torch.nn.Module):
        # A bare denoiser: the first family that names its class (SD and SDXL UNets share their presets).
        for fam in families():
            if type(obj).__name__ in get_family(fam).denoiser_classes:
                return fam
        return "sd"
    return family_of(obj)
