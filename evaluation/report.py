"""Reports from the results table: paper-shaped markdown tables, ratio-sweep curves, erase-vs-retain Pareto
plots and original-vs-edited image grids.

    python -m evaluation.report outputs/results.jsonl --out outputs/report

Rows come from experiments/ (one per run x variant x benchmark x metric, see experiments/results.py). A
variant is "original" (the unedited model, the paper's "SD" line), "edited" (the method's edit),
"random-<seed>" (the same-count random ablation control) or, for experiment=amplify_erased, "erased".
Tables are grouped by what produced their rows and reruns keep the latest row (evaluation.report_tables).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from cad.errors import UserError
from cad.io import atomic_write_bytes, atomic_write_text

from . import report_tables as rt
from .report_tables import latest  # noqa: F401  (part of this module's interface)

# Which key of a benchmark is "erase" and which "retain" for the Pareto plots, by metric suffix.
PARETO_PAIRS: tuple[tuple[str, str], ...] = (("acc_target", "acc_others"), ("lpips_erased", "lpips_others"))


class ResultsLineError(UserError, ValueError):
    """A line of results.jsonl that is no results row; the message names the file, the line and what is wrong."""


def load_results(path: str | os.PathLike) -> list[dict]:
    """All rows of a results.jsonl; a broken line is an error naming the line (never silently skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results table at {path}: run `python -m experiments.run` first, or pass the "
                                "results.jsonl under your outputs root (paths.outputs / $CAD_OUTPUTS)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ResultsLineError(f"{path} line {n}: not a JSON row ({err}); fix or delete that line") from err
            what = row_problem(row)
            if what:
                raise ResultsLineError(f"{path} line {n}: {what}; fix or delete that line")
            rows.append(row)
    return rows


# What the tables read from every row (experiments/results.py writes them all).
REQUIRED_FIELDS = ("benchmark", "metric", "concept", "method")


def row_problem(row) -> str | None:
    """Why a parsed results line cannot be a row of the tables (None when it can): hand-edited or foreign
    lines otherwise crash the report far from the line that caused it."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object (a results row is {{\"benchmark\": ..., \"metric\": ...}})"
    missing = [k for k in REQUIRED_FIELDS if row.get(k) in (None, "")]
    if missing:
        return f"the row lacks {', '.join(repr(k) for k in missing)} (every results row has {', '.join(REQUIRED_FIELDS)})"
    bad = [k for k in REQUIRED_FIELDS if not isinstance(row[k], str)]
    if bad:
        return ", ".join(f"{k} is {row[k]!r}, not a string" for k in bad)
    if "value" not in row:
        return "the row lacks 'value' (a number, or null for a metric with no items)"
    for key in ("value", "ratio"):
        v = row.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            return f"{key} is {v!r}, not a number (or null)"
    for key in ("protocol", "method_settings"):
        v = row.get(key)
        if v is not None and not isinstance(v, dict):
            return f"{key} is {v!r}, not a JSON object (or null)"
    return None


def markdown_tables(rows: Sequence[dict], metrics: Sequence[str] | None = None) -> str:
    """The main tables, one per group of rows that came from the same setup (evaluation.report_tables): the
    paper's Table 1 layout (a line per method and its settings, "SD" first, a column per concept and
    headline metric, the mean over concepts last) or, for experiment=amplify_erased, Table 6 (a line per
    erase method, base / erased / recalled per concept). Per-class and per-label keys are left out unless
    `metrics` asks for them (see wide_tables)."""
    if metrics is not None:
        rows = [r for r in rows if r["metric"] in metrics]
        found = rt.tables(rows) + rt.tables(rows, wide=True)
    else:
        found = rt.tables(rows)
    parts = [rt.render(t, notes=rt.other_sizes(t, found)) for t in found]
    return "\n\n".join(parts) + ("\n" if parts else "")


def wide_tables(rows: Sequence[dict]) -> str:
    """Per-class accuracies, per-label NudeNet counts, per-artist LPIPS: one table per group and concept."""
    parts = []
    for t in rt.tables(rows, wide=True):
        for concept in t.concepts:
            sub = dataclasses.replace(t, concepts=[concept])
            parts.append(rt.render(sub, title=f" · {concept} (per class / per label)"))
    return "\n\n".join(parts) + ("\n" if parts else "")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def sweep_series(rows: Sequence[dict]) -> dict[tuple, dict[str, list[tuple[float, float]]]]:
    """(group, method series, metric) -> {legend label: [(ratio, value)]} for every method swept over >= 2
    ratios: a line per concept, its random control beside it. The unedited level is under "<concept> · SD"."""
    out: dict[tuple, dict[str, list]] = {}
    for t in rt.tables(rows):
        if t.layout != "methods":
            continue
        for series in sorted({ln.series for ln in t.lines if ln.kind == "method"}):
            sweep = [ln for ln in t.lines if ln.series == series and ln.ratio is not None]
            if len({ln.ratio for ln in sweep}) < 2:
                continue
            controls = [ln for ln in t.lines if ln.kind == "random" and ln.series == f"random ↔ {series}"]
            for metric in t.metrics:
                lines: dict[str, list] = {}
                for concept in t.concepts:
                    for kind, sel in (("", sweep), (" (random)", controls)):
                        pts = sorted((ln.ratio, v) for ln in sel
                                     if ln.ratio and (v := t.cells.get((ln.label, None, concept, metric))) is not None)
                        if pts:
                            lines[f"{concept} · {series}{kind}"] = pts
                    base = t.cells.get(("SD", None, concept, metric))
                    if base is not None:
                        lines[f"{concept} · SD"] = [(0.0, base)]
                if any(len(v) > 1 for v in lines.values()):
                    out[(t.group, series, metric)] = lines
    return out


def sweep_curves(rows: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Metric against ratio (log x), a line per concept for the method and dashed for the random control;
    the unedited value as a dotted level. One PNG per (group, method, metric) with >= 2 ratios."""
    plt = _plt()
    written = []
    for (group, series, metric), lines in sorted(sweep_series(rows).items(), key=lambda kv: str(kv[0])):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        colors: dict[str, str] = {}
        for label, pts in lines.items():
            concept = label.split(" · ", 1)[0]
            color = colors.get(concept)
            if label.endswith(" · SD"):
                if color is not None:
                    ax.axhline(pts[0][1], ls=":", color=color, lw=1)
                continue
            style = "--x" if label.endswith("(random)") else "-o"
            drawn = ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, color=color)
            colors.setdefault(concept, drawn[0].get_color())
        ax.set_xscale("log")
        ax.set_xlabel("ratio of components ablated")
        ax.set_ylabel(metric)
        ax.set_title(f"{group.title()}\n{series}", fontsize=7)
        ax.legend(fontsize=6)
        name = f"sweep_{group.slug()}_{series}_{metric}"
        written.append(_save_fig(fig, Path(out_dir) / f"{_slug(name)}.png"))
    return written


def pareto_series(rows: Sequence[dict], pairs: Sequence[tuple[str, str]] = PARETO_PAIRS
                  ) -> dict[tuple, dict[str, list[tuple[float, float, float | None]]]]:
    """(group, benchmark, erase key, retain key) -> {legend label: [(erase, retain, ratio)]}: a line per
    (concept, method) through its settings (ratio order), a point for the concept's unedited model, never a
    concept, experiment, model or item count mixed into another's line or plot."""
    out: dict[tuple, dict[str, list]] = {}
    for t in rt.tables(rows):
        if t.layout != "methods":
            continue
        for erase_key, retain_key in pairs:
            benches = sorted({m.rsplit("/", 1)[0] for m in t.metrics if rt.short_metric(m) == erase_key})
            for bench in benches:
                ex, ry = f"{bench}/{erase_key}", f"{bench}/{retain_key}"
                if ry not in t.metrics:
                    continue
                lines: dict[str, list] = {}
                for concept in t.concepts:
                    for series in dict.fromkeys(ln.series for ln in t.lines):
                        pts = []
                        for ln in (x for x in t.lines if x.series == series):
                            x, y = t.cells.get((ln.label, None, concept, ex)), t.cells.get((ln.label, None, concept, ry))
                            if x is not None and y is not None:
                                pts.append((x, y, ln.ratio))
                        if pts:
                            lines[f"{concept} · {series}"] = sorted(pts, key=lambda p: (p[2] is None, p[2] or 0, p[0]))
                if lines:
                    out[(t.group, bench, erase_key, retain_key)] = lines
    return out


def pareto_plots(rows: Sequence[dict], out_dir: str | os.PathLike,
                 pairs: Sequence[tuple[str, str]] = PARETO_PAIRS) -> list[Path]:
    """Erase metric (x) against retain metric (y): one PNG per group (experiment, model, item count) and
    benchmark, a labelled line per (concept, method) through its settings, SD as a square per concept."""
    plt = _plt()
    written = []
    for (group, bench, erase_key, retain_key), lines in sorted(pareto_series(rows, pairs).items(),
                                                                key=lambda kv: str(kv[0])):
        fig, ax = plt.subplots(figsize=(5, 4))
        colors: dict[str, str] = {}
        for label, pts in lines.items():
            concept, series = label.split(" · ", 1)
            marker = "s" if series == "SD" else ("x" if series.startswith("random") else "o")
            ls = "--" if series.startswith("random") else "-"
            drawn = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ls=ls, label=label,
                            color=colors.get(concept), ms=5)
            colors.setdefault(concept, drawn[0].get_color())
            for x, y, ratio in pts:
                if ratio is not None and len(pts) > 1:
                    ax.annotate(f"{ratio:g}", (x, y), fontsize=5, xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel(f"{bench}/{erase_key}")
        ax.set_ylabel(f"{bench}/{retain_key}")
        ax.set_title(f"{group.title()}\nerase vs retain", fontsize=7)
        ax.legend(fontsize=6)
        name = f"pareto_{group.slug()}_{bench}"
        written.append(_save_fig(fig, Path(out_dir) / f"{_slug(name)}.png"))
    return written


def image_grid(columns: dict[str, str | os.PathLike], out: str | os.PathLike | None = None, *, n: int = 8,
               size: int = 128, ids: Sequence[str] | None = None) -> Image.Image:
    """Side-by-side grid: a row per variant (e.g. original, edited, random-0), the same item ids across rows.

    `columns` maps a row label to an image folder (the generation cache). Ids default to the first `n` that
    every folder has, so the rows always show the same prompts and seeds.
    """
    folders = {k: Path(v) for k, v in columns.items()}
    for label, folder in folders.items():
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder for {label!r} not found: {folder}")
    if ids is None:
        common = set.intersection(*({p.stem for p in f.glob("*.png")} for f in folders.values()))
        ids = sorted(common)[:n]
    if not ids:
        raise ValueError(f"no image ids shared by all of {sorted(folders)}: generate them first")
    pad = 14
    grid = Image.new("RGB", (size * len(ids), (size + pad) * len(folders)), "white")
    draw = ImageDraw.Draw(grid)
    for row, (label, folder) in enumerate(folders.items()):
        y = row * (size + pad)
        draw.text((2, y), label, fill="black")
        for col, item_id in enumerate(ids):
            im = Image.open(folder / f"{item_id}.png").convert("RGB").resize((size, size))
            grid.paste(im, (col * size, y + pad))
    if out is not None:
        import io

        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        atomic_write_bytes(out, buf.getvalue())
    return grid


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_report(results: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Tables, sweep curves and Pareto plots for a results table, gathered in <out_dir>/report.md."""
    rows = load_results(results)
    out_dir = Path(out_dir)
    curves = sweep_curves(rows, out_dir)
    paretos = pareto_plots(rows, out_dir)
    body = [f"# Results ({len(rows)} rows from {results})", "",
            "Each table holds the runs of one setup (model weights, benchmark items and count, protocol); runs "
            "of another size are their own table, never averaged in. A cell is the latest row of its point.", "",
            "## Tables", "", markdown_tables(rows)]
    wide = wide_tables(rows)
    if wide:
        body += ["## Per-class and per-label scores", "", wide]
    for title, files in (("Ratio sweeps", curves), ("Erase vs retain", paretos)):
        if files:
            body += [f"## {title}", ""] + [f"![{p.stem}]({p.name})" for p in files] + [""]
    return atomic_write_text(out_dir / "report.md", "\n".join(body))


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Markdown tables and plots from a cad results table.")
    parser.add_argument("results", nargs="?", default=os.environ.get("CAD_OUTPUTS", "outputs") + "/results.jsonl")
    parser.add_argument("--out", default=None, help="report folder (default: <results folder>/report)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.results).parent / "report"
    path = write_report(args.results, out)
    print(f"report written to {path}")
    return path


if __name__ == "__main__":
    from cad.errors import run_main

    run_main(main, hint="set HYDRA_FULL_ERROR=1 to see the traceback")  # input errors: alone, exit status 2
