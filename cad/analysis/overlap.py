"""Which concepts share components: Jaccard of top-x% sets, Spearman's rank correlation, generic vs unique."""

from __future__ import annotations

import torch

from cad.analysis.flat import flatten, top_set


def _vector(scores) -> torch.Tensor:
    return scores.double().reshape(-1) if isinstance(scores, torch.Tensor) else flatten(scores)


def jaccard(a, b, fraction: float = 0.01, sign: str = "positive") -> float:
    """|A ∩ B| / |A ∪ B| of the two top-`fraction` sets of `sign` (1 for identical scores)."""
    va, vb = _vector(a), _vector(b)
    if va.numel() != vb.numel():
        raise ValueError(f"the scores cover different spaces ({va.numel()} vs {vb.numel()} components)")
    sa, sb = top_set(va, fraction, sign), top_set(vb, fraction, sign)
    union = int((sa | sb).sum())
    return int((sa & sb).sum()) / union if union else float("nan")


def chance_jaccard(fraction: float) -> float:
    """The expected Jaccard of two independent uniform top-`fraction` sets: p / (2 - p)."""
    return fraction / (2 - fraction)


def _ranks(v: torch.Tensor) -> torch.Tensor:
    ranks = torch.empty_like(v)
    ranks[torch.argsort(v)] = torch.arange(v.numel(), dtype=v.dtype)
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation of alpha over the whole space (ties broken by position)."""
    ra, rb = _ranks(_vector(a)), _ranks(_vector(b))
    if ra.numel() != rb.numel():
        raise ValueError(f"the scores cover different spaces ({ra.numel()} vs {rb.numel()} components)")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den else float("nan")


def overlap_matrix(named: dict[str, object], fraction: float = 0.01, sign: str = "positive") -> dict:
    """{"names", "jaccard", "spearman"}: the two matrices over every pair of named scores (row-major lists)."""
    names = list(named)
    vectors = {n: _vector(named[n]) for n in names}
    jac = [[jaccard(vectors[a], vectors[b], fraction, sign) for b in names] for a in names]
    rho = [[1.0 if a == b else spearman(vectors[a], vectors[b]) for b in names] for a in names]
    return {"names": names, "fraction": fraction, "sign": sign, "jaccard": jac, "spearman": rho,
            "chance_jaccard": chance_jaccard(fraction)}


def generic_unique(named: dict[str, object], fraction: float = 0.01) -> dict:
    """Top-`fraction` positive components in every concept's set (generic) against those in exactly one
    (unique): counts, and for each concept the share of its set that is generic / unique to it."""
    sets = {n: top_set(_vector(s), fraction, "positive") for n, s in named.items()}
    stacked = torch.stack(list(sets.values()))
    hits = stacked.sum(0)
    generic = hits == len(sets)
    once = hits == 1
    per = {}
    for n, s in sets.items():
        size = int(s.sum())
        per[n] = {"n_top": size, "generic_share": int((s & generic).sum()) / size if size else 0.0,
                  "unique_share": int((s & once).sum()) / size if size else 0.0}
    return {"n_concepts": len(sets), "fraction": fraction, "n_generic": int(generic.sum()),
            "n_in_any": int((hits > 0).sum()), "n_unique": int(once.sum()), "per_concept": per}
