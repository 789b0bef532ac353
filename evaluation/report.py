"""Reports from the results table: paper-shaped markdown tables, ratio-sweep curves, erase-vs-retain Pareto
plots and original-vs-edited image grids.

    python -m evaluation.report outputs/results.jsonl --out outputs/report

Rows come from experiments/ (one per run x variant x benchmark x metric, see experiments/results.py). A
variant is "original" (the unedited model, the paper's "SD" column), "edited" (the method's edit) or
"random-<seed>" (the same-count random ablation control). Reruns of the same point keep the latest row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from cad.io import atomic_write_bytes, atomic_write_text

# Which key of a benchmark is "erase" and which "retain" for the Pareto plots, by metric suffix.
PARETO_PAIRS: tuple[tuple[str, str], ...] = (("acc_target", "acc_others"),)


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
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {n}: not a JSON row ({err}); remove or repair that line") from err
    return rows


def _point(row: dict) -> tuple:
    return (row.get("experiment"), row["model"], row["concept"], row["method"], row.get("variant", "edited"),
            row.get("ratio"), row.get("sign"), row.get("granularity"), tuple(row.get("retain") or ()),
            row["benchmark"], row["metric"])


def latest(rows: Iterable[dict]) -> list[dict]:
    """One row per sweep point and metric: the last one written (a rerun supersedes the old number)."""
    out: dict[tuple, dict] = {}
    for r in rows:
        out[_point(r)] = r
    return list(out.values())


def column_label(row: dict) -> str:
    """Column group of a row in the paper's layout: SD (unedited), <method>[+retain]@<ratio>, random@<ratio>."""
    variant = row.get("variant", "edited")
    if variant == "original" or row["method"] == "none":
        return "SD"
    ratio = row.get("ratio")
    suffix = f"@{ratio:g}" if isinstance(ratio, int | float) else ""
    if variant.startswith("random"):
        return f"random{suffix}"
    return f"{row['method']}{'+retain' if row.get('retain') else ''}{suffix}"


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def _short(metric: str) -> str:
    return metric.split("/", 1)[1] if "/" in metric else metric


def markdown_tables(rows: Sequence[dict], metrics: Sequence[str] | None = None) -> str:
    """One table per (experiment, model, benchmark): a row per concept, a column per (variant, metric).

    With Imagenette rows this is the paper's Table 1 (acc_target / acc_others per erased class, SD vs CAD);
    random-control seeds are averaged. Per-class keys (`acc/<class>`) are left out unless asked for.
    """
    rows = latest(rows)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if metrics is None and "/acc/" in r["metric"]:
            continue
        if metrics is not None and r["metric"] not in metrics:
            continue
        groups[(r.get("experiment") or "-", r["model"], r["benchmark"])].append(r)
    parts = []
    for (exp, model, bench), grp in sorted(groups.items()):
        cells: dict[tuple, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
        columns: dict[tuple, None] = {}
        for r in grp:
            col = (column_label(r), _short(r["metric"]))
            columns[col] = None
            if r["value"] is not None:
                cells[r["concept"]][col].append(float(r["value"]))
        cols = sorted(columns, key=lambda c: (c[0] != "SD", c[0].startswith("random"), c[0], c[1]))
        arrows = {(column_label(r), _short(r["metric"])): r.get("higher_is_better") for r in grp}
        head = [f"{lab} {m}{_arrow(arrows.get((lab, m)))}" for lab, m in cols]
        lines = [f"### {exp} · {model} · {bench}", "", "| concept | " + " | ".join(head) + " |",
                 "|---|" + "---|" * len(cols)]
        for concept in sorted(cells):
            vals = [cells[concept].get(c) for c in cols]
            lines.append(f"| {concept} | " + " | ".join(_fmt(sum(v) / len(v)) if v else "–" for v in vals) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + ("\n" if parts else "")


def _arrow(hib: bool | None) -> str:
    return "" if hib is None else (" ↑" if hib else " ↓")


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


def sweep_curves(rows: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Metric against ratio (log x), a line per concept for the method and dashed for the random control;
    the unedited value as a dotted level. One PNG per (model, method, benchmark metric) with >= 2 ratios."""
    plt = _plt()
    rows = [r for r in latest(rows) if r["value"] is not None and "/acc/" not in r["metric"]]
    by_plot: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["method"] != "none":
            by_plot[(r["model"], r["method"], r["metric"])].append(r)
    originals = {(r["model"], r["concept"], r["metric"]): r["value"] for r in rows
                 if r.get("variant") == "original" or r["method"] == "none"}
    written = []
    for (model, method, metric), grp in sorted(by_plot.items()):
        ratios = {r["ratio"] for r in grp if r.get("variant") != "original" and r.get("ratio")}
        if len(ratios) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for concept in sorted({r["concept"] for r in grp}):
            for kind, style in (("edited", "-o"), ("random", "--x")):
                pts = defaultdict(list)
                for r in grp:
                    v = r.get("variant", "edited")
                    if r["concept"] == concept and r.get("ratio") and (v == kind or v.startswith(kind + "-")):
                        pts[r["ratio"]].append(r["value"])
                if pts:
                    xs = sorted(pts)
                    line = ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], style,
                                   label=f"{concept} ({method if kind == 'edited' else 'random'})")
                    base = originals.get((model, concept, metric))
                    if base is not None and kind == "edited":
                        ax.axhline(base, ls=":", color=line[0].get_color(), lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("ratio of components ablated")
        ax.set_ylabel(metric)
        ax.set_title(f"{model} · {method}")
        ax.legend(fontsize=6)
        written.append(_save_fig(fig, Path(out_dir) / f"sweep_{model}_{method}_{_slug(metric)}.png"))
    return written


def pareto_plots(rows: Sequence[dict], out_dir: str | os.PathLike,
                 pairs: Sequence[tuple[str, str]] = PARETO_PAIRS) -> list[Path]:
    """Erase (x, lower is better when erasing) against retain (y) per sweep point; one PNG per model and
    benchmark that has both keys of a pair, points labelled by ratio, SD and random marked apart."""
    plt = _plt()
    rows = [r for r in latest(rows) if r["value"] is not None]
    written = []
    for erase_key, retain_key in pairs:
        pts: dict[tuple, dict] = defaultdict(dict)
        for r in rows:
            short = _short(r["metric"])
            if short in (erase_key, retain_key):
                bench_key = r["metric"].rsplit("/", 1)[0] if "/" in r["metric"] else r["benchmark"]
                key = (r["model"], bench_key, r["concept"], column_label(r), r.get("run_id"))
                pts[key][short] = r["value"]
        by_plot: dict[tuple, list] = defaultdict(list)
        for (model, bench, concept, label, _), vals in pts.items():
            if erase_key in vals and retain_key in vals:
                by_plot[(model, bench)].append((concept, label, vals[erase_key], vals[retain_key]))
        for (model, bench), points in sorted(by_plot.items()):
            fig, ax = plt.subplots(figsize=(4.5, 4))
            for label in sorted({p[1] for p in points}):
                sel = [p for p in points if p[1] == label]
                marker = "s" if label == "SD" else ("x" if label.startswith("random") else "o")
                ax.scatter([p[2] for p in sel], [p[3] for p in sel], marker=marker, label=label, s=24)
            ax.set_xlabel(f"{bench}/{erase_key}")
            ax.set_ylabel(f"{bench}/{retain_key}")
            ax.set_title(f"{model}: erase vs retain")
            ax.legend(fontsize=6)
            written.append(_save_fig(fig, Path(out_dir) / f"pareto_{model}_{_slug(bench)}.png"))
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
    body = [f"# Results ({len(rows)} rows from {results})", "", markdown_tables(rows)]
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
    main()
