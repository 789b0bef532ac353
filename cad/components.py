"""Component spaces: the one place that decides which UNet tensors are attributed and edited.

A space is a regex over parameter names plus the tensor ranks it admits. The default `ff` space is the
paper's choice: the 2-D weights whose name contains "ff" (the GEGLU feed-forward matrices of every
transformer block; 32 tensors and 148,684,800 weights in SD 1.4), exactly the filter of the reference
implementation (mail-research/CAD-attribution4diffusion, benchmarking/utils.py, `ablate_model`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_ATTN = r"\.attn{which}\.(to_q|to_k|to_v|to_out\.0)\.weight$"

PRESETS: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "ff": (r"ff", (2,)),
    "attn": (_ATTN.format(which="[12]"), (2,)),
    "self_attn": (_ATTN.format(which="1"), (2,)),
    "cross_attn": (_ATTN.format(which="2"), (2,)),
    "linear": (r"\.weight$", (2,)),
    "conv": (r"\.weight$", (4,)),
}


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

    def select(self, unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """The chosen parameters of `unet` (or a pipeline's UNet), in the module's own order."""
        unet = getattr(unet, "unet", unet)
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


def get_space(space: str | ComponentSpace = "ff") -> ComponentSpace:
    """A preset by name ("ff", "attn", "self_attn", "cross_attn", "linear", "conv") or "regex:<re>"."""
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
    if space not in PRESETS:
        raise ValueError(f"unknown component space {space!r}; choose one of {sorted(PRESETS)} or 'regex:<re>'")
    pattern, ndims = PRESETS[space]
    return ComponentSpace(space, pattern, ndims)


def enable_only(unet: torch.nn.Module, space: str | ComponentSpace) -> dict[str, torch.nn.Parameter]:
    """Give `requires_grad` to the space's tensors only (every other UNet parameter is frozen).

    Returns the chosen parameters. Freezing the rest keeps autograd from storing gradients nobody reads.
    """
    unet = getattr(unet, "unet", unet)
    chosen = get_space(space).select(unet)
    for name, p in unet.named_parameters():
        p.requires_grad_(name in chosen)
    return chosen


def requires_grad_state(unet: torch.nn.Module) -> dict[str, bool]:
    """Snapshot of every parameter's requires_grad flag, to restore after an attribution."""
    unet = getattr(unet, "unet", unet)
    return {n: p.requires_grad for n, p in unet.named_parameters()}


def restore_requires_grad(unet: torch.nn.Module, state: dict[str, bool]) -> None:
    unet = getattr(unet, "unet", unet)
    for n, p in unet.named_parameters():
        p.requires_grad_(state.get(n, p.requires_grad))
