"""A sequence of edits applied in order: e.g. a baseline's erasure (a weight edit) followed by a CAD-Amplify
mask made on the erased model (the paper's Table 6 recall). Each part is checked against the model it was
made for at the moment it is applied (the first against the base model, the next against the model the
earlier parts produce), and `applied` restores the base weights bit for bit."""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cad.edits.base import EDIT_FILE, META_FILE, BaseEdit, EditFileError, load_edit
from cad.io import atomic_write_json


class ComposedEdit(BaseEdit):
    kind = "composed"

    def __init__(self, parts: list[BaseEdit], meta: dict | None = None):
        if len(parts) < 1:
            raise ValueError("a ComposedEdit needs at least one part")
        self.parts = list(parts)
        self.meta = {"parts": [p.meta.get("method", p.kind) for p in self.parts], **(meta or {}),
                     "made_for": self.parts[0].made_for}

    @property
    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=8)
        for p in self.parts:
            h.update(f"{p.kind}:{p.fingerprint}|".encode())
        return h.hexdigest()

    def check_model(self, target, *, force: bool = False) -> None:
        self.parts[0].check_model(target, force=force)

    @contextmanager
    def applied(self, target, *, force: bool = False):
        with ExitStack() as stack:
            for p in self.parts:
                stack.enter_context(p.applied(target, force=force))
            yield target

    def apply_(self, target, *, force: bool = False):
        for p in self.parts:
            p.apply_(target, force=force)
        return target

    def save(self, folder: str | Path) -> Path:
        """One sub-folder per part, and a record naming them (the parts keep their own integrity checks)."""
        folder = Path(folder)
        for i, p in enumerate(self.parts):
            p.save(folder / f"part-{i}")
        atomic_write_json(folder / META_FILE, {**self.record(), "n_parts": len(self.parts)})
        return folder


def load_composed(folder: str | Path) -> ComposedEdit:
    folder = Path(folder)
    try:
        record = json.loads((folder / META_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise EditFileError(f"{folder / META_FILE} is unreadable ({err}); delete {folder} and rerun") from err
    if (folder / EDIT_FILE).exists() or record.get("kind") != "composed":
        raise EditFileError(f"{folder} is not a composed edit")
    edit = ComposedEdit([load_edit(folder / f"part-{i}") for i in range(int(record["n_parts"]))])
    if edit.fingerprint != record["fingerprint"]:
        raise EditFileError(f"{folder}: its parts hash to {edit.fingerprint}, not the recorded {record['fingerprint']}")
    return edit
