"""Where a concept's components sit: mass and top-x% shares per group of the denoiser, against chance."""

from __future__ import annotations

import torch

from cad.analysis.flat import flatten, random_set, top_set


def group_mass(scores, groups: dict[str, list[str]], fraction: float = 0.01, seed: int = 0) -> list[dict]:
    """One row per group (in the order given, forward order from Backbone.group_names):
    n (weights), pos / neg (sum of positive / negative alpha), pos_share / neg_share (of the space's total),
    top_pos_share / top_neg_share (share of the space's top-`fraction` positive / negative components that
    fall in the group) and random_pos_share / random_neg_share (the same for a same-count uniform draw:
    what the top shares are compared with; its expectation is the group's share of weights, `weight_share`)."""
    names = [n for members in groups.values() for n in members]
    v = flatten(scores, names)
    pos, neg = v.clamp(min=0), v.clamp(max=0)
    total_pos, total_neg = float(pos.sum()), float(neg.sum())
    top = {s: top_set(v, fraction, s) for s in ("positive", "negative")}
    rand = {s: random_set(v.numel(), int(top[s].sum()), seed + i) for i, s in enumerate(("positive", "negative"))}
    rows, start = [], 0
    sizes = {g: sum(getattr(scores, "scores", scores)[n].numel() for n in members) for g, members in groups.items()}
    for group, size in sizes.items():
        sl = slice(start, start + size)
        start += size

        def share(mask: torch.Tensor, sl: slice = sl) -> float:
            total = int(mask.sum())
            return int(mask[sl].sum()) / total if total else 0.0

        rows.append({"group": group, "n": size, "weight_share": size / v.numel(),
                     "pos": float(pos[sl].sum()), "neg": float(neg[sl].sum()),
                     "pos_share": float(pos[sl].sum()) / total_pos if total_pos else 0.0,
                     "neg_share": float(neg[sl].sum()) / total_neg if total_neg else 0.0,
                     "top_pos_share": share(top["positive"]), "top_neg_share": share(top["negative"]),
                     "random_pos_share": share(rand["positive"]), "random_neg_share": share(rand["negative"])})
    return rows
