"""How many samples an attribution needs: estimates at several seeds and K against a reference estimate."""

from __future__ import annotations

from cad.analysis.overlap import jaccard, spearman


def stability_table(estimates: dict[tuple, object], reference, fraction: float = 0.01) -> list[dict]:
    """One row per estimate, keyed (estimator, seed, K): its Spearman correlation and top-`fraction` positive
    Jaccard with `reference` (an estimate with the largest K and its own seed, so no trajectory is shared)."""
    rows = []
    for (estimator, seed, k), s in sorted(estimates.items(), key=lambda kv: (str(kv[0][0]), kv[0][2], kv[0][1])):
        rows.append({"estimator": estimator, "seed": int(seed), "k": int(k), "spearman": spearman(s, reference),
                     "jaccard": jaccard(s, reference, fraction)})
    return rows


def settle_k(rows: list[dict], estimator: str = "trajectory", threshold: float = 0.9) -> int | None:
    """The smallest K from which the mean Spearman over seeds stays >= threshold (None: never)."""
    ks = sorted({r["k"] for r in rows if r["estimator"] == estimator})
    means = {k: sum(r["spearman"] for r in rows if r["estimator"] == estimator and r["k"] == k)
             / max(1, sum(1 for r in rows if r["estimator"] == estimator and r["k"] == k)) for k in ks}
    for i, k in enumerate(ks):
        if all(means[j] >= threshold for j in ks[i:]):
            return k
    return None
