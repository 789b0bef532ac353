"""Load Stable Diffusion pipelines by hub id or local folder, and fingerprint UNet weights.

The safety checker is switched off through the public API (`safety_checker=None`), never by patching a
class. With weights missing (offline, or a typo), `ModelLoadError` names the model and how to pass a
local folder instead.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """The pipeline's weights could not be found or read."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _dtype_kwarg(torch_dtype: torch.dtype) -> dict:
    """diffusers renamed from_pretrained's `torch_dtype` to `dtype`; pass whichever this version reads."""
    import inspect

    from diffusers.utils import deprecation_utils

    new_name = hasattr(deprecation_utils, "_resolve_dtype") or "dtype" in inspect.signature(
        __import__("diffusers").DiffusionPipeline.from_pretrained).parameters
    return {"dtype": torch_dtype} if new_name else {"torch_dtype": torch_dtype}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def load_pipeline(model: str | os.PathLike, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
                  scheduler: str | None = "ddim", local_files_only: bool | None = None):
    """A StableDiffusionPipeline from a hub id ("CompVis/stable-diffusion-v1-4") or a local folder.

    dtype: "float32" | "float16" | "bfloat16"; scheduler: "ddim" swaps in a DDIMScheduler built from the
    model's own scheduler config (the schedule the objectives are defined on), None keeps the model's.
    local_files_only defaults to True when HF_HUB_OFFLINE is set.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    torch_dtype = resolve_dtype(dtype)
    if scheduler not in ("ddim", None):
        raise ValueError(f"unknown scheduler {scheduler!r}; use 'ddim' or None (keep the model's)")
    source = str(model)
    is_dir = Path(source).expanduser().is_dir()
    if local_files_only is None:
        local_files_only = _offline()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(Path(source).expanduser()) if is_dir else source,
            **_dtype_kwarg(torch_dtype),
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=local_files_only,
        )
    except (OSError, ValueError) as e:
        where = "the local folder" if is_dir else "the Hugging Face hub cache"
        raise ModelLoadError(
            f"could not load Stable Diffusion weights for {source!r} from {where} "
            f"(local_files_only={local_files_only}): {type(e).__name__}: {e}\n"
            "Fix: download the model once where there is network (e.g. `huggingface-cli download "
            f"{source}` or `StableDiffusionPipeline.from_pretrained(...).save_pretrained(folder)`) and pass "
            "that folder's path as the model, or allow network access (unset HF_HUB_OFFLINE)."
        ) from e
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model_name(pipe) -> str:
    """The hub id or path a pipeline came from ("<in-memory>" for pipelines built in code)."""
    config = getattr(pipe, "config", None) or {}
    name = config.get("_name_or_path") if hasattr(config, "get") else None
    return str(name) if name else "<in-memory>"


def _tensor_digest(item: tuple[str, torch.Tensor]) -> bytes:
    name, t = item
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
    # Hash the raw bytes (a uint8 view works for every dtype, bf16 included); hashlib releases the GIL.
    h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data)
    return h.digest()


def unet_fingerprint(unet) -> str:
    """A hash of every UNet tensor (names, shapes, dtypes, bytes): any weight change gives a new one.

    Tensors are hashed in parallel threads (blake2b releases the GIL), then combined in name order;
    about a second per GB of weights.
    """
    unet = getattr(unet, "unet", unet)
    items = sorted(unet.state_dict().items())
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(_tensor_digest, items))
    h = hashlib.blake2b(digest_size=16)
    for d in digests:
        h.update(d)
    return h.hexdigest()
