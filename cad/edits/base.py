"""What every edit shares: identity, the model it was made for, reversible application, storage.

Two kinds of edit exist, one module each: a mask edit (mask.py: entries zeroed, CAD, random controls,
ConceptPrune) and a weight edit (weights.py: new values or deltas for named tensors, what ESD, UCE and RECE
produce). Both
- apply as a context manager that restores the original weights bit for bit on exit (`applied`), or in place
  (`apply_`);
- check every name and shape against the denoiser before touching any weight;
- refuse a denoiser whose fingerprint differs from the one they were made for (`made_for`), unless
  `force=True` (an intended transfer, e.g. SD 1.4 edits onto SD 1.5);
- save as one safetensors file whose metadata holds the whole record (the JSON sidecar is a readable copy;
  a sidecar that disagrees with the file is an error), and load through `load_edit`, which dispatches on kind.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from cad.backbones import denoiser_of, module_identity
from cad.backbones.digests import known_digests, remember_digests
from cad.errors import UserError
from cad.io import as_json, atomic_write_bytes, atomic_write_json, package_versions

EDIT_FILE = "edit.safetensors"
META_FILE = "meta.json"
KINDS: dict[str, type[BaseEdit]] = {}


class EditMismatchError(UserError, ValueError):
    """An edit names a tensor the denoiser lacks, one of another shape, or was made for another model."""


class EditFileError(UserError, ValueError):
    """An edit file is truncated, unreadable or disagrees with its sidecar."""


class BaseEdit:
    """Shared behaviour; subclasses define `kind`, `_plan` (what to write), `_payload` and `_from_payload`."""

    kind = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.kind:
            KINDS[cls.kind] = cls

    meta: dict

    @property
    def made_for(self) -> str | None:
        """The identity (cad.backbones.module_identity) of the denoiser this edit was made on (None: unknown,
        checked by names and shapes only)."""
        return self.meta.get("made_for")

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError

    # ---- applying -----------------------------------------------------------------------------------
    def check_model(self, target, *, force: bool = False) -> None:
        """Refuse a denoiser other than the one the edit was made for (names and shapes are checked always)."""
        if force or not self.made_for:
            return
        module = denoiser_of(target)
        fp = module_identity(module)  # memoised per state of the weights (cad.backbones.digests)
        if fp != self.made_for:
            raise EditMismatchError(
                f"this {self.kind} edit ({self.fingerprint}) was made for the denoiser with identity "
                f"{self.made_for[:12]}, not this one ({fp[:12]}): the weights differ (another model, checkpoint "
                "or an edit already applied). Fix: build the edit on this model, or pass force=True "
                "(method.allow_other_model=true in experiments) for an intended transfer.")

    def _plan(self, module) -> list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]]:
        """(parameter, flat indices, new values) per tensor, after checking every name and shape."""
        raise NotImplementedError

    def _params(self, module, names_shapes: dict[str, tuple]) -> dict[str, torch.nn.Parameter]:
        params = dict(module.named_parameters())
        missing = [n for n in names_shapes if n not in params]
        if missing:
            raise EditMismatchError(f"edit names {len(missing)} tensors this denoiser lacks (e.g. {missing[0]!r}); "
                                    "it was made for another model architecture")
        for n, shape in names_shapes.items():
            if tuple(params[n].shape) != tuple(shape):
                raise EditMismatchError(f"edit tensor {n!r} has shape {tuple(shape)} but the model's is "
                                        f"{tuple(params[n].shape)}; it was made for another model")
        return params

    @torch.no_grad()
    def apply_(self, target, *, force: bool = False):
        """Write the edit into the weights in place (irreversible; see `applied` for the reversible form)."""
        self.check_model(target, force=force)
        for p, idx, vals in self._plan(denoiser_of(target)):
            p.detach().view(-1).index_copy_(0, idx, vals)
        return target

    @contextmanager
    def applied(self, target, *, force: bool = False):
        """The edit for the body; the original weights restored bit for bit on exit, even on error."""
        self.check_model(target, force=force)
        module = denoiser_of(target)
        before = known_digests(module)  # what the weights hash to now, if already known
        plan = self._plan(module)
        with torch.no_grad():
            saved = [p.detach().view(-1).index_select(0, idx) for p, idx, _ in plan]
        try:
            with torch.no_grad():
                for p, idx, vals in plan:
                    p.detach().view(-1).index_copy_(0, idx, vals)
            yield target
        finally:
            with torch.no_grad():
                for (p, idx, _), old in zip(plan, saved):
                    p.detach().view(-1).index_copy_(0, idx, old)
            if before is not None:
                remember_digests(module, before)  # restored bit for bit: the weights hash as before

    # ---- storage ------------------------------------------------------------------------------------
    def _payload(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors to store, extra record fields) for save()."""
        raise NotImplementedError

    @classmethod
    def _from_payload(cls, tensors: dict[str, torch.Tensor], record: dict) -> BaseEdit:
        raise NotImplementedError

    def record(self) -> dict:
        return {"kind": self.kind, "meta": self.meta, "fingerprint": self.fingerprint,
                "package_versions": package_versions()}

    def save(self, folder: str | Path) -> Path:
        """edit.safetensors (tensors + the whole record in its metadata) and meta.json (a readable copy)."""
        from safetensors.torch import save

        folder = Path(folder)
        tensors, extra = self._payload()
        record = {**self.record(), **extra}
        blob = save(tensors, metadata={"cad_edit": json.dumps(record, sort_keys=True, default=str)})
        atomic_write_bytes(folder / EDIT_FILE, blob)
        atomic_write_json(folder / META_FILE, record)
        return folder


def load_edit(folder: str | Path) -> BaseEdit:
    """Any saved edit (mask or weights), its integrity checked: the stored tensors must hash to the recorded
    fingerprint, and the sidecar meta.json, when present, must agree with the record inside the file."""
    from safetensors import safe_open

    path = Path(folder) / EDIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {EDIT_FILE} in {folder}; create one with Edit.from_scores(...).save() or a method plugin (cad.methods), or point at an edit folder")
    try:
        with safe_open(str(path), framework="pt") as f:
            record = json.loads((f.metadata() or {})["cad_edit"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for truncated headers and data
        raise EditFileError(f"{path} is unreadable or truncated ({type(err).__name__}: {err}); delete the folder "
                            f"{Path(folder)} and rerun to rebuild the edit") from err
    sidecar = Path(folder) / META_FILE
    if sidecar.is_file():
        try:
            side = json.loads(sidecar.read_text())
        except json.JSONDecodeError as err:
            raise EditFileError(f"{sidecar} is not valid JSON ({err}); delete it (the record inside {EDIT_FILE} "
                                "is the reference) or the whole folder") from err
        if side.get("fingerprint") != record.get("fingerprint") or side.get("meta") != as_json(record.get("meta")):
            raise EditFileError(f"{sidecar} disagrees with the record inside {path} (hand-edited?); delete the "
                                "sidecar to trust the file, or delete the folder and rerun")
    kind = record.get("kind", "mask")  # edits saved before weight edits existed are masks
    if kind not in KINDS:
        raise EditFileError(f"{path} holds an edit of unknown kind {kind!r}; known: {sorted(KINDS)}")
    edit = KINDS[kind]._from_payload(tensors, record)
    if edit.fingerprint != record["fingerprint"]:
        raise EditFileError(f"{path} is corrupt: its tensors hash to {edit.fingerprint}, not the recorded "
                            f"{record['fingerprint']}; delete the folder and rerun")
    return edit
