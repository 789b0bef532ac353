"""Mask edits: which denoiser weights are zeroed (CAD, random controls, ConceptPrune), saved compactly.

An Edit holds boolean masks per parameter name (True = ablated) and a meta dict (ratio, sign,
granularity, space, counts, the scores it came from, `made_for`: the denoiser fingerprint). Applying,
refusing another model and storage are shared with weight edits (cad/edits/base.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cad.edits.base import BaseEdit, EditMismatchError, load_edit
from cad.selection import count_ablated, random_masks, select_components

# Scores meta worth carrying into an edit: enough to trace it back without copying the per-step terms.
_SCORE_KEYS = ("model", "unet_fingerprint", "concept", "objective", "estimator", "steps", "guidance",
               "num_samples", "seed", "space", "base_prompt", "retain")


class Edit(BaseEdit):
    """Masks name -> bool tensor (True = zeroed) plus meta; see the module docstring."""

    kind = "mask"

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
                "space": smeta.get("space"), "scores": {k: smeta[k] for k in _SCORE_KEYS if k in smeta},
                "made_for": smeta.get("denoiser_identity")}
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
        made_for = {e.made_for for e in edits} - {None}  # None: unknown, compatible with any
        if len(made_for) > 1:
            raise EditMismatchError("Edit.union: the edits were made for different denoisers (fingerprints "
                                    f"{sorted(str(m)[:12] for m in made_for)}); build them on one model")
        masks: dict[str, torch.Tensor] = {}
        for e in edits:
            for n, m in e.masks.items():
                if n in masks and masks[n].shape != m.shape:
                    raise EditMismatchError(f"edits disagree on the shape of {n!r}: {tuple(masks[n].shape)} vs "
                                            f"{tuple(m.shape)}; they were made for different models")
                masks[n] = masks[n] | m if n in masks else m.clone()
        meta = {"kind": "union", "parts": [e.meta for e in edits], "part_fingerprints": [e.fingerprint for e in edits],
                "made_for": made_for.pop() if made_for else None}
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
    def _plan(self, module):
        params = self._params(module, {n: tuple(m.shape) for n, m in self.masks.items()})
        plan = []
        for n, m in self.masks.items():
            p = params[n]
            idx = m.reshape(-1).nonzero().squeeze(1).to(p.device)
            plan.append((p, idx, torch.zeros(idx.numel(), dtype=p.dtype, device=p.device)))
        return plan

    # ---- storage ------------------------------------------------------------------------------------
    def _payload(self):
        """Ablated flat indices per tensor (int32 where they fit), and the shapes."""
        indices = {}
        for n, m in self.masks.items():
            idx = m.reshape(-1).nonzero().squeeze(1)
            indices[n] = idx.to(torch.int32 if m.numel() < 2**31 else torch.int64).contiguous()
        return indices, {"shapes": {n: list(m.shape) for n, m in self.masks.items()}}

    @classmethod
    def _from_payload(cls, tensors, record):
        masks = {}
        for n, shape in record["shapes"].items():
            mask = torch.zeros(int(torch.Size(shape).numel()), dtype=torch.bool)
            mask[tensors[n].long()] = True
            masks[n] = mask.reshape(shape)
        return cls(masks, record["meta"])

    @classmethod
    def load(cls, folder: str | Path) -> Edit:
        edit = load_edit(folder)
        if not isinstance(edit, cls):
            raise TypeError(f"{folder} holds a {edit.kind} edit; load it with cad.load_edit")
        return edit
