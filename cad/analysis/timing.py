"""When in the trajectory a concept's components act: timestep-bucket attributions per group, and overlaps."""

from __future__ import annotations

from cad.analysis.flat import flatten
from cad.analysis.overlap import jaccard


def bucket_profile(partials: list, groups: dict[str, list[str]]) -> list[dict]:
    """One row per group: for each bucket b, `net` (sum of that bucket's alpha over the group) and `share`
    (the bucket's part of the group's sum over buckets of |alpha|: which timesteps carry the group)."""
    rows = []
    for group, names in groups.items():
        nets = [float(flatten(p, names).sum()) for p in partials]
        mags = [float(flatten(p, names).abs().sum()) for p in partials]
        total = sum(mags)
        rows.append({"group": group, "net": nets, "share": [m / total if total else 0.0 for m in mags]})
    return rows


def bucket_overlap(partials: list, full, fraction: float = 0.01) -> dict:
    """Top-`fraction` positive Jaccard between every pair of buckets, and of each bucket with the full alpha."""
    pairs = [[jaccard(a, b, fraction) for b in partials] for a in partials]
    return {"fraction": fraction, "pairs": pairs, "with_full": [jaccard(p, full, fraction) for p in partials]}
