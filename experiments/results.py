"""The results table: outputs/results.jsonl, one JSON row per run x variant x benchmark x metric.

Rows are appended under an exclusive file lock, one complete line per write, so parallel sweep points
(joblib processes, SLURM jobs on a shared filesystem) never interleave or truncate each other's rows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROW_KEYS = ("run_id", "experiment", "model", "concept", "method", "variant", "ratio", "sign", "granularity",
            "benchmark", "metric", "value", "higher_is_better", "protocol", "edit_fingerprint", "scores_path",
            "retain")


def make_rows(*, run: Mapping[str, Any], variant: str, benchmark: str, metrics: Mapping[str, float],
              directions: Mapping[str, bool | None], protocol: Mapping[str, Any],
              edit_fingerprint: str | None) -> list[dict]:
    """Rows for one variant (edited / original / random-<seed>) scored on one benchmark.

    `run` holds the run-level fields (run_id, experiment, model, concept, method, ratio, sign, granularity,
    scores_path, retain); `metrics` maps full metric keys ("imagenette/acc_target") to values.
    """
    missing = [k for k in ("run_id", "model", "concept", "method") if k not in run]
    if missing:
        raise ValueError(f"result rows need run fields {missing}")
    rows = []
    for key, value in metrics.items():
        rows.append({
            "run_id": run["run_id"], "experiment": run.get("experiment"), "model": run["model"],
            "concept": run["concept"], "method": run["method"], "variant": variant,
            "ratio": run.get("ratio"), "sign": run.get("sign"), "granularity": run.get("granularity"),
            "benchmark": benchmark, "metric": key, "value": _json_number(value),
            "higher_is_better": directions.get(key), "protocol": dict(protocol),
            "edit_fingerprint": edit_fingerprint, "scores_path": run.get("scores_path"),
            "retain": run.get("retain"),
        })
    return rows


def _json_number(value: Any) -> float | None:
    """NaN/inf are not JSON: store them as null (a metric with no items), never as a bare NaN token."""
    value = float(value)
    return value if math.isfinite(value) else None


def append_rows(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append rows to a JSONL table under an exclusive lock; each row is one write of one full line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(dict(r), sort_keys=True, default=str) + "\n" for r in rows]
    if not lines:
        return 0
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as lf:
        _lock(lf)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                for line in lines:
                    os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            _unlock(lf)
    return len(lines)


def _lock(f) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: single-writer use only
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def _unlock(f) -> None:
    try:
        import fcntl
    except ImportError:
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
