"""A pipeline folder with an edit baked in, which plain diffusers loads (`<Pipeline>.from_pretrained`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cad.edits.base import BaseEdit
from cad.io import atomic_write_json, share_like_new_file


def export_edited_pipeline(pipe, edit: BaseEdit, folder: str | Path, *, overwrite: bool = False,
                           force: bool = False, extra_files: dict[str, str] | None = None) -> Path:
    """save_pretrained the pipeline with the edit applied (plain diffusers loads it); the pipeline in
    memory is left unedited. The folder appears whole or not at all; cad_edit.json records the edit, and
    `extra_files` (name -> text, e.g. a model card README.md) are written into it before it appears."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; pass overwrite=True or pick another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    share_like_new_file(tmp, folder=True)  # mkdtemp's 0700 would survive the rename
    try:
        with edit.applied(pipe, force=force):
            pipe.save_pretrained(tmp)
        atomic_write_json(tmp / "cad_edit.json", edit.record())
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
