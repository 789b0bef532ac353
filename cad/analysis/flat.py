"""One vector over a component space: the analyses rank components across tensors, so they work on the
concatenation of every tensor (in the scores' own name order) and map selections back per tensor."""

from __future__ import annotations

import torch


def _tensors(scores) -> dict[str, torch.Tensor]:
    scores = getattr(scores, "scores", scores)
    if not isinstance(scores, dict) or not scores:
        raise ValueError("scores must be AttributionScores or a non-empty dict name -> tensor")
    return scores


def flatten(scores, names: list[str] | None = None) -> torch.Tensor:
    """All alpha of `names` (default: the scores' order) as one float64 vector (sums of ~1e8 terms stay exact
    enough to compare groups)."""
    t = _tensors(scores)
    names = list(t) if names is None else names
    missing = [n for n in names if n not in t]
    if missing:
        raise KeyError(f"{len(missing)} tensors have no score (e.g. {missing[0]!r}); the scores cover another space")
    return torch.cat([t[n].detach().reshape(-1).double() for n in names])


def unflatten(vector: torch.Tensor, scores) -> dict[str, torch.Tensor]:
    """Split a vector over the space back into tensors shaped like `scores` (inverse of flatten)."""
    out, start = {}, 0
    for name, s in _tensors(scores).items():
        out[name] = vector[start:start + s.numel()].reshape(s.shape)
        start += s.numel()
    if start != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, the scores {start}")
    return out


def count_of(n: int, fraction: float) -> int:
    """The number of components a top-`fraction` set holds: round(fraction * n), at least 1."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    return max(1, round(fraction * n))


def top_set(vector: torch.Tensor, fraction: float, sign: str = "positive") -> torch.Tensor:
    """Bool mask of the model's top-`fraction` components by alpha (positive: largest; negative: most negative),
    keeping only those of that sign (a space with few positive alpha yields a smaller set)."""
    if sign not in ("positive", "negative"):
        raise ValueError(f"sign must be 'positive' or 'negative', got {sign!r}")
    v = vector if sign == "positive" else -vector
    k = count_of(v.numel(), fraction)
    idx = torch.topk(v, k, sorted=False).indices
    mask = torch.zeros(v.numel(), dtype=torch.bool)
    mask[idx] = True
    return mask & (v > 0)


def random_set(n: int, count: int, seed: int) -> torch.Tensor:
    """Bool mask of `count` of n components drawn uniformly without replacement (the random control)."""
    gen = torch.Generator("cpu").manual_seed(seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[:count]] = True
    return mask
