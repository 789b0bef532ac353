"""Memory modes of an attribution: the same estimator, traded between speed and peak memory.

- `fast`: the K trajectories (or amplify images) as one batch, activations kept for the backward pass.
- `low`: the denoiser's own gradient checkpointing (diffusers' `enable_gradient_checkpointing`, so activations
  are recomputed in the backward pass instead of kept), the K trajectories in micro-batches, and half-precision
  gradients added into their float32 sums one tensor at a time as autograd produces them (no full set of bf16/fp16
  gradients ever exists: 5.7 GB for FLUX).
- `auto`: the fastest mode the planner finds fitting the visible accelerator (`fast` on a CPU).

Every mode encodes the prompts once and keeps the text encoders and the VAE off the accelerator during the
gradient passes (T5-XXL alone is ~10 GB), putting them back afterwards, so a caller's pipeline ends on the
devices it came on. The scores do not depend on the mode beyond float32 summation order.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

MODES = ("auto", "fast", "low")


@dataclass(frozen=True)
class MemorySettings:
    """What a resolved mode does."""

    mode: str                 # "fast" or "low" (auto resolved)
    checkpointing: bool       # the denoiser's gradient checkpointing during the gradient passes
    stream_half_grads: bool   # half-precision gradients folded into float32 one tensor at a time
    micro_batch: int | None   # at most this many trajectories / images per gradient pass (None: all at once)


def settings(mode: str, micro_batch: int | None = None) -> MemorySettings:
    """The settings of a resolved mode ("fast" or "low"); `micro_batch` overrides low's default of 1."""
    if mode == "fast":
        return MemorySettings("fast", False, False, micro_batch)
    if mode == "low":
        return MemorySettings("low", True, True, 1 if micro_batch is None else micro_batch)
    raise ValueError(f"memory mode {mode!r} is not resolved; use one of {MODES[1:]} (auto is resolved by "
                     "cad.memory.resolve)")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown memory mode {mode!r}; use one of {MODES}")


def resolve(mode: str, *, fits=None) -> str:
    """`auto` -> the first of fast, low that `fits(mode)` says fits (no planner or no accelerator: fast)."""
    check_mode(mode)
    if mode != "auto":
        return mode
    if fits is None:
        return "fast"
    for candidate in ("fast", "low"):
        if fits(candidate):
            return candidate
    return "low"


@contextlib.contextmanager
def checkpointing(denoiser: torch.nn.Module, on: bool):
    """The denoiser's gradient checkpointing on inside the block, its own flag restored after."""
    was = bool(getattr(denoiser, "is_gradient_checkpointing", False))
    if not on or was:
        yield
        return
    denoiser.enable_gradient_checkpointing()
    try:
        yield
    finally:
        denoiser.disable_gradient_checkpointing()


@contextlib.contextmanager
def attention_for_gradients(device):
    """On CUDA the gradient passes use flash, memory-efficient or math SDPA, never cuDNN's fused attention: its
    backward failed FLUX's on an H200 (torch 2.11 cu130, "mha_graph.execute ... is_good()";
    benchmarks/results/bench_gpu_h200.md). Elsewhere nothing changes."""
    if torch.device(device).type != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield


def offload_targets(modules: dict[str, torch.nn.Module | None], device: torch.device) -> list[str]:
    """The modules to move to the CPU for the gradient passes: those on the accelerator `device` the denoiser runs
    on (nothing on a CPU run, nothing already elsewhere)."""
    if torch.device(device).type == "cpu":
        return []
    out = []
    for name, m in modules.items():
        if m is None:
            continue
        p = next(m.parameters(), None)
        if p is not None and p.device == torch.device(device):
            out.append(name)
    return out


@contextlib.contextmanager
def encoders_offloaded(bb):
    """The backbone's text encoders and VAE on the CPU inside the block (prompts must be encoded before, through
    `bb.prompts_cached()`), each back on its own device after."""
    modules = {**bb.text_encoders, "vae": getattr(bb.pipe, "vae", None)}
    moved = {}
    for name in offload_targets(modules, bb.device):
        module = modules[name]
        moved[name] = (module, next(module.parameters()).device)
        module.to("cpu")
    bb._encoders_away = bool(moved)
    try:
        if moved and torch.cuda.is_available():
            torch.cuda.empty_cache()
        yield sorted(moved)
    finally:
        bb.__dict__.pop("_encoders_away", None)
        for module, device in moved.values():
            module.to(device)
