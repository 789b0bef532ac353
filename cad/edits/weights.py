"""Weight edits: new values (or deltas) for named denoiser tensors, what fine-tuning and closed-form
editing methods produce (ESD, UCE, RECE). Shared behaviour (bit-exact `applied`, refusing another model,
storage) lives in cad/edits/base.py.

Values are stored in float32 whatever the model's dtype and cast to the parameter's dtype when applied, so
one edit serves a float16 and a float32 copy of the same model (its `made_for` fingerprint still names one).
"""

from __future__ import annotations

import hashlib

import torch

from cad.backbones import denoiser_of
from cad.edits.base import BaseEdit, EditMismatchError

MODES = ("replace", "delta")


class WeightEdit(BaseEdit):
    """tensors: name -> new values ("replace") or values to add ("delta"), full tensors of the parameter's shape."""

    kind = "weights"

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict | None = None, *, mode: str = "replace"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(tensors, dict) or not tensors:
            raise ValueError("a WeightEdit needs a non-empty dict name -> tensor")
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"weight edit tensor {name!r} must be a floating-point tensor")
            if not torch.isfinite(t).all():
                raise ValueError(f"weight edit tensor {name!r} holds non-finite values")
        self.tensors = {n: t.detach().float().cpu().contiguous() for n, t in tensors.items()}
        self.mode = mode
        self.meta = dict(meta or {})
        self.meta.update(mode=mode, n_tensors=len(self.tensors), n_weights=self.n_weights)
        self._fingerprint = None

    def __repr__(self) -> str:
        return (f"WeightEdit({self.meta.get('method', 'custom')}, {self.mode}, {len(self.tensors)} tensors, "
                f"{self.n_weights:,} weights, {self.fingerprint})")

    @classmethod
    def from_modules(cls, before: torch.nn.Module | dict, after: torch.nn.Module, names=None, meta=None,
                     mode: str = "replace") -> WeightEdit:
        """The edit that turns `before` into `after` on the tensors `names` (default: every tensor that differs)."""
        old = before if isinstance(before, dict) else dict(denoiser_of(before).named_parameters())
        new = dict(denoiser_of(after).named_parameters())
        names = list(names) if names is not None else [n for n in new if not torch.equal(new[n], old[n])]
        if not names:
            raise ValueError("the two models are identical on the chosen tensors: nothing to edit")
        vals = {n: (new[n].detach().float() - old[n].detach().float()) if mode == "delta" else new[n].detach()
                for n in names}
        return cls(vals, meta, mode=mode)

    @property
    def n_weights(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    @property
    def fingerprint(self) -> str:
        """A stable hash of the mode, names, shapes and values."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=8)
            h.update(self.mode.encode())
            for n in sorted(self.tensors):
                t = self.tensors[n]
                h.update(f"|{n}|{tuple(t.shape)}|".encode())
                h.update(t.numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def _plan(self, module):
        params = self._params(module, {n: tuple(t.shape) for n, t in self.tensors.items()})
        plan = []
        for n, t in self.tensors.items():
            p = params[n]
            idx = torch.arange(p.numel(), device=p.device)
            new = t.to(p.device).reshape(-1)
            if self.mode == "delta":
                new = p.detach().float().reshape(-1) + new
            plan.append((p, idx, new.to(p.dtype)))
        return plan

    @staticmethod
    def union(*edits: WeightEdit) -> WeightEdit:
        """Deltas add; replacements combine only on disjoint tensors (two new values for one tensor conflict)."""
        if not edits:
            raise ValueError("WeightEdit.union needs at least one edit")
        modes = {e.mode for e in edits}
        made_for = {e.made_for for e in edits} - {None}  # None: unknown, compatible with any
        if len(modes) > 1:
            raise EditMismatchError("WeightEdit.union: cannot mix replace and delta edits; convert them first")
        if len(made_for) > 1:
            raise EditMismatchError("WeightEdit.union: the edits were made for different denoisers")
        out: dict[str, torch.Tensor] = {}
        for e in edits:
            for n, t in e.tensors.items():
                if n in out and e.mode == "replace":
                    raise EditMismatchError(f"WeightEdit.union: two edits replace {n!r}; apply them in sequence")
                out[n] = out[n] + t if n in out else t.clone()
        meta = {"method": "union", "parts": [e.meta for e in edits], "made_for": made_for.pop() if made_for else None}
        return WeightEdit(out, meta, mode=modes.pop())

    def _payload(self):
        return dict(self.tensors), {"mode": self.mode}

    @classmethod
    def _from_payload(cls, tensors, record):
        return cls(tensors, record["meta"], mode=record.get("mode", "replace"))

