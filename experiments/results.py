"""The results table: outputs/results.jsonl, one JSON row per run x variant x benchmark x metric.

Every row carries `row_key`, a hash of what produced it (the run's configuration, variant, benchmark and
metric; not the run folder, the time or any path: the scores by their key, the toy kit classifier by its
sha256), so a resumed or moved or repeated sweep point supersedes its old rows instead of
adding more: `append_rows` skips rows whose key and value are already in the table, and `read_latest` keeps
the last row per key. Rows are appended under an exclusive file lock in one `os.write` with O_APPEND, so
parallel sweep points (joblib processes, SLURM jobs on a shared filesystem) never interleave or tear them;
a torn last line left by a crash is skipped by readers with a warning, and healed by the next append.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cad.io import stable_hash, storage_error
from evaluation.rows import key_of  # the row identity, shared with the report

log = logging.getLogger("cad.experiments")

ROW_KEYS = ("row_key", "config_hash", "run_id", "experiment", "model", "concept", "method", "variant", "ratio", "sign", "granularity",
            "benchmark", "metric", "value", "higher_is_better", "protocol", "edit_fingerprint", "scores_path",
            "scores_key", "scores_concept", "scores_objective", "concept_prompts", "concept_override",
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
    chash = run.get("config_hash") or config_hash_of_run(run, protocol, edit_fingerprint)
    rows = []
    for key, value in metrics.items():
        rows.append({
            "row_key": row_key(chash, variant, benchmark, key), "config_hash": chash,
            "run_id": run["run_id"], "experiment": run.get("experiment"), "model": run["model"],
            "concept": run["concept"], "method": run["method"], "variant": variant,
            # the prompts the concept ran with, and the prompt when it was overridden (the report's cell shows it)
            "concept_prompts": run.get("concept_prompts"), "concept_override": run.get("concept_override"),
            "ratio": run.get("ratio"), "sign": run.get("sign"), "granularity": run.get("granularity"),
            "benchmark": benchmark, "metric": key, "value": _json_number(value),
            "higher_is_better": directions.get(key), "protocol": dict(protocol),
            "edit_fingerprint": edit_fingerprint, "scores_path": run.get("scores_path"),
            # the scores' identity and what they were made for (another concept's under allow_other_scores)
            "scores_key": run.get("scores_key"), "scores_concept": run.get("scores_concept"),
            "scores_objective": run.get("scores_objective"),
            "retain": run.get("retain"), "method_settings": run.get("method_settings"),
            # amplify_erased: the method (and its settings) that erased the concept first
            "erase_method": run.get("erase_method"),
        })
    return rows


# Run fields that do not change a result: where and when it ran.
# Where: the scores' folder (their `scores_key` is their identity), so a moved outputs folder keeps its keys.
_NOT_IDENTITY = ("run_id", "config_hash", "time", "run_dir", "scores_path")


def config_hash(cfg: Mapping[str, Any]) -> str:
    """Hash of a run's composed config minus what does not change its numbers (output paths, logger, launcher,
    hydra, debug): the `config_hash` a runner may put into `run` so rows of reruns share their keys."""
    drop = {"paths", "logger", "launcher", "hydra", "debug"}
    return stable_hash({k: v for k, v in dict(cfg).items() if k not in drop}, 16)


def config_hash_of_run(run: Mapping[str, Any], protocol: Mapping[str, Any], edit_fingerprint: str | None) -> str:
    """Without a config hash from the runner: the run fields, the edit and the protocol (sampler, backbones,
    weights fingerprint, items) minus package versions and run ids, which is what produced the numbers."""
    proto = {k: v for k, v in dict(protocol).items() if k != "versions"}
    ident = {k: v for k, v in dict(run).items() if k not in _NOT_IDENTITY}
    return stable_hash({"run": ident, "edit": edit_fingerprint, "protocol": proto}, 16)


def row_key(config_hash: str, variant: str, benchmark: str, metric: str) -> str:
    return stable_hash([config_hash, variant, benchmark, metric], 16)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Every complete row in file order; an undecodable line (a torn tail of a crashed writer) is skipped with
    a warning naming the line, never silently."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s, line %d is not a complete JSON row (torn write?); skipped", path, n)
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:  # hand-edited or foreign: evaluation.report refuses it, naming the line
            log.warning("%s, line %d is a JSON %s, not a results row; skipped (fix or delete that line)", path, n,
                        type(row).__name__)
    return rows


def read_latest(path: str | os.PathLike) -> list[dict]:
    """One row per key (what produced it): the last written wins, in the order keys first appeared."""
    out: dict[str, dict] = {}
    for row in read_rows(path):
        k = key_of(row)
        out.pop(k, None)
        out[k] = row
    return list(out.values())


def _json_number(value: Any) -> float | None:
    """NaN/inf are not JSON: store them as null (a metric with no items), never as a bare NaN token."""
    value = float(value)
    return value if math.isfinite(value) else None


def append_rows(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append rows to a JSONL table under an exclusive lock in one write; returns how many were written.

    A row whose key is already in the table with the same value is not written again (a resumed sweep point
    re-scoring cached images adds nothing); a row with a new value for a known key is appended and supersedes
    the old one in `read_latest`.
    """
    path = Path(path)
    rows = [dict(r) for r in rows]
    if not rows:
        return 0
    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as lf:
            _lock(lf)
            try:
                # Only keyed rows (make_rows) are deduplicated; other rows are appended as given.
                seen = {key_of(r): r.get("value") for r in read_rows(path)} if any("row_key" in r for r in rows) else {}
                new = [r for r in rows if "row_key" not in r or key_of(r) not in seen or seen[key_of(r)] != r.get("value")]
                if not new:
                    return 0
                blob = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in new).encode("utf-8")
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    size = os.fstat(fd).st_size
                    if size:
                        # A crash mid-line left a torn tail: start on a fresh line so our rows stay whole.
                        os.lseek(fd, size - 1, os.SEEK_SET)
                        if os.read(fd, 1) != b"\n":
                            blob = b"\n" + blob
                    try:
                        written = os.write(fd, blob)  # one write: readers see all of it or none
                        while written < len(blob):
                            # a short write: the next one raises its cause (EFBIG past `ulimit -f`, ENOSPC)
                            more = os.write(fd, blob[written:])
                            if not more:
                                raise OSError(errno.ENOSPC, "short write", str(path))
                            written += more
                        os.fsync(fd)
                    except OSError:
                        with contextlib.suppress(OSError):
                            os.ftruncate(fd, size)  # a full disk must not leave half a row behind
                        raise
                finally:
                    os.close(fd)
            finally:
                _unlock(lf)
    except OSError as err:
        raise storage_error(err, path, "append results to") from err
    return len(new)


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
