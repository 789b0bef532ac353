"""Your own prompt list by path: a CSV, a plain text file (one prompt per line) or a benchmark yaml anywhere.

    benchmark=file benchmark.path=/any/prompts.csv      # columns prompt (or text, caption), optional seed,
                                                         # label, id, guidance (the aliases in COLUMN_ALIASES)
    benchmark=file benchmark.path=/any/prompts.txt      # one prompt per line; seeds seed_base + line index
    benchmark=file benchmark.path=/any/my_benchmark.yaml  # a full spec; its source file relative to the yaml

The shipped prompt files are looked up by bare name and pinned by sha256 (evaluation/data.py). A file given by
path is the user's own: nothing pins it, so its sha256 is recorded instead (the benchmark's meta, then every
result row's protocol, where it also enters the row's identity). Its images are named by their items' hash
(cad.generate.image_dir), so an edited file, or another of the same name, never reuses another's images.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from .data import PROMPT_FILES, PromptDataError, PromptFileNotFound, sha256_of

FORMATS = {".csv": "csv", ".txt": "lines"}
SPEC_SUFFIXES = (".yaml", ".yml")
# Column names a CSV may use for each item field, the first found wins (the shipped files' names included).
COLUMN_ALIASES = {
    "prompt": ("prompt", "text", "caption"),
    "seed": ("seed", "evaluation_seed"),
    "label": ("label", "class", "concept"),
    "id": ("id", "case_number", "image_id"),
    "guidance": ("guidance", "evaluation_guidance"),
}


def is_by_path(spec: Mapping) -> bool:
    return spec.get("path") not in (None, "")


def safe_stem(path: Path) -> str:
    """A benchmark name from a file name: metric keys and image folders are named by it."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._-") or "prompts"


def check_file(path: str | Path, what: str = "benchmark.path") -> Path:
    """The prompt file exists, is a readable non-empty file; otherwise an error naming the fix."""
    path = Path(str(path)).expanduser()
    fix = "point it at a .csv (a header line with a prompt column) or a .txt file (one prompt per line)"
    if not path.exists():
        raise PromptFileNotFound(f"{what}={path}: no such file; {fix}")
    if not path.is_file():
        raise PromptDataError(f"{what}={path} is not a file; {fix}")
    try:
        with path.open("rb") as fh:
            head = fh.read(1)
    except OSError as err:
        raise PromptDataError(f"{what}={path} cannot be read ({err.strerror or err}); check its permissions") from err
    if not head:
        raise PromptDataError(f"{what}={path} is empty; {fix}")
    return path.resolve()


def spec_from_path(spec: Mapping) -> dict:
    """A complete benchmark spec from one that names `path` (the `file` option, conf/benchmark/file.yaml).

    A yaml path is itself the spec (its `limit`, `subset`, `limit_per_label` give way to ones set here, and its
    `metrics` to non-empty ones set here); a .csv or .txt path becomes `source: {file: <absolute path>}` with the
    name of the file's stem unless `name` is set.
    """
    from .benchmarks import read_spec_file

    outer = {k: v for k, v in spec.items() if k != "path"}
    path = check_file(spec["path"])
    if path.suffix in SPEC_SUFFIXES:
        inner = read_spec_file(path)
        for key in ("limit", "subset", "limit_per_label"):
            if outer.get(key) is not None:
                inner[key] = outer[key]
        if outer.get("metrics") and not inner.get("metrics"):
            inner["metrics"] = outer["metrics"]
        return inner
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PromptDataError(f"benchmark.path={path}: unknown kind of file {path.suffix!r}; use a .csv (header "
                              "line, a prompt column), a .txt (one prompt per line) or a benchmark .yaml")
    out = {**outer, "source": {"file": str(path), "format": fmt, **({"header": False} if fmt == "lines" else {})}}
    out["name"] = outer.get("name") or safe_stem(path)
    out["version"] = outer.get("version") or 1
    return out


def anchor_source(spec: dict, folder: Path) -> dict:
    """A spec read from a yaml anywhere: a source file named relative to the yaml is made absolute; a bare
    name that is a shipped (pinned) file and not beside the yaml stays a name, found as usual."""
    source = spec.get("source")
    if not isinstance(source, Mapping) or not source.get("file"):
        return spec
    name = str(source["file"])
    given = Path(name).expanduser()
    if given.is_absolute() or name in PROMPT_FILES:
        return spec
    here = folder / given
    if given.name == name and not here.is_file():
        return spec  # a bare name found in the data folders (CAD_DATA_DIR, cache), as the shipped specs do
    return {**spec, "source": {**source, "file": str(here.resolve())}}


def is_local_file(name: str) -> bool:
    """A source file given as a path (not a bare name looked up among the shipped prompt files)."""
    return Path(name).name != name or Path(name).is_absolute()


def local_prompt_file(source: Mapping) -> tuple[Path, str]:
    """(path, sha256) of a source file given by path, checked (and against `source.sha256` when given)."""
    path = check_file(source["file"], "benchmark source file")
    digest = sha256_of(path)
    if source.get("sha256") and source["sha256"] != digest:
        raise PromptDataError(f"{path} has sha256 {digest}, but the benchmark pins {source['sha256']}: the file "
                              "changed; restore it or update the pin")
    return path, digest


def read_lines(path: Path) -> list[dict]:
    """Rows of a plain text prompt list: every non-blank line is a prompt (no quoting, commas kept)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PromptDataError(f"{path} is not UTF-8 text ({err}); re-save it as UTF-8") from err
    rows = [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
    if not rows:
        raise PromptDataError(f"{path} holds no prompts (only blank lines); write one prompt per line")
    return rows


def detect_columns(path: Path, header: list[str]) -> dict[str, str]:
    """Item field -> CSV column, by the names in COLUMN_ALIASES (case-insensitive)."""
    lower = {h.strip().lower(): h for h in header}
    columns = {}
    for field, aliases in COLUMN_ALIASES.items():
        hit = next((lower[a] for a in aliases if a in lower), None)
        if hit is not None:
            columns[field] = hit
    if "prompt" not in columns:
        raise PromptDataError(f"{path}: no prompt column among {header}; name it 'prompt' (or "
                              f"{', '.join(COLUMN_ALIASES['prompt'][1:])}), set benchmark.columns={{prompt: "
                              "<column>}}, or use a .txt file with one prompt per line")
    return columns
