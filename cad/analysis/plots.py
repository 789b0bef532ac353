"""The analyses' figures, as PNG bytes (the caller writes them atomically): matplotlib's Agg backend only."""

from __future__ import annotations

import io


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def where_png(rows: list[dict], title: str) -> bytes:
    """Positive (up) and negative (down) attribution mass per group along depth, with the share of the top-x%
    components each group holds against a same-count random draw (the paper's Fig. 1 sketch, measured)."""
    plt = _plt()
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(rows)), 6), sharex=True)
    x = range(len(rows))
    ax.bar(x, [r["pos"] for r in rows], color="tab:red", label="positive α")
    ax.bar(x, [r["neg"] for r in rows], color="tab:blue", label="negative α")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("Σ α")
    ax.set_title(title)
    ax.legend(fontsize=7)
    w = 0.27
    bx.bar([i - w for i in x], [r["top_pos_share"] for r in rows], w, color="tab:red", label="top positive")
    bx.bar(list(x), [r["top_neg_share"] for r in rows], w, color="tab:blue", label="top negative")
    bx.bar([i + w for i in x], [r["random_pos_share"] for r in rows], w, color="0.6", label="random, same count")
    bx.set_ylabel("share of top-x% set")
    bx.set_xticks(list(x))
    bx.set_xticklabels([r["group"] for r in rows], rotation=70, ha="right", fontsize=7)
    bx.legend(fontsize=7)
    return _png(fig)


def heatmap_png(matrix: list[list[float]], rows: list[str], cols: list[str], title: str, *, cmap: str = "viridis",
                vmin: float | None = None, vmax: float | None = None, fmt: str = ".2f", label: str = "") -> bytes:
    """A labelled heat map (concepts x groups, or concepts x concepts), values written in the cells."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(cols) + 2), max(3, 0.4 * len(rows) + 1.5)))
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=7)
    if len(rows) * len(cols) <= 400:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=5, color="w")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def lorenz_png(curves: dict[str, tuple[list[float], list[float], float]], title: str) -> bytes:
    """Lorenz-style curves {label: (x, y, gini)}; the diagonal is mass spread evenly over every component."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for label, (x, y, g) in curves.items():
        ax.plot(x, y, lw=1, label=f"{label} (G={g:.2f})")
    ax.plot([0, 1], [0, 1], ":", color="gray", lw=1)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of components (top by α)")
    ax.set_ylabel("share of attribution mass")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=5, ncol=2)
    return _png(fig)


def ablation_png(curve: dict, title: str, ylabel: str) -> bytes:
    """Measured and predicted change of J when the top components are zeroed, against random ones."""
    plt = _plt()
    pts = curve["points"]
    x = [p["fraction"] for p in pts]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot(x, [p["measured"] for p in pts], "o-", color="tab:red", label="top, measured")
    ax.plot(x, [p["predicted"] for p in pts], "x--", color="tab:red", label="top, predicted (−Σα)")
    ax.plot(x, [p["random_measured"] for p in pts], "o-", color="0.5", label="random, measured")
    ax.plot(x, [p["random_predicted"] for p in pts], "x--", color="0.5", label="random, predicted")
    if pts and "gap" in pts[0]:  # the edited model's own concept gap (base prediction re-evaluated)
        ax.plot(x, [p["gap"] for p in pts], "s:", color="tab:purple", label="top, edited model's gap")
        ax.plot(x, [p["random_gap"] for p in pts], "s:", color="tab:green", label="random, edited model's gap")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_yscale("symlog", linthresh=max(1e-6, min([abs(p["predicted"]) for p in pts if p["predicted"]] or [1])))
    ax.set_xscale("log")
    ax.set_xlabel("share of components zeroed")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)
    return _png(fig)


def stability_png(rows: list[dict], title: str) -> bytes:
    """Spearman and Jaccard with the reference estimate against K, one line per estimator (mean over seeds)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for metric, ax in zip(("spearman", "jaccard"), axes):
        for est in sorted({r["estimator"] for r in rows}):
            ks = sorted({r["k"] for r in rows if r["estimator"] == est})
            vals = [[r[metric] for r in rows if r["estimator"] == est and r["k"] == k] for k in ks]
            ax.plot(ks, [sum(v) / len(v) for v in vals], "o-", label=est)
            for k, v in zip(ks, vals):
                ax.scatter([k] * len(v), v, s=6, color="0.5")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("K (samples per timestep)")
        ax.set_ylabel(f"{metric} with the reference")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)
