"""Prompt files: find them locally or fetch them once, pinned by sha256, and read their rows.

The benchmark prompt sets are the public files of the CAD paper's repository at a fixed commit. We never copy
them into this tree; a file is looked up, in order, in an explicit `data_dir`, in `$CAD_DATA_DIR`, in the cache
(`$CAD_CACHE_DIR` or `~/.cache/cad/prompts`), and only then downloaded from the pinned URL into the cache.
Every file, wherever it came from, must match its pinned sha256, so two machines that agree on a benchmark
version also agree on every prompt and seed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import urllib.error
import urllib.request
from pathlib import Path

from cad.errors import UserError
from cad.io import atomic_write_bytes
from cad.io import sha256_file as sha256_of  # memoised on (path, size, mtime): coco_30k is hashed once

BASE_URL = (
    "https://raw.githubusercontent.com/mail-research/CAD-attribution4diffusion/"
    "18b257ed1c83bf53b83c707d71ef793540aed4f2/prompts/"
)

# sha256 of every known prompt file at the pinned commit (the same list as shared/data/SHA256SUMS).
PROMPT_FILES: dict[str, str] = {
    "Nudity_ring-a-bell.csv": "f0a6cbc6344db32d1004db68a85510bd9f7d8f7be07e2bd366f184be42991122",
    "art_prompts.csv": "80983daa394cd10e1e4fcd832512f884b0cb8ecb5ae2633dd00ee517df688c14",
    "artwork_prompts.csv": "bfbc1a7a92fab22aecdd03d4e0f28c9c793280d58de732615eb8ac8b96373432",
    "big_artist_prompts.csv": "a17a182d939aadaa641aa3fd495fe325d845d9677f6d86b6cc0b08e6d6beab33",
    "coco_30k.csv": "42c57b188c8f1f8a77cddfa11cde89e83fcbdd4dcd4fc6c840fb4e046d395383",
    "famous_art_prompts.csv": "b894f59f9c2c8e1f03ac206d5d9f32fdd241b4035a7ec6b748858f24b3d8f61d",
    "generic_artists_prompts.csv": "d0a7b5d39c0c5b319bb65783e95daadc3efa14b41728bd35071296685dee0b75",
    "imagenet_prompts.csv": "c7675ce6faae0b2554b81eae3f275fc954a178eeaf91ad55814d847d77b664af",
    "imagenette.csv": "45ea8e7ec3f5f3c52a1acabaff7711f946d92862dee2e9e9a7a5353e9b0b14ec",
    "kelly_prompts.csv": "78f60bf745f4233a39a57a1d2eccaf8c2a94813c4150918f1c4be42bf846af30",
    "niche_art_prompts.csv": "50304469d99a1e6914c8db677dc684679647732444e4f6ee2ebeab70021d5475",
    "short_niche_art_prompts.csv": "200e8c522d95ba8eac01dd43e589769aff0c0143beeb8925bb646a84641a7f26",
    "small_imagenet_prompts.csv": "4ab01d9e98b0a23082b9cdbf52815cc639201fe6ba33b6ed8bbab58984c9fb2d",
    "unsafe-prompts4703.csv": "6c1821aeeb20beb276b4e20ce4c4b801f9106dc935bafc9f6fd5e12aa2651e6f",
    "vangogh_prompts.csv": "c299f14b2945ed88b88966cc3460a9d9aeb3b0dd51c585ed454c6d6601d24f87",
}


class PromptDataError(UserError, ValueError):
    """A prompt file is missing, corrupt or malformed. The message says which file and how to fix it."""


class PromptFileNotFound(PromptDataError, FileNotFoundError):
    pass


def cache_dir() -> Path:
    """Where fetched prompt files live: `$CAD_CACHE_DIR` or `~/.cache/cad/prompts`."""
    env = os.environ.get("CAD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cad" / "prompts"


def _check(path: Path, expected: str | None) -> Path:
    if expected is None:
        return path
    got = sha256_of(path)
    if got != expected:
        raise PromptDataError(
            f"{path} has sha256 {got}, but {path.name} is pinned to {expected}. The file is corrupt or a "
            f"different version: replace it with the file from {BASE_URL}{path.name}"
        )
    return path


def resolve_prompt_file(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    sha256: str | None = None,
    url: str | None = None,
    download: bool = True,
) -> Path:
    """Path of prompt file `name`, checked against its sha256 (pinned in PROMPT_FILES unless given).

    Order: `data_dir`, `$CAD_DATA_DIR`, the cache, then a download from `url` (default: the pinned URL) into the
    cache. A file name that is not pinned needs an explicit `sha256` to be downloaded; locally it is used as is.
    """
    if not name or Path(name).name != name:
        raise PromptDataError(f"prompt file name must be a bare file name like 'imagenette.csv', got {name!r}")
    expected = sha256 or PROMPT_FILES.get(name)
    searched = []
    for folder in (data_dir, os.environ.get("CAD_DATA_DIR"), cache_dir()):
        if folder is None or folder == "":
            continue
        candidate = Path(folder).expanduser() / name
        searched.append(str(candidate))
        if candidate.is_file():
            return _check(candidate, expected)
    where = ", ".join(searched)
    source = url or (BASE_URL + name if name in PROMPT_FILES else None)
    if not download or source is None or expected is None:
        why = "downloads are off" if not download else "it has no pinned URL and sha256"
        raise PromptFileNotFound(
            f"prompt file {name!r} not found (looked in: {where}) and {why}. Put {name} in a folder and pass "
            f"data_dir=... or set CAD_DATA_DIR, or copy it into {cache_dir()}."
        )
    return _download(name, source, expected, where)


def _download(name: str, url: str, expected: str, searched: str) -> Path:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise PromptFileNotFound(
            f"prompt file {name!r} not found locally (looked in: {searched}) and the download from {url} failed "
            f"({err}). Offline? Fetch {url} on a machine with internet and put it in {cache_dir()}, or set "
            f"CAD_DATA_DIR to a folder holding {name}."
        ) from err
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise PromptDataError(f"downloaded {url} has sha256 {got}, expected {expected}; nothing was cached")
    return atomic_write_bytes(cache_dir() / name, data)


def read_rows(path: str | os.PathLike, *, header: bool = True, columns: tuple[str, ...] = ("prompt",)) -> list[dict]:
    """Rows of a CSV prompt file as dicts of strings (row numbers are 1-based data rows in errors).

    Uses the csv module on the decoded text, so quoted commas and quoted newlines (both occur in the real
    files) stay inside their field. An unnamed leading index column gets the key "". Without a header, each
    record must have one field, named `columns[0]` (Ring-A-Bell is such a file: one prompt per record).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PromptDataError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from err
    records = [r for r in csv.reader(io.StringIO(text, newline="")) if any(cell.strip() for cell in r)]
    if header:
        if not records:
            raise PromptDataError(f"{path} is empty: expected a header line and prompt rows")
        names = [c.strip() for c in records[0]]
        records = records[1:]
    else:
        names = list(columns[:1])
    if not records:
        raise PromptDataError(f"{path} has no prompt rows")
    rows = []
    for i, rec in enumerate(records, start=1):
        if len(rec) != len(names):
            raise PromptDataError(
                f"{path}, row {i}: {len(rec)} fields but the header has {len(names)} ({names}); "
                "quote fields that contain commas"
            )
        rows.append(dict(zip(names, rec)))
    return rows
