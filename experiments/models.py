"""Load the model a run names: a hub id or folder, the toy kit (`id: toy`), plus an optional erased UNet
checkpoint (ESD, UCE, RECE, ConceptPrune release UNet state dicts) for CAD-Amplify's recall experiments."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("cad.experiments")


@dataclass
class LoadedModel:
    backbone: Any       # the cad.backbones.Backbone of the model family (model.family)
    kit: Any            # the toy kit (classifier, CLIP, FID features) for model=toy, else None
    key: str            # folder name in the caches: model name, plus the checkpoint's fingerprint if any
    source: str         # what was loaded (hub id or folder)
    fingerprint: str    # cad.loading.unet_fingerprint of the UNet as used (after the checkpoint)
    checkpoint: str | None
    # a hash of the UNet, text encoder and VAE weights: what the images and attributions depend on
    pipeline_fingerprint: str = ""
    dtype: str = ""     # the dtype the weights run in (model.dtype, or float32 where a CPU refuses half precision)

    @property
    def pipe(self):
        return self.backbone.pipe

    @property
    def cache_key(self) -> str:
        """Folder name of this model's image cache: the name plus the weights' hash, so that a model folder (or
        a toy kit) updated in place gets new images instead of another version's (the name alone stays the
        label in results and reports)."""
        return f"{self.key}-{self.pipeline_fingerprint[:12]}" if self.pipeline_fingerprint else self.key


def resolve_device(device: str) -> str:
    """"auto": cuda if available, else cpu; in a process group (cad.distributed) "cuda" is this rank's GPU."""
    from cad.distributed import local_device

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return local_device(device)


HALF = ("float16", "fp16", "bfloat16", "bf16")


def run_dtype(dtype: str, device: str) -> str:
    """The dtype a model runs in on `device`: model.dtype, except half precision on a CPU, which runs in float32
    (CPU half-precision kernels are slow or missing, and diffusers only warns, once per component). One cad
    warning says so; the rows record the dtype that ran."""
    if str(dtype) in HALF and str(device).startswith("cpu"):
        log.warning("model.dtype=%s on the CPU: running in float32 instead (half precision is for GPUs); set "
                    "model.dtype=float32 to silence this, or run on a GPU (device=cuda)", dtype)
        return "float32"
    return str(dtype)


def load_unet_checkpoint(backbone, path: str | Path) -> dict:
    """Write an erased model's denoiser weights over the base model's (cad.checkpoints: diffusers folders, full
    or partial diffusers-named state dicts, CompVis/LDM files; never unpickling code)."""
    from cad.checkpoints import load_denoiser_checkpoint

    return load_denoiser_checkpoint(backbone, path)


def load_model(model: dict, *, device: str = "auto", toy_kit: str | None = None) -> LoadedModel:
    from cad.backbones import load as load_backbone

    kit = None
    source = str(model["id"])
    if source == "toy":
        from cad.toy.kit import load_kit

        kit = load_kit(toy_kit)
        source = str(kit.pipeline_path)
    device = resolve_device(device)
    dtype = run_dtype(model.get("dtype", "float32"), device)
    device_map = model.get("device_map") or None
    if device_map:
        from cad.distributed import world

        if world().size > 1:
            from cad.backbones.base import ModelLoadError

            raise ModelLoadError(f"model.device_map={device_map} spreads one model over the GPUs, and {world().size} "
                                 "processes would each do so on the same GPUs; run it in one process (python -m "
                                 "experiments.run, not torchrun), or drop model.device_map to give each process "
                                 "its own GPU")
    bb = load_backbone(source, family=model.get("family"), dtype=dtype, device=device,
                       scheduler=model.get("scheduler", "default"), device_map=device_map)
    if model.get("max_sequence_length") and hasattr(bb, "max_sequence_length"):
        bb.max_sequence_length = int(model["max_sequence_length"])
    ckpt = model.get("checkpoint")
    if ckpt:
        load_unet_checkpoint(bb, ckpt)
    fingerprint = bb.denoiser_fingerprint()
    key = str(model["name"]) + (f"+{Path(str(ckpt)).stem}-{fingerprint[:8]}" if ckpt else "")
    return LoadedModel(bb, kit, key, source, fingerprint, str(ckpt) if ckpt else None,
                       pipeline_fingerprint=bb.fingerprint(fingerprint), dtype=dtype)


def erased_view(loaded: LoadedModel, method_name: str, erase_edit) -> LoadedModel:
    """The loaded model as it is while `erase_edit` is applied: its own cache key and fingerprints, so that
    attributions on the erased model never share a folder with the base model's."""
    bb = loaded.backbone
    fp = bb.denoiser_fingerprint()
    return LoadedModel(bb, loaded.kit, f"{loaded.key}+{method_name}-{erase_edit.fingerprint[:8]}", loaded.source,
                       fp, loaded.checkpoint, pipeline_fingerprint=bb.fingerprint(fp), dtype=loaded.dtype)
