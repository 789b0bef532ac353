"""Benchmarks: versioned prompt sets, each a list of items (id, prompt, seed, label, guidance).

A benchmark is a plain YAML spec under conf/benchmark/ (also a Hydra config-group option):

    name: imagenette            # metric keys are "<name>/<metric>"
    version: 1                  # bump whenever the items a spec yields change
    source: {file: imagenette.csv}          # or {file: ..., header: false}, or {generator: toy, ...}
                                # (a path instead of a bare name: a file of your own, see prompt_lists.py)
    columns: {id: case_number, prompt: prompt, seed: evaluation_seed, label: class}
    constants: {label: nudity}  # item fields that are the same for every row (optional)
    seed_base: 0                # files without a seed column: seed = seed_base + row index
    subsets: {1k: {limit: 1000}, sexual: {filter: {categories: sexual}}}
    limit: null                 # first N items (after subset filtering)
    metrics: [...]              # which metrics the experiments score it with (read by experiments/)

Your own prompt list: `path: /any/prompts.csv` (or .txt, one prompt per line, or a benchmark yaml anywhere)
in place of `source` (conf/benchmark/file.yaml; evaluation/prompt_lists.py). A CSV without `columns` has
them found by name (prompt, seed, label, id, guidance and their aliases); a missing or empty seed is
seed_base + row index.

Items of one spec version are the same whatever subset or limit is asked for (a subset only selects items),
so generated images are shared between the full benchmark and its subsets.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cad.io import stable_hash

from .data import PromptDataError, read_rows, resolve_prompt_file, sha256_of
from .prompt_lists import (
    anchor_source,
    detect_columns,
    is_by_path,
    is_local_file,
    local_prompt_file,
    read_lines,
    spec_from_path,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "benchmark"
_SPEC_KEYS = {"name", "version", "description", "source", "columns", "constants", "seed_base", "subsets",
              "subset", "limit", "limit_per_label", "metrics", "meta", "path"}
_FIELDS = ("id", "prompt", "seed", "label", "guidance")
# Every item's seed goes to torch.Generator.manual_seed as is (cad.generate), which takes 0 <= seed < 2**64;
# a larger one fails there with "Overflow when unpacking long long", after the model has loaded.
SEED_LIMIT = 2**64
SEED_RANGE = "0 <= seed < 2**64 (the range torch.Generator.manual_seed takes)"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Item:
    """One prompt to render. `guidance=None` means: use the sampler's guidance scale."""

    id: str
    prompt: str
    seed: int
    label: str | None = None
    guidance: float | None = None


@dataclass(frozen=True)
class Benchmark:
    name: str
    version: int
    items: tuple[Item, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        """Folder name of this benchmark's images: `<name>@v<version>`."""
        return f"{self.name}@v{self.version}"

    @property
    def labels(self) -> list[str]:
        """Distinct labels in item order."""
        return list(dict.fromkeys(i.label for i in self.items if i.label is not None))

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)


def items_images_hash(items) -> str:
    """A hash of what items make their images from: id (the file name), prompt, seed and guidance."""
    return stable_hash([[i.id, i.prompt, int(i.seed), i.guidance] for i in items], 10)


def available_benchmarks() -> list[str]:
    """The shipped benchmarks (conf/benchmark/), not `file`, which is your own list once given its path."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml") if p.stem != "file")


def load_spec(name_or_spec: str | os.PathLike | Mapping) -> dict:
    """A benchmark spec as a plain dict, from a name in conf/benchmark/, a YAML path, or a mapping (one with
    `path` is completed from the file it names: prompt_lists.spec_from_path)."""
    if isinstance(name_or_spec, Mapping) or hasattr(name_or_spec, "_content"):
        spec = _to_plain(name_or_spec)
        if is_by_path(spec):
            spec = spec_from_path(spec)
        elif "path" in spec:
            if spec.get("source") is None:
                raise ValueError(f"benchmark {spec.get('name') or 'file'!r} needs the prompt list's path: "
                                 "benchmark.path=/path/to/prompts.csv (or .txt, one prompt per line, or a .yaml)")
            spec.pop("path")
    else:
        path = Path(name_or_spec)
        if path.suffix not in (".yaml", ".yml"):
            path = CONF_DIR / f"{name_or_spec}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown benchmark {name_or_spec!r}: no {path}. Known: {', '.join(available_benchmarks())}")
        spec = read_spec_file(path)
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"benchmark spec has unknown keys {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
    for key in ("name", "version", "source"):
        if key not in spec:
            raise ValueError(f"benchmark spec {spec.get('name', '?')!r} lacks {key!r}")
    return spec


def read_spec_file(path: Path) -> dict:
    """A spec yaml; a source file named relative to it is found beside it."""
    import yaml

    spec = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(spec, dict):
        raise ValueError(f"{path} is not a benchmark spec (a mapping with name, version, source, ...)")
    return anchor_source(spec, Path(path).resolve().parent)


def _to_plain(obj) -> dict:
    if hasattr(obj, "_content"):  # an OmegaConf DictConfig handed over by experiments/
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    return {k: (_to_plain(v) if isinstance(v, Mapping) else v) for k, v in obj.items()}


def load_benchmark(
    name_or_spec: str | os.PathLike | Mapping,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    subset: str | None = None,
) -> Benchmark:
    """Load a benchmark's items. `subset` names an entry of the spec's `subsets`; `limit` keeps the first N."""
    spec = load_spec(name_or_spec)
    subset = subset if subset is not None else spec.get("subset")
    source = spec["source"]
    if isinstance(source, Mapping) and "file" in source and is_local_file(str(source["file"])):
        path, digest = local_prompt_file(source)
        items = _items_from_file(path, spec, header=source.get("header", True), fmt=source.get("format", "csv"))
        origin = {"file": path.name, "path": str(path), "sha256": digest}
    elif isinstance(source, Mapping) and "file" in source:
        path = resolve_prompt_file(source["file"], data_dir, sha256=source.get("sha256"))
        items = _items_from_file(path, spec, header=source.get("header", True), fmt=source.get("format", "csv"))
        origin = {"file": source["file"], "sha256": sha256_of(path)}
    elif isinstance(source, Mapping) and source.get("generator") == "toy":
        items = _toy_items(source)
        origin = {"generator": "toy"}
    elif isinstance(source, Mapping) and "prompts" in source:
        items = _prompt_items(source)
        origin = {"prompts": len(items)}
    else:
        raise ValueError(f"benchmark {spec['name']!r}: source must be {{file: ...}}, {{prompts: [...]}} or "
                         f"{{generator: toy, ...}}, got {source!r}")
    full_hash = stable_hash([list(vars(i).values()) for i in items])
    # What the images depend on (the label does not change a pixel), over every item of the spec version, so a
    # subset or limit shares the full benchmark's image folder while changed items (a new template, an edited
    # file under the same name and version) get their own (cad.generate.image_dir)
    images_hash = items_images_hash(items)

    rule: dict = {}
    if subset is not None:
        subsets = spec.get("subsets") or {}
        if subset not in subsets:
            raise ValueError(f"benchmark {spec['name']!r} has no subset {subset!r}; choose one of {sorted(subsets)}")
        rule = subsets[subset] or {}
        items = _filter(items, rule.get("filter") or {}, spec, path if "file" in source else None)
    per_label = rule.get("limit_per_label", spec.get("limit_per_label"))
    if per_label is not None:
        counts: dict = {}
        items = [i for i in items if counts.setdefault(i.label, itertools.count()).__next__() < per_label]
    for n in (rule.get("limit"), spec.get("limit"), limit):
        if n is not None:
            if int(n) < 1:
                raise ValueError(f"limit must be a positive number of items, got {n!r}")
            items = items[: int(n)]
    meta = {"spec": spec, "subset": subset, "limit": limit, "source": origin, "n_items": len(items),
            "items_hash": full_hash, "images_hash": images_hash, "metrics": list(spec.get("metrics") or []), **(spec.get("meta") or {})}
    return Benchmark(spec["name"], int(spec["version"]), tuple(items), meta)


def _items_from_file(path: Path, spec: dict, header: bool, fmt: str = "csv") -> list[Item]:
    columns: dict = dict(spec.get("columns") or {})
    constants: dict = dict(spec.get("constants") or {})
    rows = None
    if fmt not in ("csv", "lines"):
        raise ValueError(f"benchmark {spec['name']!r}: source.format={fmt!r}; use csv or lines (one prompt per line)")
    if fmt == "lines":
        rows, columns = read_lines(path), {"prompt": "prompt"}
    elif not columns and header:  # your own CSV: its columns found by name
        rows = read_rows(path, header=True)
        columns = detect_columns(path, list(rows[0]))
    bad = (set(columns) | set(constants)) - set(_FIELDS)
    if bad or "prompt" not in columns:
        raise ValueError(f"benchmark {spec['name']!r}: columns must map 'prompt' (and optionally {_FIELDS[2:]} "
                         f"or 'id') to file columns; unknown fields {sorted(bad)}")
    if rows is None:
        rows = read_rows(path, header=header, columns=(columns["prompt"],))
    missing = [c for c in columns.values() if c not in rows[0]]
    if missing:
        raise PromptDataError(f"{path}: missing column(s) {missing}; the file has {list(rows[0])}. Fix the file "
                              f"or the benchmark's `columns` mapping")
    ids = [_id_of(path, r, columns.get("id"), n) for n, r in enumerate(rows, start=1)]
    if all(isinstance(i, int) for i in ids):  # zero-pad so ids sort and list in row order
        width = max(4, len(str(max(ids))))
        ids = [str(i).zfill(width) for i in ids]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise PromptDataError(f"{path}: item id {dup!r} (column {columns.get('id')!r}) occurs more than once")
    base = int(spec.get("seed_base") or 0)
    items = []
    for n, (item_id, row) in enumerate(zip(ids, rows), start=1):
        # Kept as is, even empty: I2P has an empty prompt (row 2261) that the reference protocol renders too. A
        # cell of spaces only is no such deliberate choice (a slip, or a column shifted by a stray separator).
        raw = row[columns["prompt"]]
        prompt = raw.strip()
        if raw and not prompt:
            raise PromptDataError(f"{path}, row {n}, column {columns['prompt']!r}: the prompt {raw!r} is whitespace "
                                  "only; write the prompt, or leave the cell empty for a deliberate empty prompt")
        # a missing seed (no seed column, or an empty cell in it) is derived from the row
        given = "seed" in columns and row[columns["seed"]].strip() != ""
        seed = _int(path, n, columns["seed"], row[columns["seed"]]) if given else base + n - 1
        if not 0 <= seed < SEED_LIMIT:
            where = f"column {columns['seed']!r}" if given else f"seed_base {base} + row index"
            raise PromptDataError(f"{path}, row {n}, {where}: seed {seed} is {'negative' if seed < 0 else 'too large'}"
                                  f"; seeds lie in {SEED_RANGE}: fix that row's seed (or delete the row)")
        label = row[columns["label"]].strip() if "label" in columns else constants.get("label")
        guidance = (_float(path, n, columns["guidance"], row[columns["guidance"]])
                    if "guidance" in columns else constants.get("guidance"))
        items.append(Item(item_id, prompt, seed, label, guidance))
    return items


def _id_of(path: Path, row: dict, column: str | None, n: int) -> int | str:
    if column is None:
        return n - 1
    raw = row[column].strip()
    if re.fullmatch(r"\d+", raw) and not (len(raw) > 1 and raw.startswith("0")):
        return int(raw)
    if not _SAFE_ID.match(raw):
        raise PromptDataError(f"{path}, row {n}, column {column!r}: id {raw!r} is not filename-safe "
                              "(letters, digits, '.', '_', '-')")
    return raw


def _int(path: Path, n: int, column: str, raw: str) -> int:
    text = raw.strip()
    try:
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        value = float(text)  # "1174.0" from a spreadsheet round-trip is still a whole number
        if value.is_integer():
            return int(value)
    except ValueError:
        pass
    raise PromptDataError(f"{path}, row {n}, column {column!r}: seed {raw!r} is not an integer; seeds are whole "
                          f"numbers in {SEED_RANGE}: fix that row's seed (or delete the row)")


def _float(path: Path, n: int, column: str, raw: str) -> float | None:
    if not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise PromptDataError(f"{path}, row {n}, column {column!r}: guidance {raw!r} is not a number >= 0")
    return value


def _filter(items: list[Item], rule: Mapping, spec: dict, path: Path | None) -> list[Item]:
    """Keep items whose field/column matches: a cell like "sexual, violence" matches any listed value."""
    if not rule:
        return items
    rows = None
    keep = []
    for col, wanted in rule.items():
        wanted = {str(w) for w in (wanted if isinstance(wanted, list | tuple) else [wanted])}
        if col in _FIELDS:
            cells = [str(getattr(i, col)) for i in items]
        else:
            if path is None:
                raise ValueError(f"benchmark {spec['name']!r}: filter on {col!r} needs a file column or an item field")
            if rows is None:
                rows = {r["id"]: r for r in _rows_by_id(path, spec)}
            cells = [rows[i.id].get(col, "") for i in items]
        keep.append([bool(wanted & {c.strip() for c in cell.split(",")}) for cell in cells])
    return [i for i, *flags in zip(items, *keep) if all(flags)]


def _rows_by_id(path: Path, spec: dict) -> list[dict]:
    columns = spec.get("columns") or {}
    rows = read_rows(path, header=spec["source"].get("header", True), columns=(columns["prompt"],))
    ids = [_id_of(path, r, columns.get("id"), n) for n, r in enumerate(rows, start=1)]
    if all(isinstance(i, int) for i in ids):
        width = max(4, len(str(max(ids))))
        ids = [str(i).zfill(width) for i in ids]
    return [{**r, "id": i} for i, r in zip(ids, rows)]


def _prompt_items(source: Mapping) -> list[Item]:
    """Items from prompts written in the spec (conf/benchmark/concept.yaml: the concept's own prompt), each with
    `seeds_per_prompt` seeds from `seed_base`; `label` (optional) labels them all."""
    prompts = source.get("prompts")
    if isinstance(prompts, str) or not prompts or not all(isinstance(t, str) and t.strip() for t in prompts):
        raise ValueError(f"benchmark source prompts must be a list of non-empty texts, not {prompts!r}; with "
                         "benchmark=concept set the concept's prompt (concept.prompt=...)")
    n_seeds = int(source.get("seeds_per_prompt", 1))
    base = int(source.get("seed_base", 0))
    if n_seeds < 1 or not (0 <= base and base + n_seeds - 1 < SEED_LIMIT):
        raise ValueError(f"seeds_per_prompt={n_seeds} must be >= 1 and seed_base={base} .. seed_base + "
                         f"seeds_per_prompt - 1 must lie in {SEED_RANGE}")
    label = source.get("label")
    return [Item(f"p{i:03d}-{k:03d}", text, base + k, label, None)
            for i, text in enumerate(prompts) for k in range(n_seeds)]


def _toy_items(source: Mapping) -> list[Item]:
    """Items from the toy world's vocabulary: every filling of `template` x `seeds_per_prompt` seeds."""
    from cad.toy.world import KINDS

    template = source.get("template")
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"toy benchmark source needs a `template` such as 'a {{shape}}', not {template!r} (empty or "
                         "whitespace only)")
    fields = re.findall(r"{(\w+)}", template)
    unknown = [f for f in fields if f not in KINDS]
    if unknown:
        raise ValueError(f"toy template {template!r} names {unknown}; use fields among {sorted(KINDS)}")
    label = source.get("label", fields[-1] if fields else None)
    n_seeds = int(source.get("seeds_per_prompt", 1))
    if n_seeds < 1:
        raise ValueError(f"seeds_per_prompt must be >= 1, got {n_seeds}")
    base = int(source.get("seed_base", 0))
    if not (0 <= base and base + n_seeds - 1 < SEED_LIMIT):
        raise ValueError(f"toy benchmark seeds seed_base={base} .. seed_base + seeds_per_prompt - 1 must lie in "
                         f"{SEED_RANGE}; e.g. seed_base: 0")
    items = []
    for values in itertools.product(*(KINDS[f] for f in fields)):
        filling = dict(zip(fields, values))
        stem = "-".join(v.replace(" ", "_") for v in values) or "prompt"
        for k in range(n_seeds):
            items.append(Item(f"{stem}-{k:03d}", template.format(**filling), base + k, filling.get(label), None))
    return items
