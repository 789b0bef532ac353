"""select_components(): which weights to zero, given attribution scores, a ratio, a sign and a granularity.

The `row` rule follows the reference implementation (mail-research/CAD-attribution4diffusion,
benchmarking/utils.py, `ablate_model`): with k = int(ratio * number of columns),
- positive: ablate the entries among the k largest of their row that have alpha > 0;
- negative: ablate the entries among the k smallest of their row that have alpha < 0;
- both:     ablate the k largest and the k smallest of each row, whatever their sign.
One deliberate difference: the reference keeps alpha >= 0 (<= 0); here alpha = 0 is neither positive nor
negative, so a weight whose removal changes nothing to first order is never selected (with a base prompt equal
to the prompt J_erase is 0 everywhere, and ">= 0" ablated thousands of weights on ties). The selection may
therefore ablate fewer than k entries of a row, or none.
`tensor` applies the rule to each flattened tensor (k = int(ratio * numel); the reference's
`flatten_pruning`), `global` to all tensors ranked together (k = int(ratio * total)). Tensors that are not
2-D are ranked by `row` over their first dimension (1-D and scalars as one row).

The reference sorts every row (argsort); torch.topk on float32 finds the same k entries (up to the order
of exact ties) in a fraction of the time, and the masks are built with one scatter per tensor.
Because k is floored per row, the real fraction ablated differs from the nominal ratio: see count_ablated.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger("cad.selection")

SIGNS = ("positive", "negative", "both")
GRANULARITIES = ("row", "tensor", "global")


def _check(scores, ratio, sign, granularity) -> dict[str, torch.Tensor]:
    scores = getattr(scores, "scores", scores)  # AttributionScores or a plain dict
    if not isinstance(scores, dict) or not scores:
        raise ValueError("scores must be a non-empty dict name -> tensor (or AttributionScores)")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (0.0 <= ratio <= 1.0):
        raise ValueError(f"ratio must be a number in [0, 1] (fraction of weights per row/tensor), got {ratio!r}")
    if sign not in SIGNS:
        raise ValueError(f"unknown sign {sign!r}; use one of {SIGNS}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; use one of {GRANULARITIES}")
    out = {}
    for name, s in scores.items():
        if not isinstance(s, torch.Tensor) or not (s.is_floating_point()):
            raise TypeError(f"score {name!r} must be a float tensor, got {type(s).__name__}")
        s = s.detach().float()
        if not torch.isfinite(s).all():
            raise ValueError(f"score {name!r} holds NaN or inf; recompute the attribution (float32 model?)")
        out[name] = s
    return out


def _as_rows(s: torch.Tensor) -> torch.Tensor:
    return s.reshape(s.shape[0], -1) if s.ndim >= 2 else s.reshape(1, -1)


def _select_rows(a: torch.Tensor, k: int, sign: str) -> torch.Tensor:
    """Boolean mask (same shape as the 2-D `a`) of the rule above with k per row."""
    mask = torch.zeros(a.shape, dtype=torch.bool, device=a.device)
    k = min(k, a.shape[1])
    if k <= 0:
        return mask
    if sign in ("positive", "both"):
        vals, idx = torch.topk(a, k, dim=1, largest=True, sorted=False)
        mask.scatter_(1, idx, vals > 0 if sign == "positive" else torch.ones_like(vals, dtype=torch.bool))
    if sign in ("negative", "both"):
        vals, idx = torch.topk(a, k, dim=1, largest=False, sorted=False)
        low = torch.zeros_like(mask)
        low.scatter_(1, idx, vals < 0 if sign == "negative" else torch.ones_like(vals, dtype=torch.bool))
        mask |= low
    return mask


def select_components(scores, ratio: float, sign: str = "positive",
                      granularity: str = "row") -> dict[str, torch.Tensor]:
    """Masks name -> bool tensor (True = ablated) of the weights to zero; see the module docstring.

    `scores` is a dict name -> float tensor or an AttributionScores. Erase: sign="positive" on J_erase
    scores; amplify: sign="negative" on J_amplify scores. "positive" picks only strictly positive scores and
    "negative" only strictly negative ones: alpha = 0 is never selected by either.
    """
    scores = _check(scores, ratio, sign, granularity)
    if granularity == "row":
        empty = [n for n, s in scores.items() if int(ratio * _as_rows(s).shape[1]) == 0]
        if ratio > 0 and empty:
            # k is floored per row: a narrow tensor silently keeps every weight, so say it once, with the fix
            widest = max(_as_rows(scores[n]).shape[1] for n in empty)
            log.warning("%d of %d tensors got k = int(ratio x columns) = 0 at granularity=row (ratio %g, at most "
                        "%d columns, e.g. %s): nothing is ablated in them; use granularity=tensor or a higher ratio "
                        "(>= %.3g)", len(empty), len(scores), ratio, widest, empty[0], 1.0 / widest)
        return {n: _select_rows(_as_rows(s), int(ratio * _as_rows(s).shape[1]), sign).reshape(s.shape)
                for n, s in scores.items()}
    if granularity == "tensor":
        return {n: _select_rows(s.reshape(1, -1), int(ratio * s.numel()), sign).reshape(s.shape)
                for n, s in scores.items()}
    flat = torch.cat([s.reshape(-1) for s in scores.values()]).unsqueeze(0)
    mask = _select_rows(flat, int(ratio * flat.shape[1]), sign)[0]
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = mask[start:start + s.numel()].reshape(s.shape)
        start += s.numel()
    return out


def count_ablated(masks: dict[str, torch.Tensor]) -> dict:
    """Real counts: n_ablated, n_total, fraction, and per tensor {name: {"ablated", "total"}}."""
    per = {n: {"ablated": int(m.sum()), "total": m.numel()} for n, m in masks.items()}
    n_abl = sum(v["ablated"] for v in per.values())
    n_tot = sum(v["total"] for v in per.values())
    return {"n_ablated": n_abl, "n_total": n_tot, "fraction": n_abl / n_tot if n_tot else math.nan,
            "per_tensor": per}


def random_masks(like: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The random-ablation control: as many ablated entries per tensor as `like`, placed uniformly."""
    gen = torch.Generator("cpu").manual_seed(seed)
    out = {}
    for name in sorted(like):
        m = like[name]
        count = int(m.sum())
        mask = torch.zeros(m.numel(), dtype=torch.bool)
        mask[torch.randperm(m.numel(), generator=gen)[:count]] = True
        out[name] = mask.reshape(m.shape)
    return {n: out[n] for n in like}
