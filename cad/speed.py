"""Generation at GPU speed, without changing the images a seed gives: the largest batch that fits, a compiled
denoiser, channels-last for compiled UNets.

`cad.generate` calls the diffusers pipeline's own `__call__` per batch; nothing here copies its loop or patches a
class. Everything acts on the pipeline's denoiser module in place and is undone on exit (`fast_denoiser`), so
attribution, edits and fingerprints before and after generation see the module they saw before.

What may differ between the settings is float round-off only: a batched kernel, a compiled (fused) kernel or a
channels-last convolution sums in another order. Like the batch size and the GPU model, these settings are
therefore not part of an image folder's identity (`cad.generate.image_dir`); tests/evaluation/test_generate_speed.py
shows that each keeps a seed's image within `PIXEL_TOLERANCE` on a tiny pipeline, and benchmarks/bench_generation.py
(`measure`) reports the difference each time it runs, on CPU and (benchmarks/bench_gpu.py) on a GPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch

log = logging.getLogger("cad.speed")

# A seed's image under another batch size, compilation or memory layout: at most this many levels (of 255) apart
# in any pixel channel, and on average below PIXEL_MEAN_TOLERANCE; the same bound the batch-size test states.
PIXEL_TOLERANCE = 2
PIXEL_MEAN_TOLERANCE = 0.5

# `batch_size=auto` off CUDA: a CPU (or MPS) gains little from batches beyond this, and memory grows with it.
CPU_BATCH_SIZE = 8
# The largest batch `auto` tries: past this a GPU is saturated and a batch only delays the first written image.
MAX_AUTO_BATCH = 64
# Of the free memory after the probe, the share `auto` plans for: the rest is for fragmentation and a batch
# whose prompts tokenize longer.
HEADROOM = 0.85
# Denoising steps a probe runs: peak memory does not grow with steps, and two keep every scheduler valid.
PROBE_STEPS = 2

_AUTO: dict[tuple, int] = {}
_COMPILED_LAYOUT: dict[str, bool] = {}  # denoiser class -> channels-last when this process last compiled one  # in-process: (pipeline, denoiser config, size, dtype, device, guidance) -> batch


def check_batch_size(batch_size: Any) -> None:
    if batch_size == "auto":
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or 'auto' (the largest that fits), got {batch_size!r}")


def compile_options(compile: bool | str | Mapping | None) -> dict | None:
    """None (no compilation), or the keyword arguments of `torch.compile` that `compile` stands for: True is
    torch's default (inductor), a string a backend ("inductor", "aot_eager", "eager"), a mapping is passed as is."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return {}
    if isinstance(compile, str):
        return {"backend": compile}
    if isinstance(compile, Mapping):
        return dict(compile)
    raise ValueError(f"compile must be true/false, a torch.compile backend name or a dict of torch.compile "
                     f"arguments, got {compile!r}")


def wants_channels_last(denoiser: torch.nn.Module, setting: bool | str, compiled: bool = False) -> bool:
    """`auto`: channels-last only for a UNet on CUDA that is being compiled. Measured on an H200 (torch 2.11,
    benchmarks/results/bench_gpu_h200.md): eager SD 1.4 and SDXL UNets render 10% slower in channels-last (their
    GroupNorms leave it) and compiled ones 31% faster than eager; a transformer has one patch convolution and a CPU
    gains nothing, so both stay as they are. True/False force it."""
    if setting == "auto":
        from diffusers import UNet2DConditionModel

        return compiled and isinstance(denoiser, UNet2DConditionModel) and _device_of(denoiser).type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"channels_last must be 'auto', true or false, got {setting!r}")


def _device_of(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _is_channels_last(module: torch.nn.Module) -> bool:
    conv = next((p for p in module.parameters() if p.dim() == 4), None)
    return conv is not None and not conv.is_contiguous() and conv.is_contiguous(memory_format=torch.channels_last)


# `nn.Module.compile()` compiles a module in place: the same object, the same parameter names (edits, masks and
# fingerprints still resolve), with the compiled call kept in `_compiled_call_impl`. torch has no public
# "uncompile", so leaving the context puts back what that attribute held before.
def _compiled_call(module: torch.nn.Module):
    return getattr(module, "_compiled_call_impl", None)


def _set_compiled_call(module: torch.nn.Module, call) -> None:
    module._compiled_call_impl = call


@contextlib.contextmanager
def fast_denoiser(pipe, *, compile: bool | str | Mapping | None = False,
                  channels_last: bool | str = "auto") -> Iterator[torch.nn.Module]:
    """The pipeline's denoiser compiled (`compile`) and in channels-last layout (`channels_last`) for the
    duration; on exit it is uncompiled and back in its own layout. A denoiser the caller compiled is left as it is.

    Compilation is in place (`module.compile()`), so an edit applied or restored inside the context writes the
    weights the compiled code reads: it takes effect at the next call, without recompiling. Compilation is paid
    once per process and shape: a later context with the same options finds dynamo's cached code (a tiny UNet on
    an H200: 17 s the first generate, 0.06 s the next).
    """
    from cad.backbones import denoiser_of

    den = denoiser_of(pipe)
    opts = compile_options(compile)
    previous = _compiled_call(den)
    compiling = opts is not None and previous is None
    to_channels_last = wants_channels_last(den, channels_last, compiled=compiling) and not _is_channels_last(den)
    try:
        if to_channels_last:
            den.to(memory_format=torch.channels_last)
        if compiling:
            # Compiled code is cached per process by the forward's code object, and it assumes the weight strides
            # it was traced with (no guard re-checks a parameter's layout): a denoiser compiled again in the
            # other layout failed inductor's stride assertion on an H200. A layout change therefore starts over.
            layout = (type(den).__name__, _is_channels_last(den))
            if _COMPILED_LAYOUT.get(layout[0], layout[1]) != layout[1]:
                log.info("the denoiser's layout changed since it was last compiled: resetting torch.compile's cache")
                torch.compiler.reset()
            _COMPILED_LAYOUT[layout[0]] = layout[1]
            log.info("compiling %s with torch.compile(%s)", type(den).__name__, opts or "")
            den.compile(**opts)
        yield den
    finally:
        _set_compiled_call(den, previous)
        if to_channels_last:
            den.to(memory_format=torch.contiguous_format)


def resolve_batch_size(pipe, batch_size: int | str, *, height: int, width: int, guidance: float,
                       call_kwargs: Mapping | None = None) -> int:
    """`batch_size` itself, or for "auto" the largest batch that fits: on CUDA probed once per pipeline,
    denoiser config, size, dtype, device and guidance in this process (`probe_batch_size`); elsewhere
    CPU_BATCH_SIZE. A seed's image does not depend on the batch it is rendered in (within PIXEL_TOLERANCE)."""
    check_batch_size(batch_size)
    if batch_size != "auto":
        return int(batch_size)
    from cad.backbones import denoiser_of
    from cad.io import stable_hash

    den = denoiser_of(pipe)
    device = _device_of(den)
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    key = (type(pipe).__name__, stable_hash(dict(den.config)), int(height), int(width), str(den.dtype), str(device),
           float(guidance))
    if key not in _AUTO:
        _AUTO[key] = probe_batch_size(pipe, height=height, width=width, guidance=guidance, call_kwargs=call_kwargs)
        log.info("generation.batch_size=auto: %d images per batch at %dx%d on %s", _AUTO[key], height, width,
                 torch.cuda.get_device_name(device))
    return _AUTO[key]


def probe_batch_size(pipe, *, height: int, width: int, guidance: float, call_kwargs: Mapping | None = None,
                     max_batch: int = MAX_AUTO_BATCH, headroom: float = HEADROOM) -> int:
    """The largest batch (<= max_batch) whose pipeline call fits on the pipeline's CUDA device.

    Two short calls (batch 1 and 2, PROBE_STEPS steps, VAE decode included) give the fixed and per-image peak
    memory; the batch the free memory allows is then tried once and halved on torch.cuda.OutOfMemoryError.
    """
    from cad.backbones import denoiser_of

    device = _device_of(denoiser_of(pipe))
    # A probe is not a generation: the caller's step callbacks (progress spies, interrupts) are not its business.
    kwargs = {k: v for k, v in dict(call_kwargs or {}).items() if not k.startswith("callback")}

    def peak(n: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            pipe(prompt=["a photo"] * n, num_inference_steps=PROBE_STEPS, guidance_scale=guidance, height=height,
                 width=width, output_type="pil", **kwargs)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base

    n = 1
    try:
        one, two = peak(1), peak(2)
        per_image = max(two - one, 1)
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(device)
        n = int((free * headroom - (one - per_image)) // per_image)
    except torch.cuda.OutOfMemoryError:
        n = 1  # batch 2 does not fit; batch 1 is tried below
    n = max(1, min(max_batch, n))
    while n > 1:
        torch.cuda.empty_cache()
        try:
            peak(n)
            break
        except torch.cuda.OutOfMemoryError:
            pass  # leave the except block first, so the failed call's tensors are freed before the next try
        n //= 2
    torch.cuda.empty_cache()
    return n
