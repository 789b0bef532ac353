"""Thin Hydra entry points over plain functions in cad/ and evaluation/ (the only package that knows Hydra).

Importing this package registers the `cad.path` resolver the configs use, so that relative output paths are
taken from the repository root rather than from wherever the command was started.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def repo_root() -> Path:
    """The checkout holding conf/ (an installed copy without it falls back to the current directory)."""
    root = CONF_DIR.parent
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def _resolve_path(value: str) -> str:
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else (repo_root() / path).resolve())


if not OmegaConf.has_resolver("cad.path"):
    OmegaConf.register_new_resolver("cad.path", _resolve_path)
