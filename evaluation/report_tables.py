"""Paper-shaped tables from results rows, each table holding only rows that came from the same setup.

A table's group is what produced its numbers: the experiment, the model and its weights fingerprint, and for
every benchmark its runs scored the benchmark's version, item count, items hash and the rest of the protocol
(sampler, metric backbones, protocol name; package versions and run ids aside). Runs are grouped by that
signature, so a quick `generation.per_label` cut (same items hash, fewer items) lands in its own table,
labelled with its n, and never overwrites or averages into the full result. Inside a table a line is a
method with its settings ("SD" for the unedited model first); a cell is one (line, concept, metric): the
latest row wins (a rerun supersedes), and only random-control seeds are averaged, saying how many.

Layouts: "methods" (the paper's Table 1: methods as lines, a column per concept and headline metric, plus
the mean over concepts) and "recall" (Table 6, experiment=amplify_erased: a line per erase method, columns
base / erased / recalled per concept and metric). Per-class and per-label keys (`acc/<class>`,
`nudenet/<label>`) are "wide" and have their own tables.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cad.io import stable_hash
from evaluation.rows import concept_cell, key_of

# Protocol entries that do not change a number: left out of the group signature.
PROTOCOL_IGNORED = ("versions", "run_id", "run_ids", "time", "run_dir")
# Line order in Table 1 after "SD"; other methods follow alphabetically, random controls last.
METHOD_ORDER = ("cad_erase", "cad_amplify", "esd", "uce", "rece", "conceptprune")
# Column order of a concept's metrics: erase metric, then its retain metric, then the rest alphabetically.
METRIC_ORDER = ("acc_target", "acc_others", "lpips_erased", "lpips_others", "clip_presence", "clip_presence_l14",
                "clip_presence_margin", "clip_presence_l14_margin", "acc_mean", "nudenet_images",
                "nudenet_image_share", "nudenet_total", "fid", "clip_score_100", "clip_score_cos_mean")
# Method settings that never name a line: they only choose the random controls or the transfer policy.
SETTINGS_HIDDEN = ("name", "controls", "allow_other_model", "retain")
STAGES = {"original": "base", "erased": "erased", "edited": "recalled"}  # Table 6 columns by variant


def latest(rows: Iterable[dict]) -> list[dict]:
    """One row per key (what produced it, experiments.results.row_key): the last one written wins."""
    out: dict[str, dict] = {}
    for r in rows:
        k = key_of(r)
        out.pop(k, None)
        out[k] = r
    return list(out.values())


def short_metric(metric: str) -> str:
    return metric.split("/", 1)[1] if "/" in metric else metric


def is_wide(metric: str) -> bool:
    """Per-class / per-label keys (`imagenette/acc/church`, `i2p/nudenet/female_breast_exposed`)."""
    return "/" in short_metric(metric)


def n_items(row: dict) -> int | None:
    n = (row.get("protocol") or {}).get("n_items")
    return int(n) if isinstance(n, int | float) else None


def protocol_id(row: dict) -> str:
    proto = {k: v for k, v in (row.get("protocol") or {}).items() if k not in PROTOCOL_IGNORED}
    return stable_hash(proto, 8)


def weights_of(row: dict) -> str | None:
    p = row.get("protocol") or {}
    return p.get("weights_fingerprint") or p.get("unet_fingerprint") or p.get("pipeline_fingerprint")


@dataclass(frozen=True)
class Group:
    """What produced a table's rows (see the module docstring)."""

    experiment: str
    model: str
    weights: str | None
    name: str | None
    # (benchmark@version, n items, items hash, protocol id) per benchmark the runs scored
    benchmarks: tuple[tuple[str, int | None, str | None, str], ...]

    @property
    def point(self) -> tuple:
        """The same experiment, model and benchmarks at any size: groups differing only in n share it."""
        return self.experiment, self.model, self.weights, self.name, tuple(b[0] for b in self.benchmarks)

    @property
    def n(self) -> str:
        return "+".join("?" if b[1] is None else f"{b[1]}" for b in self.benchmarks)

    def title(self) -> str:
        w = f" · weights {self.weights[:8]}" if self.weights else ""
        benches = " + ".join(f"{b}{'' if n is None else f' n={n}'}" for b, n, _, _ in self.benchmarks)
        name = f" · protocol {self.name}" if self.name else ""
        return f"{self.experiment} · {self.model}{w} · {benches}{name}"

    def slug(self) -> str:
        """File-name part: experiment, model, item count and a short hash of the whole group."""
        n = "" if set(self.n) <= {"?", "+"} else f"_n{self.n}"
        return f"{self.experiment}_{self.model}{n}_{stable_hash([self.weights, self.name, self.benchmarks], 6)}"


def _run_of(row: dict) -> str:
    return str(row.get("run_id") or row.get("config_hash") or "-")


def group_rows(rows: Sequence[dict]) -> dict[Group, list[dict]]:
    """Rows by the group of the run that wrote them (latest row per key first). A run's signature covers
    every benchmark it scored, so the target benchmark and its retention benchmarks share one table."""
    rows = latest(rows)
    by_run: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_run[_run_of(r)].append(r)
    out: dict[Group, list[dict]] = defaultdict(list)
    for run_rows in by_run.values():
        first = run_rows[0]
        # in the order the run scored them: the target benchmark first, then its retention benchmarks
        benches = tuple(dict.fromkeys((r["benchmark"], n_items(r),
                                       (r.get("protocol") or {}).get("benchmark_items_hash"), protocol_id(r))
                                      for r in run_rows))
        names = {(r.get("protocol") or {}).get("name") for r in run_rows}
        g = Group(str(first.get("experiment") or "-"), str(first["model"]), weights_of(first),
                  next(iter(names)) if len(names) == 1 else "/".join(sorted(map(str, names))), benches)
        out[g].extend(run_rows)
    return dict(out)


def check_one_size(rows: Sequence[dict], what: str) -> None:
    """Rows meant for one cell must come from benchmarks of one size: a mean across sizes is refused."""
    sizes = {(r["benchmark"], n_items(r)) for r in rows}
    if len({b for b, _ in sizes}) != len(sizes):
        raise ValueError(f"{what}: rows of different item counts {sorted(sizes, key=str)} in one cell; results of "
                         "different sizes are separate tables (group them with evaluation.report_tables.group_rows)")


def is_recall(rows: Sequence[dict]) -> bool:
    """Table 6 (experiment=amplify_erased): an erase method recorded, an erased variant, or the experiment."""
    return any(r.get("variant") == "erased" or r.get("erase_method") or r.get("experiment") == "amplify_erased"
               for r in rows)


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return json.dumps(v, separators=(",", ":"), default=str) if isinstance(v, list | dict) else str(v)


def _settings(row: dict, key: str = "method_settings") -> dict:
    s = row.get(key)
    if isinstance(s, dict):
        return {k: v for k, v in s.items() if k not in SETTINGS_HIDDEN}
    return {"ratio": row.get("ratio")} if key == "method_settings" and row.get("ratio") is not None else {}


def _varying(rows: Sequence[dict], key: str) -> dict[str, set[str]]:
    """method name -> settings whose values differ between that method's rows (they name the lines)."""
    by_name: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if key == "method_settings":
            if r.get("variant") == "original":
                continue  # the unedited model's line does not depend on the method's settings
            by_name[r["method"]].append(_settings(r, key))
        elif isinstance(r.get(key), dict):
            by_name[str(r[key].get("name"))].append(_settings(r, key))
    return {name: {k for k in set().union(*dicts) if len({_fmt_value(d.get(k)) for d in dicts}) > 1}
            for name, dicts in by_name.items()}


def method_label(name: str, settings: dict, varying: set[str], *, retain: bool = False,
                 with_ratio: bool = True) -> str:
    """`cad_erase+retain@0.05 (sign=negative)`: the ratio after @, other settings that differ in parentheses."""
    ratio = settings.get("ratio")
    text = name + ("+retain" if retain else "")
    if with_ratio and isinstance(ratio, int | float):
        text += f"@{ratio:g}"
    extra = [f"{k}={_fmt_value(settings[k])}" for k in sorted(varying) if k != "ratio" and k in settings]
    return text + (f" ({', '.join(extra)})" if extra else "")


@dataclass
class Line:
    """One line of a table: its label, sort key and the settings it stands for (for the table's notes)."""

    label: str
    order: tuple
    settings: str = ""
    kind: str = "method"  # sd, method, random (a control) or recall (Table 6)
    series: str = ""  # the Pareto / sweep line it belongs to: the method without its ratio
    ratio: float | None = None


@dataclass
class Table:
    group: Group
    layout: str  # "methods" or "recall"
    lines: list[Line]
    concepts: list[str]
    metrics: list[str]
    # (line label, stage, concept, metric) -> value; stage is None in the methods layout
    cells: dict[tuple, float | None]
    seeds: dict[str, set[int]] = field(default_factory=dict)  # random line/stage label -> seeds averaged
    higher_is_better: dict[str, bool | None] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)
    wide: bool = False
    protocol: dict = field(default_factory=dict)  # of the first row (the sampler is the same for all)


def _seed_of(variant: str) -> int | None:
    tail = variant.split("-", 1)[1] if "-" in variant else ""
    return int(tail) if tail.lstrip("-").isdigit() else None


def _method_rank(method: str) -> tuple:
    if method == "random":
        return (len(METHOD_ORDER) + 2, method)
    return (METHOD_ORDER.index(method), method) if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _metric_rank(group: Group, metric: str) -> tuple:
    bench = metric.split("/", 1)[0]
    names = [b[0].split("@", 1)[0] for b in group.benchmarks]
    short = short_metric(metric)
    return (names.index(bench) if bench in names else len(names),
            METRIC_ORDER.index(short) if short in METRIC_ORDER else len(METRIC_ORDER), short)


def _ratio(row: dict) -> float:
    r = _settings(row).get("ratio", row.get("ratio"))
    return float(r) if isinstance(r, int | float) else 0.0


def build_table(group: Group, rows: Sequence[dict], *, wide: bool = False) -> Table | None:
    """The table of one group: headline metrics (or, with wide=True, the per-class / per-label ones)."""
    rows = [r for r in rows if is_wide(r["metric"]) == wide]
    if not rows:
        return None
    recall = is_recall(rows)
    varying = _varying(rows, "method_settings")
    erase_varying = _varying(rows, "erase_method")
    amplify_named = any(varying.values())  # several amplify settings per erase method: say which
    erased_variant = any(r.get("variant") == "erased" for r in rows)
    lines: dict[str, Line] = {}
    picked: dict[tuple, dict[int | None, dict]] = defaultdict(dict)  # cell -> seed -> latest row
    seeds: dict[str, set[int]] = defaultdict(set)
    for r in rows:  # file order: a later row of the same cell (and seed) wins
        variant = r.get("variant") or "edited"
        seed = _seed_of(variant) if variant.startswith("random") else None
        settings = _settings(r)
        label = method_label(r["method"], settings, varying.get(r["method"], set()), retain=bool(r.get("retain")))
        if recall:
            em = r.get("erase_method")
            if isinstance(em, dict):
                line = method_label(str(em.get("name")), _settings(r, "erase_method"),
                                    erase_varying.get(str(em.get("name")), set()))
                line_settings = f"erase {_settings_text(em)}; recall {_settings_text(r.get('method_settings'))}"
            elif erased_variant:  # rows written before the erase method was recorded
                line, line_settings = "erase method not recorded", f"recall {_settings_text(r.get('method_settings'))}"
            else:  # model.checkpoint: the loaded model is the erased one, its base is not in this run
                line, line_settings = f"checkpoint {r['model']}", f"recall {_settings_text(r.get('method_settings'))}"
            if amplify_named:
                line += f" → {label}"
            stage_of = STAGES if erased_variant or em else {"original": "erased", "edited": "recalled"}
            stage = stage_of.get(variant, "random")
            lines.setdefault(line, Line(line, (0, line), line_settings, "recall", line))
            if seed is not None:
                seeds[stage].add(seed)
        else:
            stage = None
            series = method_label(r["method"], settings, varying.get(r["method"], set()),
                                  retain=bool(r.get("retain")), with_ratio=False)
            ratio = settings.get("ratio")
            ratio = float(ratio) if isinstance(ratio, int | float) else None
            if variant == "original" or r["method"] == "none":
                new = Line("SD", (-1,), "the unedited model", "sd", "SD")
            elif variant.startswith("random"):
                new = Line(f"random ↔ {label}", (len(METHOD_ORDER) + 1, _ratio(r), label),
                           f"random ablation of as many weights as {label}", "random", f"random ↔ {series}", ratio)
                seeds[new.label].add(seed)
            else:
                new = Line(label, (*_method_rank(r["method"]), _ratio(r), label),
                           _settings_text(r.get("method_settings")), "method", series, ratio)
            line = new.label
            lines.setdefault(line, new)
        picked[(line, stage, concept_cell(r), r["metric"])][seed] = r
    cells = {}
    for cell, by_seed in picked.items():
        check_one_size(list(by_seed.values()), f"{group.title()} · {cell}")
        vals = [float(r["value"]) for r in by_seed.values() if r["value"] is not None]
        cells[cell] = sum(vals) / len(vals) if vals else None
    hib: dict[str, bool | None] = {}
    for r in rows:
        if hib.get(r["metric"]) is None:
            hib[r["metric"]] = r.get("higher_is_better")
    relabel = {}
    for old, ln in lines.items():  # the random lines say how many seeds they average
        if not recall and old in seeds:
            k = len(seeds[old])
            ln.label = f"{old} (mean of {k} seed{'s' if k != 1 else ''})"
        relabel[old] = ln.label
    cells = {(relabel[c[0]], *c[1:]): v for c, v in cells.items()}
    seeds = {relabel.get(k, k): v for k, v in seeds.items()}
    stages = [s for s in ("base", "erased", "recalled", "random") if any(c[1] == s for c in cells)] if recall else []
    return Table(group, "recall" if recall else "methods", sorted(lines.values(), key=lambda ln: ln.order),
                 sorted({concept_cell(r) for r in rows}),
                 sorted({r["metric"] for r in rows}, key=lambda m: _metric_rank(group, m)), cells,
                 dict(seeds), hib, stages, wide, dict(rows[0].get("protocol") or {}))


def _settings_text(settings) -> str:
    if not isinstance(settings, dict):
        return ""  # rows written before settings were recorded
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(settings.items()) if k != "name") or "defaults"


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def arrow(hib: bool | None) -> str:
    return "" if hib is None else (" ↑" if hib else " ↓")


def _metric_text(table: Table, metric: str) -> str:
    return metric if len(table.group.benchmarks) > 1 else short_metric(metric)


def _stage_text(table: Table, stage: str) -> str:
    if stage != "random":
        return stage
    k = {len(s) for s in table.seeds.values()} or {0}
    return f"random (mean of {'–'.join(map(str, sorted(k)))} seeds)"


def columns(table: Table) -> list[tuple[tuple, str]]:
    """(cell key minus the line, header text) in order: per concept its metrics (and stages), then means."""
    cols = []
    for concept in table.concepts:
        for metric in table.metrics:
            head = f"{_metric_text(table, metric)}{arrow(table.higher_is_better.get(metric))}"
            if not table.wide:  # a wide table is one concept's, named in its heading
                head = f"{concept} {head}"
            if table.layout == "recall":
                cols += [((s, concept, metric), f"{head} {_stage_text(table, s)}") for s in table.stages]
            else:
                cols.append(((None, concept, metric), head))
    if table.layout == "methods" and len(table.concepts) > 1 and not table.wide:
        cols += [((None, "*mean*", m), f"mean {_metric_text(table, m)}{arrow(table.higher_is_better.get(m))}")
                 for m in table.metrics]
    return cols


def cell(table: Table, line: str, key: tuple) -> float | None:
    stage, concept, metric = key
    if concept != "*mean*":
        return table.cells.get((line, stage, concept, metric))
    vals = [table.cells.get((line, stage, c, metric)) for c in table.concepts]
    # a mean over fewer concepts than the other lines is not comparable with theirs: only complete lines
    return None if any(v is None for v in vals) else sum(vals) / len(vals)


def unedited_label(model: str) -> str:
    """The unedited model's line: "SD" as the paper's tables name it for Stable Diffusion models, else the model's
    own name (the toy world's unedited pipeline is no SD checkpoint)."""
    return "SD" if str(model).lower().startswith("sd") else f"{model} (unedited)"


def render(table: Table, *, heading: str = "###", notes: Sequence[str] = (), title: str = "") -> str:
    """A markdown table with its group in the heading and the protocol and method settings under it."""
    g = table.group
    first = g.benchmarks[0] if g.benchmarks else None
    proto = f"protocol {g.name or '(unnamed)'} #{first[3] if first else '-'}"
    p = table.protocol
    sampler = [f"{p['steps']} steps" if p.get("steps") else "", f"guidance {p['guidance']:g}"
               if isinstance(p.get("guidance"), int | float) else "", str(p.get("scheduler") or ""),
               f"{p['resolution']} px" if p.get("resolution") else "", str(p.get("dtype") or ""),
               f"{p['seeds']} seeds" if p.get("seeds") else ""]
    if any(sampler):
        proto += " · " + ", ".join(x for x in sampler if x)
    items = [f"{b.split('@')[0]} {h}" for b, _, h, _ in g.benchmarks if h]
    if items:
        proto += " · items " + ", ".join(items)
    kind = "Table 6 layout: base / erased / recalled" if table.layout == "recall" else "methods × concepts"
    out = [f"{heading} {g.title()}{title}", "", f"{proto} · {kind}", *notes, ""]
    if table.layout == "recall" and table.wide:  # per-class keys x stages is too wide: a line per stage
        heads = [f"{_metric_text(table, m)}{arrow(table.higher_is_better.get(m))}" for m in table.metrics]
        out += ["| erase method | stage | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
        for ln in table.lines:
            for stage in table.stages:
                vals = [fmt(table.cells.get((ln.label, stage, c, m))) for c in table.concepts for m in table.metrics]
                out.append(f"| {ln.label} | {_stage_text(table, stage)} | " + " | ".join(vals) + " |")
    else:
        cols = columns(table)
        first_col = "erase method" if table.layout == "recall" else "method"
        out += ["| " + first_col + " | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---|" * len(cols)]
        for ln in table.lines:
            shown = unedited_label(g.model) if ln.kind == "sd" else ln.label
            out.append(f"| {shown} | " + " | ".join(fmt(cell(table, ln.label, k)) for k, _ in cols) + " |")
    settings = [f"- {ln.label}: {ln.settings}" for ln in table.lines if ln.settings and ln.kind != "sd"]
    if table.lines and any(ln.kind == "random" for ln in table.lines):
        seeds = sorted({s for ln in table.lines if ln.kind == "random" for s in table.seeds.get(ln.label, ())})
        settings.append(f"- random seeds: {', '.join(map(str, seeds))}")
    if settings:
        out += ["", "Settings:", *settings]
    return "\n".join(out)


def tables(rows: Sequence[dict], *, wide: bool = False) -> list[Table]:
    """Every group's table, the larger runs of the same point first."""
    out = []
    groups = group_rows(rows)
    for g in sorted(groups, key=lambda g: (g.point, [-(b[1] or 0) for b in g.benchmarks], g.benchmarks)):
        t = build_table(g, groups[g], wide=wide)
        if t is not None:
            out.append(t)
    return out


def other_sizes(table: Table, all_tables: Sequence[Table]) -> list[str]:
    """A note naming the other item counts the same point was run at (each its own table)."""
    ns = sorted({t.group.n for t in all_tables if t.group.point == table.group.point and t.group != table.group})
    return [f"Also run at n={', n='.join(ns)} (separate table{'s' if len(ns) > 1 else ''}; never averaged)."] if ns \
        else []
