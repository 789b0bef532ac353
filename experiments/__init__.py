"""Thin Hydra entry points over plain functions in cad/ and evaluation/ (the only package that knows Hydra).

Importing this package registers the resolvers the configs use: `cad.path`, so that relative output paths are
taken from the repository root rather than from wherever the command was started, and `cad.now` (the run
folders' time stamp, shared by the ranks of a distributed run).
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


# Set by experiments.run in a process group: rank 0's start time, so that every rank's run folder is rank 0's.
STARTED_ENV = "CAD_RUN_STARTED"


def _now(pattern: str) -> str:
    """Hydra's `now`, except that the ranks of one distributed run share rank 0's instant (CAD_RUN_STARTED):
    one run folder per run, not one per rank."""
    from datetime import datetime

    started = os.environ.get(STARTED_ENV)
    return (datetime.fromisoformat(started) if started else datetime.now()).strftime(pattern)


if not OmegaConf.has_resolver("cad.path"):
    OmegaConf.register_new_resolver("cad.path", _resolve_path)
if not OmegaConf.has_resolver("cad.now"):
    # cached like Hydra's own `now`: a sweep's jobs copy the launcher's cache, so they share its sweep folder
    OmegaConf.register_new_resolver("cad.now", _now, use_cache=True)
