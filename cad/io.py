"""Atomic writes, content hashes, safe names and provenance: the small pieces every artifact writer shares.

Reliability contract of the writers here: a file either keeps its old content or holds all of the new one,
never a prefix (temp file in the same folder, fsync, `os.replace`); a full disk, a read-only folder, a
permission problem or a file over the size limit (EFBIG) is re-raised as `ArtifactWriteError` naming the path
and what to free or fix (any other OSError keeps its type and gains the path), and the temp file is removed,
so no half-written artifact is ever left behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from cad.errors import UserError

_VERSIONED = ("cad-attribution", "torch", "diffusers", "transformers", "safetensors", "open_clip_torch",
              "torchmetrics", "nudenet", "torch-fidelity", "hydra-core")
# Errors of the storage rather than of the program: they get a message saying what to free or fix.
_STORAGE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                   errno.EPERM: "operation not permitted",
                   errno.EFBIG: "the file is larger than the file system or the process's file size limit allows"}
# A name that becomes one path component: no separators, no "..", no leading dot or dash.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=-]*$")


class ArtifactWriteError(UserError, OSError):
    """An artifact could not be written (disk full, read-only, no permission); the message names the path and
    what to free. Subclasses OSError with the original errno, so `except OSError` callers keep working."""


class ArtifactCorruptError(UserError, ValueError):
    """A cached artifact on disk is truncated, undecodable or does not match its recorded hash; the message
    names the file and the fix (delete it, or rerun, which regenerates it)."""


class UnsafeNameError(UserError, ValueError):
    """A name that reaches the file system would escape its folder or is not one plain path component."""


def storage_error(err: OSError, path: str | os.PathLike, action: str = "write") -> OSError:
    """`err` rewritten with the path and the fix when it is a storage error; otherwise `err` unchanged."""
    why = _STORAGE_ERRNOS.get(err.errno)
    if why is None:
        if err.filename is None:  # e.g. EIO from write(): keep the error, but say which artifact it hit
            err.filename = str(path)
        return err
    path = Path(path)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
            room = f" ({free / 2**20:.0f} MiB free there)"
        except OSError:
            room = ""
        fix = (f"free space on the file system holding {path.parent}{room}: delete old runs, image caches "
               "(outputs/images/...) or attribution scores you no longer need, or point paths.outputs / "
               "$CAD_OUTPUTS at a larger disk; then rerun (finished files are reused)")
    elif err.errno == errno.EFBIG:
        fix = ("raise the file size limit (`ulimit -f unlimited`, or the batch system's file size limit) or point "
               "paths.outputs / $CAD_OUTPUTS at a file system that holds files this large (FAT32 stops at 4 GiB), "
               "then rerun")
    elif err.errno == errno.EROFS:
        fix = (f"{path.parent} is on a read-only file system: point paths.outputs / $CAD_OUTPUTS at a writable "
               "folder, then rerun")
    else:
        fix = (f"make {path.parent} writable for this user (chmod/chown) or point paths.outputs / $CAD_OUTPUTS "
               "at a folder you own, then rerun")
    out = ArtifactWriteError(err.errno, f"cannot {action} {path}: {why}. Fix: {fix}. Nothing was half-written.")
    out.filename = str(path)
    return out


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` so that `path` either keeps its old content or holds all of the new one, never a prefix."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        # mkstemp creates 0600 and os.replace keeps it: colleagues sharing the outputs folder could not read it
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise storage_error(err, path) from err
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask can only be read by setting
    it, which would briefly give files created meanwhile by other threads the wrong mode)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_new_file(path: str | os.PathLike, *, folder: bool = False) -> None:
    """Give a file (0666) or folder (0777) made private by mkstemp/mkdtemp the mode a plain open() or mkdir()
    would have given it under the umask, before it is renamed into place as an artifact."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def png_bytes(image) -> bytes:
    """A PIL image encoded as PNG (the exact bytes that are written and hashed)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def atomic_save_image(path: str | os.PathLike, image) -> Path:
    """Save a PIL image as PNG atomically."""
    return atomic_write_bytes(path, png_bytes(image))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, memoised on (path, size, mtime) so a resume hashes each file once."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=65536)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def safe_name(name: Any, what: str = "name") -> str:
    """`name` unchanged if it is one plain path component (letters, digits, `._@+=-`, no `..`, not starting
    with a dot or dash); otherwise UnsafeNameError saying which setting to change. Names are never paths."""
    text = str(name) if name is not None else ""
    if not text or os.path.isabs(text) or "/" in text or "\\" in text or ".." in text or "\x00" in text \
            or not _SAFE_NAME.match(text):
        raise UnsafeNameError(
            f"{what}={name!r} is not a safe name: it reaches the file system as one folder name, so it must be "
            "letters, digits and . _ @ + = - only, start with a letter or digit, and contain no '..', no '/' or "
            f"'\\' and no absolute path; e.g. {what}={re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('._-') or 'x'}")
    return text


def path_under(root: str | os.PathLike, *parts: Any) -> Path:
    """`root/part/part/...` where every part is one path component: a part that is empty, `.`, `..`, absolute
    or holds a separator is refused (UnsafeNameError), so the result never leaves `root` by its name. The last
    line of defence behind the config checks (experiments.validate.check_names) for cache folders; symlinks
    the user made inside the outputs root (a bigger disk for images) are followed as they are."""
    root = Path(root)
    for part in parts:
        text = str(part)
        if text in ("", ".", "..") or "/" in text or "\\" in text or "\x00" in text or os.path.isabs(text):
            raise UnsafeNameError(f"{text!r} cannot name a folder under {root}: a cache path is built from plain "
                                  "names only (no '/', '\\', '..' or absolute path); rename the model, concept, "
                                  "method or benchmark that carries it")
    return root.joinpath(*map(str, parts))


def as_json(obj: Any) -> Any:
    """`obj` as it reads back from JSON (non-JSON values as str): how a record compares with its sidecar copy."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def stable_hash(obj: Any, length: int = 12) -> str:
    """Short sha256 of a JSON-able object with sorted keys: equal configs give equal folder names."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape results (a copy: callers may add to it)."""
    return dict(_package_versions())


@lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:
    # Read once per process: package metadata does not change while it runs, and reading it costs ~10-20 ms.
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out.update(lock_record())
    return out


LOCK_FILE = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"


def lock_record(path: Path = LOCK_FILE) -> dict[str, str]:
    """The tested dependency set this environment should match: the lock file's hash and every pinned package
    installed at another version ("none" when the environment is the locked set). Empty where the project was
    installed without its repository (no lock file to compare with)."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    drift = []
    for line in data.decode().splitlines():
        name, sep, pinned = line.split("#", 1)[0].strip().partition("==")
        if not sep:
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "absent"
        if installed != pinned:
            drift.append(f"{name} {installed} (lock {pinned})")
    return {"lock": hashlib.sha256(data).hexdigest()[:16], "lock_drift": "; ".join(drift) or "none"}
