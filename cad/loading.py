"""Load pipelines by hub id or local folder, and fingerprint weights (thin front of cad.backbones).

The safety checker is switched off through the public API (`safety_checker=None`), never by patching a
class. With weights missing (offline, or a typo), `ModelLoadError` names the model and how to pass a
local folder instead.
"""

from __future__ import annotations

import os

import torch

from cad.backbones import denoiser_of, module_fingerprint
from cad.backbones import load as load_backbone
from cad.backbones.base import DTYPES, ModelLoadError, resolve_dtype

__all__ = ["DTYPES", "ModelLoadError", "load_backbone", "load_pipeline", "resolve_dtype",
           "unet_fingerprint"]


def load_pipeline(model: str | os.PathLike, *, family: str | None = None, dtype: str | torch.dtype = "float32",
                  device: str = "cpu", scheduler: str | None = "default", local_files_only: bool | None = None):
    """A diffusers pipeline from a hub id ("CompVis/stable-diffusion-v1-4") or a local folder.

    family: "sd" (default for hub ids), "sdxl", "sd3", "flux" (folders are detected from model_index.json).
    dtype: "float32" | "float16" | "bfloat16"; scheduler: "default" (the family's: DDIM for SD 1.x/2.x, the
    model's own otherwise), a name ("ddim", "euler", ...) or None (keep the model's).
    local_files_only defaults to True when HF_HUB_OFFLINE is set.
    """
    return load_backbone(model, family=family, dtype=dtype, device=device, scheduler=scheduler,
                         local_files_only=local_files_only).pipe


def unet_fingerprint(module) -> str:
    """A hash of every tensor of the denoiser (a pipeline's UNet or transformer, or any module given)."""
    return module_fingerprint(denoiser_of(module))
