"""Load published erased denoisers (ESD, UCE, RECE, ConceptPrune) in the formats they are released in.

    fmt = detect_format(path)                       # before any model loads: reads headers / key names only
    report = load_denoiser_checkpoint(bb, path)     # writes the tensors into bb.denoiser in place

Where the layouts come from (the code that writes each baseline's weights, at these commits):
- ESD, rohitgandikota/erasing @ a2189e9ae677aca22a00c361bde25d3d320d8a61: `train-scripts/train-esd.py`,
  `save_model` (``torch.save(model.state_dict())`` of the whole CompVis LatentDiffusion: ``ldm``) and
  `train-scripts/convertModels.py`, `savemodelDiffusers` (the UNet converted to diffusers names, torch.save'd
  as ``diffusers-*.pt``: full); @ 25613d27892326e0c7770f7f3555bea4be150089 `esd_sd.py` ``__main__``
  (safetensors of the trained parameters only, diffusers names: partial);
- UCE, rohitgandikota/unified-concept-editing @ 35e91e28df2f2fbcbef105fa079a436641a5142b:
  `train-scripts/train_erase.py` ``__main__`` (``torch.save(unet.state_dict())``: full); @
  28c81ed5a3e41277c1a0dc55f738e7ab188e9718 `trainscripts/uce_sd_erase.py`, `UCE` (safetensors of the edited
  attn2.to_k / to_v weights: partial);
- RECE, CharlesGong12/RECE @ 403a67fd86dce6c124b88798340e001e625b28c9: `train.py`, `train_object.py`,
  `train_artists.py` ``__main__`` (``torch.save(ldm_stable.unet.state_dict())``: full);
- ConceptPrune, ruchikachavhan/concept-prune @ 72927d9a2b518caed4e5dddd8549d04b168ad5d7:
  `wanda/save_union_over_time.py` (``torch.save(model.unet.state_dict())`` of the pruned UNet: full).

Formats:

- ``diffusers_folder``: a diffusers pipeline folder (model_index.json + unet/ or transformer/) or the
  denoiser's own folder (config.json + diffusion_pytorch_model.*), loaded with ``from_pretrained`` of the
  backbone's denoiser class.
- ``diffusers_state_dict``: diffusers-named tensors in a .safetensors / .pt / .bin file. Loading tells the
  full kind (every denoiser tensor: RECE, ConceptPrune, ESD's ``diffusers-...-UNET.pt``; reported as
  ``diffusers_full``) from the partial kind (UCE's attn2.to_k/to_v safetensors, ESD's trained-parameters-only
  safetensors; ``diffusers_partial``), where every other tensor stays the base model's.
- ``ldm``: a CompVis / LDM checkpoint (keys ``model.diffusion_model.*``, possibly under "state_dict", or a
  bare diffusion_model state dict), converted by diffusers' public ``from_single_file`` of the denoiser
  class, given the base model's own config (no key map is written here).

No file is ever unpickled with code: torch files are read with ``weights_only=True``; a pickled module is
refused with the way to convert it. Half-precision tensors are cast to each target tensor's dtype on copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cad.errors import UserError

__all__ = ["EXPECTED_LAYOUTS", "CheckpointFormatError", "PickledCheckpointError", "detect_format",
           "load_denoiser_checkpoint"]

EXPECTED_LAYOUTS = """expected one of these layouts:
  1. a diffusers folder: a pipeline folder (model_index.json with unet/ or transformer/) or the denoiser
     folder itself (config.json + diffusion_pytorch_model.safetensors or .bin);
  2. a full diffusers-named denoiser state dict (.safetensors, .pt or .bin; keys like
     'down_blocks.0.attentions.0.proj_in.weight'), e.g. a RECE or ConceptPrune UNet, ESD's diffusers-*-UNET.pt;
  3. a partial diffusers-named state dict (some of the denoiser's tensors, e.g. UCE's attn2.to_k/to_v
     safetensors or ESD's trained-parameter safetensors): every other tensor stays the base model's;
  4. a CompVis/LDM checkpoint (.ckpt, .pt or .safetensors with keys 'model.diffusion_model.*', possibly
     under 'state_dict'), converted with diffusers' from_single_file.
All tensors floating point; torch files are read with weights_only=True (no pickled code)."""

LDM_PREFIX = "model.diffusion_model."
# Top-level names of a bare CompVis diffusion_model state dict (openaimodel.UNetModel).
_LDM_BARE = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "out.", "label_emb.")
# Top-level module names of the diffusers denoisers cad wraps (UNet2DConditionModel, SD3Transformer2DModel,
# FluxTransformer2DModel): how a state dict is recognised as diffusers-named before any model exists.
_DIFFUSERS_TOP = frozenset({
    "conv_in", "time_embedding", "class_embedding", "add_embedding", "encoder_hid_proj", "down_blocks",
    "mid_block", "up_blocks", "conv_norm_out", "conv_out", "position_net",
    "pos_embed", "time_text_embed", "context_embedder", "x_embedder", "transformer_blocks",
    "single_transformer_blocks", "norm_out", "proj_out",
})
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                 "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json")
_SHOW = 8  # how many offending names an error lists


class CheckpointFormatError(UserError, ValueError):
    """A checkpoint that fits none of the layouts cad reads, or does not fit the model it is loaded into."""


class PickledCheckpointError(CheckpointFormatError):
    """A torch file that needs code unpickled (a whole pickled module or custom classes)."""


@dataclass
class _Info:
    """What detect_format learns from headers: the format, the tensor names and (for files) dtypes."""

    format: str
    path: Path
    kind: str = ""                                   # "safetensors" | "torch" | "folder"
    names: list[str] = field(default_factory=list)   # as stored (LDM: with the prefix)
    dtypes: dict[str, str] = field(default_factory=dict)
    folder: Path | None = None                       # diffusers folders: the denoiser folder, if resolved
    variant: str | None = None


# ---- reading files without running code ------------------------------------------------------------------

def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch"                                # torch.save's zip container
    if len(head) == 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n <= path.stat().st_size - 8:
            return "safetensors"
    if head[:1] == b"\x80":
        return "torch"                                # a legacy (pre-zip) torch.save: a pickle stream
    return ""


def _torch_load(path: Path):
    """torch.load with weights_only=True (mmap for zip files, so only headers are paged in); a file that
    needs code to unpickle raises PickledCheckpointError, garbage raises CheckpointFormatError."""
    import pickle

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        # torch's own message suggests weights_only=False; cad never does, so only the class name is kept.
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found or "Unsupported global" in str(err):
            raise PickledCheckpointError(_pickle_hint(path, found.group(1) if found else None)) from None
        raise CheckpointFormatError(f"{path} is not a readable torch checkpoint; {EXPECTED_LAYOUTS}") from None
    except Exception:  # noqa: BLE001 - corrupt or foreign bytes raise anything from IndexError to RuntimeError
        raise CheckpointFormatError(f"{path} is not a readable torch checkpoint; {EXPECTED_LAYOUTS}") from None


def _pickle_hint(path: Path, global_name: str | None) -> str:
    what = f" (it names the Python class {global_name})" if global_name else ""
    return (
        f"{path} is a pickled Python object{what}, not a file of tensors: loading it would run code from the "
        "file, and cad reads checkpoints with weights_only=True only. Convert it once, in an environment where "
        "you trust the file and have the code that wrote it: load the module there and save its tensors with "
        "`from safetensors.torch import save_file; save_file({k: v.contiguous() for k, v in "
        "module.state_dict().items()}, 'unet.safetensors')` (for a whole pipeline, `pipe.unet.state_dict()`; "
        "for a training checkpoint, its 'state_dict' entry), then pass that .safetensors file."
    )


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict of a loaded torch file: nested "state_dict" entries are followed (Lightning / CompVis
    training checkpoints); anything else than a flat name -> tensor dict is refused."""
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, torch.nn.Module):  # only reachable if a caller allow-listed the class
        raise PickledCheckpointError(_pickle_hint(path, type(obj).__qualname__))
    if not isinstance(obj, dict) or not obj:
        raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, not a dict of tensors; "
                                    f"{EXPECTED_LAYOUTS}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointFormatError(f"{path}: entries that are not named tensors: {bad[:_SHOW]}; {EXPECTED_LAYOUTS}")
    return obj


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# safetensors header dtype codes -> torch names (for checks that need no tensor read)
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
              "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
              "BOOL": "bool"}


def _file_names(path: Path, kind: str) -> tuple[list[str], dict[str, str]]:
    if kind == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                names = list(f.keys())
                dtypes = {k: _ST_DTYPES.get(f.get_slice(k).get_dtype(), f.get_slice(k).get_dtype()) for k in names}
        except Exception:  # noqa: BLE001 - a damaged header
            raise CheckpointFormatError(f"{path} is not a readable safetensors file; {EXPECTED_LAYOUTS}") from None
        return names, dtypes
    state = _unwrap(_torch_load(path), path)
    return list(state), {k: _dtype_name(v.dtype) for k, v in state.items()}


def _classify(names: list[str], path: Path, strict_names: bool) -> str:
    if not names:
        raise CheckpointFormatError(f"{path} holds no tensors; {EXPECTED_LAYOUTS}")
    if any(n.startswith(LDM_PREFIX) for n in names):
        return "ldm"
    if all(n.startswith(_LDM_BARE) for n in names) and any(n.startswith("input_blocks.") for n in names):
        return "ldm"
    unknown = [n for n in names if n.split(".", 1)[0] not in _DIFFUSERS_TOP]
    if not unknown or (not strict_names and len(unknown) < len(names)):
        return "diffusers_state_dict"
    raise CheckpointFormatError(
        f"{path}: {len(unknown)} of {len(names)} tensor names are neither diffusers denoiser names nor "
        f"CompVis 'model.diffusion_model.*' names (first: {unknown[:_SHOW]}); {EXPECTED_LAYOUTS}")


def _refuse_non_float(info: _Info) -> None:
    bad = [f"{k} ({d})" for k, d in info.dtypes.items() if not getattr(torch, d, torch.int8).is_floating_point]
    if bad:
        raise CheckpointFormatError(f"{info.path}: tensors that are not floating point: {bad[:_SHOW]}; an "
                                    f"erased denoiser holds float weights only; {EXPECTED_LAYOUTS}")


def _denoiser_folder(path: Path, denoiser_attr: str | None) -> Path | None:
    if (path / "model_index.json").is_file() or not (path / "config.json").is_file():
        for sub in ([denoiser_attr] if denoiser_attr else []) + ["unet", "transformer"]:
            if (path / sub / "config.json").is_file():
                return path / sub
        return None
    return path


def _weights_in(folder: Path) -> tuple[Path | None, str | None]:
    for name in _WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name, None
    for f in sorted(folder.glob("diffusion_pytorch_model.*.safetensors")) + sorted(
            folder.glob("diffusion_pytorch_model.*.bin")):
        parts = f.name.split(".")
        if len(parts) == 3:  # diffusion_pytorch_model.<variant>.<ext>
            return f, parts[1]
    return None, None


def _inspect(path: str | os.PathLike, *, strict_names: bool = True, denoiser_attr: str | None = None) -> _Info:
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointFormatError(f"checkpoint {path} does not exist; {EXPECTED_LAYOUTS}")
    if path.is_dir():
        folder = _denoiser_folder(path, denoiser_attr)
        weights, variant = _weights_in(folder) if folder else (None, None)
        if folder is None or weights is None:
            raise CheckpointFormatError(f"{path} is a folder without a diffusers denoiser (config.json and "
                                        f"diffusion_pytorch_model.* in it, or in unet/ or transformer/); "
                                        f"{EXPECTED_LAYOUTS}")
        try:
            json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            raise CheckpointFormatError(f"{folder / 'config.json'} is not valid JSON; {EXPECTED_LAYOUTS}") from None
        info = _Info("diffusers_folder", path, "folder", folder=folder, variant=variant)
        if not weights.name.endswith(".json"):  # one weights file: check it reads safely (no pickled code)
            names, info.dtypes = _file_names(weights, _sniff(weights) or "torch")
            info.names = names
            _refuse_non_float(info)
        return info
    kind = _sniff(path)
    if not kind:
        raise CheckpointFormatError(f"{path} is neither a safetensors nor a torch file (its first bytes fit "
                                    f"neither); {EXPECTED_LAYOUTS}")
    names, dtypes = _file_names(path, kind)
    info = _Info(_classify(names, path, strict_names), path, kind, names, dtypes)
    if info.format == "ldm":  # the VAE / text encoder of a whole CompVis checkpoint are not ours to check
        prefixed = _has_prefix(names)
        info.dtypes = {k: d for k, d in dtypes.items() if _ldm_key(k, prefixed) is not None}
    _refuse_non_float(info)
    return info


def detect_format(path: str | os.PathLike, *, strict_names: bool = True) -> str:
    """The checkpoint's format, from its headers and tensor names only (no model needed, nothing unpickled):
    "diffusers_folder", "diffusers_state_dict" (full or partial: told apart at load) or "ldm".

    Raises CheckpointFormatError (naming the expected layouts) for anything else, and its subclass
    PickledCheckpointError, with the way to convert, for a file that needs code to unpickle. With
    strict_names=False a state dict may carry some names that are not a denoiser's (skipped at load).
    """
    return _inspect(path, strict_names=strict_names).format


# ---- loading -----------------------------------------------------------------------------------------

def _has_prefix(names: list[str]) -> bool:
    return any(n.startswith(LDM_PREFIX) for n in names)


def _ldm_key(name: str, prefixed: bool) -> str | None:
    """The name with the LDM prefix (a bare diffusion_model dict gets it: diffusers' conversion selects the
    UNet by that prefix), or None for an entry that is not the UNet's (VAE, text encoder, EMA)."""
    if name.startswith(LDM_PREFIX):
        return name
    if not prefixed and name.startswith(_LDM_BARE):
        return LDM_PREFIX + name
    return None


def _read_tensors(info: _Info, keep=None) -> dict[str, torch.Tensor]:
    keep = keep or (lambda name: name)
    if info.kind == "safetensors":
        from safetensors import safe_open

        out = {}
        with safe_open(str(info.path), framework="pt") as f:
            for k in f.keys():
                new = keep(k)
                if new is not None:
                    out[new] = f.get_tensor(k)
        return out
    state = _unwrap(_torch_load(info.path), info.path)
    return {new: v for k, v in state.items() if (new := keep(k)) is not None}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(f"{f.relative_to(path).as_posix()}\0".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def _write(denoiser: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, *, full: bool,
           strict_names: bool) -> tuple[int, int, list[str]]:
    """Copy state into the denoiser's tensors in place, after checking every name, shape and dtype (nothing
    is written when any check fails). Returns (loaded, kept_from_base, skipped names)."""
    target = denoiser.state_dict()
    unknown = [k for k in state if k not in target]
    if unknown and strict_names:
        hint = (" (CompVis names: the file is an LDM checkpoint)" if any(k.startswith(_LDM_BARE) for k in unknown)
                else "")
        raise CheckpointFormatError(
            f"{path}: {len(unknown)} tensor names are not in this {type(denoiser).__name__} (first: "
            f"{unknown[:_SHOW]}){hint}; it was made for another architecture or base model; pass a checkpoint of "
            f"the same base model (model=...), or strict_names=False to skip unknown names; {EXPECTED_LAYOUTS}")
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}" for k, v in state.items()
              if k in target and v.shape != target[k].shape]
    if shapes:
        raise CheckpointFormatError(f"{path}: {len(shapes)} tensors do not fit this {type(denoiser).__name__} "
                                    f"(first: {shapes[:_SHOW]}); pass a checkpoint of the same base model")
    bad = [f"{k} ({_dtype_name(v.dtype)})" for k, v in state.items()
           if not v.is_floating_point() and v.dtype != target.get(k, v).dtype]
    if bad:
        raise CheckpointFormatError(f"{path}: tensors that are not floating point: {bad[:_SHOW]}")
    missing = [k for k in target if k not in state]
    if full and missing:
        raise CheckpointFormatError(f"{path}: {len(missing)} of the denoiser's tensors are missing from the "
                                    f"converted checkpoint (first: {missing[:_SHOW]})")
    with torch.no_grad():
        for k, v in state.items():
            if k in target:
                target[k].copy_(v)  # in place, casting fp16/bf16 to the model's dtype and device
    return len(state) - len(unknown), len(missing), unknown


def _from_folder(denoiser, info: _Info) -> dict[str, torch.Tensor]:
    import pickle

    cls = type(denoiser)
    try:
        module = cls.from_pretrained(str(info.folder), local_files_only=True, variant=info.variant)
    except pickle.UnpicklingError:
        # a sharded .bin that needs code (single files were refused by _inspect already); diffusers reads
        # it with weights_only=True, and torch's message would suggest turning that off
        raise PickledCheckpointError(_pickle_hint(info.folder, None)) from None
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointFormatError(f"{info.folder}: {cls.__name__}.from_pretrained failed "
                                    f"({type(err).__name__}: {str(err)[:300]}); {EXPECTED_LAYOUTS}") from None
    return module.state_dict()


def _from_ldm(denoiser, info: _Info, strict_names: bool) -> dict[str, torch.Tensor]:
    """Convert with the denoiser class's public from_single_file, given the base model's own config (written
    to a temporary folder with save_config, since from_single_file takes a config folder, not a dict)."""
    cls = type(denoiser)
    if not hasattr(cls, "from_single_file"):
        raise CheckpointFormatError(f"{info.path} is a CompVis/LDM checkpoint, and diffusers has no single-file "
                                    f"conversion for {cls.__name__}; convert it to a diffusers folder first")
    prefixed = _has_prefix(info.names)
    ldm = _read_tensors(info, keep=lambda k: _ldm_key(k, prefixed))
    n_model = len(denoiser.state_dict())
    if strict_names and len(ldm) != n_model:
        # The conversion maps one LDM tensor to one diffusers tensor; a count that differs means another
        # architecture (diffusers would only warn about the leftovers).
        raise CheckpointFormatError(f"{info.path}: {len(ldm)} model.diffusion_model tensors, but this "
                                    f"{cls.__name__} has {n_model}; pass an LDM checkpoint of the same base model")
    with tempfile.TemporaryDirectory(prefix="cad-ldm-config-") as config_dir:
        denoiser.save_config(config_dir)
        try:
            module = cls.from_single_file(ldm, config=config_dir, local_files_only=True)
        except (NotImplementedError, RuntimeError, ValueError, KeyError) as err:
            msg = str(err)
            if "meta" in msg:
                # a tensor the conversion did not fill stays on the meta device and fails on the first copy
                msg = (f"the file lacks some of this model's tensors ({len(ldm)} model.diffusion_model tensors "
                       f"for {n_model})")
            else:
                # keep diffusers' diagnosis (e.g. which shape differs), not its advice to overwrite weights
                msg = msg.split(" If you want", 1)[0][:400]
            raise CheckpointFormatError(
                f"{info.path}: diffusers' {cls.__name__}.from_single_file could not convert it for this model "
                f"({msg}); pass an LDM checkpoint of the same base model") from None
    state = module.state_dict()
    empty = [k for k, v in state.items() if v.is_meta]
    if empty:
        raise CheckpointFormatError(f"{info.path}: the converted checkpoint lacks {len(empty)} tensors "
                                    f"(first: {empty[:_SHOW]})")
    return state


def load_denoiser_checkpoint(backbone, path: str | os.PathLike, *, strict_names: bool = True) -> dict:
    """Write an erased checkpoint's tensors into the denoiser of `backbone` (a cad Backbone, a pipeline or the
    denoiser module itself), in place; see the module docstring for the formats.

    strict_names: every tensor name of a diffusers state dict must be a denoiser tensor (else the error lists
    the first unknown ones); False skips unknown names (listed in the report). Shapes must always match.
    Returns {"format": "diffusers_folder" | "diffusers_full" | "diffusers_partial" | "ldm", "loaded": n,
    "kept_from_base": n, "skipped": [names], "path": str, "sha256": hex digest of the file (folder: of its
    files)}.
    """
    from cad.backbones import denoiser_of

    denoiser = denoiser_of(backbone)
    if not isinstance(denoiser, torch.nn.Module):
        raise TypeError(f"no denoiser module in {type(backbone).__name__}")
    attr = getattr(backbone, "denoiser_attr", None)
    info = _inspect(path, strict_names=strict_names, denoiser_attr=attr)
    if info.format == "diffusers_folder":
        state, full = _from_folder(denoiser, info), True
    elif info.format == "ldm":
        state, full = _from_ldm(denoiser, info, strict_names), True
    else:
        state, full = _read_tensors(info), False
    loaded, kept, skipped = _write(denoiser, state, info.path, full=full, strict_names=strict_names)
    fmt = info.format if full else ("diffusers_partial" if kept else "diffusers_full")
    return {"format": fmt, "loaded": loaded, "kept_from_base": kept, "skipped": skipped, "path": str(info.path),
            "sha256": _sha256(info.folder or info.path)}
