"""Experiment tracking: a no-op logger and a Weights & Biases one with the same four calls.

    logger = make_logger({"name": "wandb", "project": "cad", "dir": "outputs/wandb"}, config=cfg_dict)
    logger.log_metrics({"imagenette/acc_target": 0.1}); logger.log_image("grid/imagenette", pil_image)
    logger.log_table("results", rows); logger.finish()

Without an API key the W&B run is written offline (never a login prompt, never a hang on a cluster node);
`wandb sync <dir>/wandb/offline-run-*` uploads it later. WANDB_MODE in the environment still wins over
the automatic choice, so `WANDB_MODE=disabled` turns it off everywhere (tests and `make` set it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MODES = ("online", "offline", "disabled")


class NullLogger:
    """Logs nothing (logger=none): results still go to metrics.json and results.jsonl."""

    name = "none"
    run_dir: Path | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_image(self, key: str, image: Any, caption: str | None = None) -> None:
        pass

    def log_table(self, key: str, rows: Sequence[Mapping[str, Any]]) -> None:
        pass

    def finish(self) -> None:
        pass


def has_api_key() -> bool:
    """An API key in the environment or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_mode(mode: str | None) -> str:
    """WANDB_MODE if set, else the configured mode, else online with an API key and offline without."""
    env = os.environ.get("WANDB_MODE")
    chosen = env or mode or ("online" if has_api_key() else "offline")
    if chosen == "dryrun":  # wandb's older spelling of offline
        chosen = "offline"
    if chosen not in MODES:
        raise ValueError(f"unknown W&B mode {chosen!r} (from {'WANDB_MODE' if env else 'logger.mode'}); "
                         f"use one of {MODES}")
    return chosen


class WandbLogger:
    """A W&B run: the resolved config at start, metrics, image grids and the run's result rows as a table."""

    name = "wandb"

    def __init__(self, *, project: str, config: Mapping[str, Any] | None = None, entity: str | None = None,
                 group: str | None = None, tags: Sequence[str] = (), mode: str | None = None,
                 dir: str | os.PathLike | None = None, run_name: str | None = None, job_type: str | None = None):
        import wandb

        self._wandb = wandb
        self.mode = resolve_mode(mode)
        self.dir = Path(dir) if dir is not None else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, entity=entity, group=group, tags=list(tags or []),
                              config=_plain(config or {}), mode=self.mode,
                              dir=str(self.dir) if self.dir is not None else None, name=run_name,
                              job_type=job_type, reinit="finish_previous")

    @property
    def run_dir(self) -> Path | None:
        """The folder this run writes (offline-run-*/run-*), None when disabled."""
        if self.mode == "disabled":
            return None
        return Path(self.run.dir).parent

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.run.log({k: float(v) for k, v in metrics.items() if v is not None}, step=step)

    def log_image(self, key: str, image: Any, caption: str | None = None) -> None:
        self.run.log({key: self._wandb.Image(image, caption=caption)})

    def log_table(self, key: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        columns = sorted({k for r in rows for k in r})
        data = [[_cell(r.get(c)) for c in columns] for r in rows]
        self.run.log({key: self._wandb.Table(columns=columns, data=data)})

    def finish(self) -> None:
        self.run.finish()


def _cell(value: Any) -> Any:
    """Tables hold scalars: nested protocol dicts become JSON text."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, dict | list) else value


def _plain(obj: Any) -> Any:
    if hasattr(obj, "_content"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    return dict(obj)


def make_logger(spec: Mapping[str, Any] | None, *, config: Mapping[str, Any] | None = None,
                run_name: str | None = None):
    """The logger a `logger` config asks for: {name: none} or {name: wandb, project, entity, ...}."""
    spec = dict(spec or {"name": "none"})
    name = spec.get("name", "none")
    if name in ("none", None):
        return NullLogger()
    if name != "wandb":
        raise ValueError(f"unknown logger {name!r}; use logger=none or logger=wandb")
    logger = WandbLogger(project=spec.get("project") or "cad", config=config, entity=spec.get("entity"),
                         group=spec.get("group"), tags=spec.get("tags") or (), mode=spec.get("mode"),
                         dir=spec.get("dir"), run_name=run_name, job_type=spec.get("job_type"))
    logger.n_images = int(spec.get("log_images", 8))  # images per original-vs-edited grid
    return logger
