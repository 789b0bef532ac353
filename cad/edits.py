"""Edits: which UNet weights are zeroed, applied reversibly (bit-exact restore) or in place, saved compactly.

An Edit holds boolean masks per parameter name (True = ablated) and a meta dict (ratio, sign,
granularity, space, counts, the scores it came from). Applying it checks every name and shape against
the UNet before touching any weight, so a wrong edit fails loudly instead of half-applying.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from cad.backbones import denoiser_of
from cad.io import atomic_write_bytes, atomic_write_json, package_versions
from cad.selection import count_ablated, random_masks, select_components

EDIT_FILE = "edit.safetensors"
META_FILE = "meta.json"
# Scores meta worth carrying into an edit: enough to trace it back without copying the per-step terms.
_SCORE_KEYS = ("model", "unet_fingerprint", "concept", "objective", "estimator", "steps", "guidance",
               "num_samples", "seed", "space", "base_prompt", "retain")


class EditMismatchError(ValueError):
    """An edit names a tensor the UNet lacks, or one of another shape."""


class Edit:
    """Masks name -> bool tensor (True = zeroed) plus meta; see the module docstring."""

    def __init__(self, masks: dict[str, torch.Tensor], meta: dict | None = None):
        if not isinstance(masks, dict) or not masks:
            raise ValueError("an Edit needs a non-empty dict name -> bool mask")
        for name, m in masks.items():
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise TypeError(f"mask {name!r} must be a bool tensor (True = ablated)")
        self.masks = {n: m.detach().cpu() for n, m in masks.items()}
        self.meta = dict(meta or {})
        self.meta.update(n_ablated=self.n_ablated, n_total=self.n_total, fraction=self.fraction)
        self._fingerprint = None

    def __repr__(self) -> str:
        return (f"Edit({self.meta.get('kind', 'custom')}, {len(self.masks)} tensors, "
                f"{self.n_ablated:,} / {self.n_total:,} weights = {self.fraction:.4%}, {self.fingerprint})")

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_scores(cls, scores, ratio: float, sign: str = "positive", granularity: str = "row") -> Edit:
        """Select with cad.select_components and record where the scores came from."""
        masks = select_components(scores, ratio, sign, granularity)
        smeta = getattr(scores, "meta", {}) or {}
        meta = {"kind": "cad", "ratio": ratio, "sign": sign, "granularity": granularity,
                "space": smeta.get("space"), "scores": {k: smeta[k] for k in _SCORE_KEYS if k in smeta}}
        return cls(masks, meta)

    @classmethod
    def random_like(cls, edit: Edit, seed: int) -> Edit:
        """The random-ablation control: the same count per tensor, placed uniformly at random."""
        meta = {**{k: v for k, v in edit.meta.items() if k not in ("n_ablated", "n_total", "fraction")},
                "kind": "random", "random_seed": seed, "control_of": edit.fingerprint}
        return cls(random_masks(edit.masks, seed), meta)

    @classmethod
    def union(cls, *edits: Edit) -> Edit:
        """Zero what any of the edits zeroes (e.g. several concepts erased at once)."""
        if not edits:
            raise ValueError("Edit.union needs at least one edit")
        masks: dict[str, torch.Tensor] = {}
        for e in edits:
            for n, m in e.masks.items():
                if n in masks and masks[n].shape != m.shape:
                    raise EditMismatchError(f"edits disagree on the shape of {n!r}: {tuple(masks[n].shape)} vs "
                                            f"{tuple(m.shape)}; they were made for different models")
                masks[n] = masks[n] | m if n in masks else m.clone()
        meta = {"kind": "union", "parts": [e.meta for e in edits], "part_fingerprints": [e.fingerprint for e in edits]}
        return cls(masks, meta)

    # ---- counts -------------------------------------------------------------------------------------
    @property
    def counts(self) -> dict[str, int]:
        return {n: int(m.sum()) for n, m in self.masks.items()}

    @property
    def n_ablated(self) -> int:
        return sum(self.counts.values())

    @property
    def n_total(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    @property
    def fraction(self) -> float:
        return self.n_ablated / self.n_total

    def summary(self) -> dict:
        return count_ablated(self.masks)

    @property
    def fingerprint(self) -> str:
        """A stable hash of which entries are ablated (names, shapes, indices): equal edits, equal hash."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=8)
            for n in sorted(self.masks):
                m = self.masks[n]
                h.update(f"{n}|{tuple(m.shape)}|".encode())
                h.update(m.reshape(-1).nonzero().squeeze(1).to(torch.int64).numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # ---- applying -----------------------------------------------------------------------------------
    def _targets(self, pipe_or_unet) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """(parameter, flat indices on its device) per mask, after checking every name and shape."""
        unet = denoiser_of(pipe_or_unet)
        params = dict(unet.named_parameters())
        missing = [n for n in self.masks if n not in params]
        if missing:
            raise EditMismatchError(f"edit names {len(missing)} tensors this UNet lacks (e.g. {missing[0]!r}); "
                                    "it was made for another model architecture")
        for n, m in self.masks.items():
            if params[n].shape != m.shape:
                raise EditMismatchError(f"edit mask {n!r} has shape {tuple(m.shape)} but the UNet's tensor is "
                                        f"{tuple(params[n].shape)}; it was made for another model")
        return [(params[n], m.reshape(-1).nonzero().squeeze(1).to(params[n].device))
                for n, m in self.masks.items()]

    @torch.no_grad()
    def apply_(self, pipe_or_unet):
        """Zero the masked weights in place (irreversible; see `applied` for the reversible form)."""
        for p, idx in self._targets(pipe_or_unet):
            p.data.view(-1).index_fill_(0, idx, 0)
        return pipe_or_unet

    @contextmanager
    def applied(self, pipe_or_unet):
        """Zero the masked weights for the body; restore the originals bit for bit on exit, even on error."""
        targets = self._targets(pipe_or_unet)
        with torch.no_grad():
            saved = [p.data.view(-1).index_select(0, idx) for p, idx in targets]
        try:
            with torch.no_grad():
                for p, idx in targets:
                    p.data.view(-1).index_fill_(0, idx, 0)
            yield pipe_or_unet
        finally:
            with torch.no_grad():
                for (p, idx), vals in zip(targets, saved):
                    p.data.view(-1).index_copy_(0, idx, vals)

    # ---- storage ------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """edit.safetensors (ablated flat indices per tensor) and meta.json (meta, shapes, fingerprint)."""
        from safetensors.torch import save

        folder = Path(folder)
        shapes = {n: list(m.shape) for n, m in self.masks.items()}
        indices = {}
        for n, m in self.masks.items():
            idx = m.reshape(-1).nonzero().squeeze(1)
            indices[n] = idx.to(torch.int32 if m.numel() < 2**31 else torch.int64).contiguous()
        record = {"meta": self.meta, "shapes": shapes, "fingerprint": self.fingerprint,
                  "package_versions": package_versions()}
        atomic_write_bytes(folder / EDIT_FILE, save(indices, metadata={"cad_edit": json.dumps(record, default=str)}))
        atomic_write_json(folder / META_FILE, record)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Edit:
        from safetensors import safe_open

        path = Path(folder) / EDIT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {EDIT_FILE} in {folder}; create one with Edit.from_scores(...).save()")
        with safe_open(str(path), framework="pt") as f:
            record = json.loads(f.metadata()["cad_edit"])
            masks = {}
            for n, shape in record["shapes"].items():
                mask = torch.zeros(int(torch.Size(shape).numel()), dtype=torch.bool)
                mask[f.get_tensor(n).long()] = True
                masks[n] = mask.reshape(shape)
        edit = cls(masks, record["meta"])
        if edit.fingerprint != record["fingerprint"]:
            raise ValueError(f"{path} is corrupt: its indices hash to {edit.fingerprint}, "
                             f"not the recorded {record['fingerprint']}")
        return edit


def export_edited_pipeline(pipe, edit: Edit, folder: str | Path, *, overwrite: bool = False) -> Path:
    """save_pretrained the pipeline with the edit applied (plain diffusers loads it); the pipeline in
    memory is left unedited. The folder appears whole or not at all; cad_edit.json records the edit."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; pass overwrite=True or pick another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        with edit.applied(pipe):
            pipe.save_pretrained(tmp)
        atomic_write_json(tmp / "cad_edit.json", {"meta": edit.meta, "fingerprint": edit.fingerprint,
                                                  "package_versions": package_versions()})
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
