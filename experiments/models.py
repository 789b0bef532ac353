"""Load the model a run names: a hub id or folder, the toy kit (`id: toy`), plus an optional erased UNet
checkpoint (ESD, UCE, RECE, ConceptPrune release UNet state dicts) for CAD-Amplify's recall experiments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class LoadedModel:
    pipe: Any
    kit: Any            # the toy kit (classifier, CLIP, FID features) for model=toy, else None
    key: str            # folder name in the caches: model name, plus the checkpoint's fingerprint if any
    source: str         # what was loaded (hub id or folder)
    fingerprint: str    # cad.loading.unet_fingerprint of the UNet as used (after the checkpoint)
    checkpoint: str | None
    # a hash of the UNet, text encoder and VAE weights: what the images and attributions depend on
    pipeline_fingerprint: str = ""

    @property
    def cache_key(self) -> str:
        """Folder name of this model's image cache: the name plus the weights' hash, so that a model folder (or
        a toy kit) updated in place gets new images instead of another version's (the name alone stays the
        label in results and reports)."""
        return f"{self.key}-{self.pipeline_fingerprint[:12]}" if self.pipeline_fingerprint else self.key


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_unet_checkpoint(pipe, path: str | Path) -> None:
    """Replace the UNet weights by an erased model's (strict: every tensor must match by name and shape)."""
    path = Path(path).expanduser()
    if path.is_dir():
        from diffusers import UNet2DConditionModel

        sub = path / "unet" if (path / "unet").is_dir() else path
        unet = UNet2DConditionModel.from_pretrained(str(sub), torch_dtype=pipe.unet.dtype)
        state = unet.state_dict()
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        pipe.unet.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not fit this model's UNet ({err.args[0][:300]}...); pass a UNet "
                         "state dict in diffusers naming for the same base model (model=...)") from err


def load_model(model: dict, *, device: str = "auto", toy_kit: str | None = None) -> LoadedModel:
    from cad.loading import load_pipeline, unet_fingerprint

    kit = None
    source = str(model["id"])
    if source == "toy":
        from cad.toy.kit import load_kit

        kit = load_kit(toy_kit)
        source = str(kit.pipeline_path)
    pipe = load_pipeline(source, dtype=model.get("dtype", "float32"), device=resolve_device(device),
                         scheduler=model.get("scheduler", "ddim"))
    ckpt = model.get("checkpoint")
    if ckpt:
        load_unet_checkpoint(pipe, ckpt)
    fingerprint = unet_fingerprint(pipe.unet)
    key = str(model["name"]) + (f"+{Path(str(ckpt)).stem}-{fingerprint[:8]}" if ckpt else "")
    return LoadedModel(pipe, kit, key, source, fingerprint, str(ckpt) if ckpt else None,
                       pipeline_fingerprint=pipeline_fingerprint(pipe, fingerprint))


def pipeline_fingerprint(pipe, unet_fp: str | None = None) -> str:
    """A hash over the UNet, text encoder and VAE weights (cad.loading.unet_fingerprint of each module)."""
    import hashlib

    from cad.loading import unet_fingerprint

    h = hashlib.blake2b(digest_size=16)
    h.update((unet_fp or unet_fingerprint(pipe.unet)).encode())
    for name in ("text_encoder", "vae"):
        module = getattr(pipe, name, None)
        h.update(f"|{name}:{unet_fingerprint(module) if module is not None else '-'}".encode())
    return h.hexdigest()
