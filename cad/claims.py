"""Claims: one process computes a cached artifact, the others wait for it and reuse it.

Runs started together on one outputs folder, or the points of a parallel sweep (joblib, SLURM arrays), ask for
the same image, attribution or baseline edit at the same moment. Each asker first claims it: a small JSON file
(`pid`, `host`, `token`, `time`) created under an advisory folder lock, so exactly one process holds it. The
others skip or wait. A claim is free again when its owner releases it, when its process died (same host, pid
gone: taken over at once), or when it was not refreshed for `ttl` seconds (another host's run, lost or hung);
a long computation keeps its claim fresh with a heartbeat (`heartbeat`).

Images claim item by item (cad.generate); attributions, concept images and baseline edits claim their whole
cache folder (`compute_once`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("cad.claims")

HOST = socket.gethostname()
# How long another host's claim may go unrefreshed before it counts as abandoned. Claims on this host are
# checked by pid instead, at once. Holders of long claims refresh them every ttl / 4 (`heartbeat`).
CLAIM_TTL_S = float(os.environ.get("CAD_CLAIM_TTL_S", 1800))
POLL_S = 0.25


def new_token() -> str:
    """A claim owner's identity: unique per process and call, so two claims of one process stay apart."""
    return uuid.uuid4().hex


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


@contextlib.contextmanager
def locked(path: str | os.PathLike):
    """An advisory exclusive lock on `path` (created if absent): claim checks and writes stay serial."""
    try:
        import fcntl
    except ImportError:  # Windows: claims are then only as good as the file system's atomic rename
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_claim(path: str | os.PathLike) -> dict | None:
    """The claim's record, or None when there is none (or only half of one, left by a killed writer)."""
    try:
        owner = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return owner if isinstance(owner, dict) else None


def claim_state(path: str | os.PathLike, token: str, ttl: float = CLAIM_TTL_S) -> str | None:
    """'mine', 'other' (a live claim of another process) or None (no claim, or an abandoned one to take over)."""
    path = Path(path)
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return None
    owner = read_claim(path)
    if owner is None:
        return None
    if owner.get("token") == token:
        return "mine"
    try:
        pid = int(owner.get("pid", -1))
    except (TypeError, ValueError):
        pid = -1
    if owner.get("host") == HOST and not pid_alive(pid):
        return None  # its process died (kill -9, OOM): take it over now
    if age > ttl:
        return None  # not refreshed for ttl seconds: another machine's run is gone or hung
    return "other"


def write_claim(path: str | os.PathLike, token: str, **extra) -> None:
    """Write (or take over) a claim. Claims need not survive a power cut (a lost claim only means the work is
    free again), so they are replaced atomically without fsync: many small claims must not slow a run down."""
    path = Path(path)
    body = json.dumps({"pid": os.getpid(), "host": HOST, "token": token, "time": time.time(), **extra})
    tmp = path.with_name(f".{path.name}.{token}.tmp")
    tmp.write_text(body)
    os.replace(tmp, path)


def release(path: str | os.PathLike, token: str) -> None:
    """Remove the claim if it is still this owner's (a taken-over claim belongs to its new owner)."""
    path = Path(path)
    owner = read_claim(path)
    if owner is not None and owner.get("token") == token:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def heartbeat(path: str | os.PathLike, token: str, ttl: float = CLAIM_TTL_S) -> Iterator[None]:
    """Refresh the claim's mtime every ttl / 4 while the block runs, so that a computation longer than `ttl`
    is not taken for abandoned by another host."""
    stop = threading.Event()
    interval = max(0.05, ttl / 4)

    def beat():
        while not stop.wait(interval):
            owner = read_claim(path)
            if owner is None or owner.get("token") != token:
                return  # taken over (we looked dead or hung): nothing of ours to refresh
            with contextlib.suppress(OSError):
                os.utime(path)

    thread = threading.Thread(target=beat, name="cad-claim-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def compute_once(claim: str | os.PathLike, done: Callable[[], bool], *, what: str = "",
                 ttl: float | None = None, poll: float = POLL_S) -> Iterator[bool]:
    """Enter as the one process that computes an artifact, or after another process has computed it.

    Yields True when the caller holds the claim and `done()` is false: compute and write the artifact inside
    the block (the claim is refreshed meanwhile and released on exit, also on an error, so a waiter then takes
    the work over). Yields False when the artifact is done: reuse it. `done()` is only trusted while nobody
    holds the claim, so a waiter never reads an artifact its owner is still writing.
    """
    claim = Path(claim)
    ttl = CLAIM_TTL_S if ttl is None else float(ttl)
    token = new_token()
    lock = claim.with_name(f"{claim.name}.lock")
    said = False
    while True:
        with locked(lock):
            state = claim_state(claim, token, ttl)
            if state is None:
                if done():
                    mine = False
                    break
                write_claim(claim, token, what=what)
                mine = True
                break
        if not said:
            owner = read_claim(claim) or {}
            log.info("waiting for %s: pid %s on %s computes it (claim %s)", what or claim.parent,
                     owner.get("pid"), owner.get("host"), claim)
            said = True
        time.sleep(poll)
    if not mine:
        yield False
        return
    try:
        with heartbeat(claim, token, ttl):
            yield True
    finally:
        release(claim, token)
