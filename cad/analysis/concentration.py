"""How concentrated a concept's attribution is: Lorenz-style curves with a Gini-style number, and the causal
check that zeroes the top components over a grid of sizes against same-count random ones (claims H1, H2)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cad.analysis.flat import count_of, flatten, random_set, top_set, unflatten


def lorenz(scores, sign: str = "positive", points: int = 201) -> tuple[list[float], list[float]]:
    """(x, y): the cumulative share y of the positive (or negative) attribution mass held by the top share x
    of all components, sorted by alpha; `points` samples of the curve from (0, 0) to (1, 1)."""
    mass = _mass(scores, sign)
    total = float(mass.sum())
    n = mass.numel()
    if total <= 0:
        return [0.0, 1.0], [0.0, 0.0]
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.sort(mass, descending=True).values.cumsum(0)]) / total
    idx = torch.linspace(0, n, points).round().long()
    return [float(i) / n for i in idx], [float(cum[i]) for i in idx]


def gini(scores, sign: str = "positive") -> float:
    """2 * (area under the Lorenz-style curve) - 1, exact over every component: 0 when the mass is spread
    evenly over all components, 1 - f when it sits evenly on a share f of them, -> 1 for one component."""
    mass = _mass(scores, sign)
    total = float(mass.sum())
    n = mass.numel()
    if total <= 0:
        return float("nan")
    cum = torch.sort(mass, descending=True).values.cumsum(0) / total
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), cum[:-1]])
    area = float(((prev + cum) / 2).sum()) / n  # trapezoids of width 1/n
    return 2 * area - 1


def _mass(scores, sign: str) -> torch.Tensor:
    v = scores if isinstance(scores, torch.Tensor) else flatten(scores)
    v = v.double().reshape(-1)
    if sign == "positive":
        return v.clamp(min=0)
    if sign == "negative":
        return (-v).clamp(min=0)
    raise ValueError(f"sign must be 'positive' or 'negative', got {sign!r}")


def ablation_curve(scores, fractions: list[float], measure: Callable[[object], float], *, sign: str = "positive",
                   seed: int = 0, also: dict[str, Callable[[object], float]] | None = None) -> dict:
    """Zero the top-`fraction` components of `sign` (ranked over the whole space) for each fraction, and as
    many uniformly random ones, and measure the objective with `measure(edit)` (edit None: the original).

    Returns {"original": J, "points": [{fraction, n, predicted, measured, random_predicted, random_measured}]}
    with predicted = -sum(alpha of the zeroed weights) (first order) and measured = J(edited) - J(original).
    H1 (sign positive, J_erase): measured < random_measured. H2 (negative, J_amplify): measured > random.
    `also` {key: measure}: other quantities measured on the same edits, as `<key>` / `random_<key>` changes
    (e.g. the edited model's own concept gap, measure_erase_objective(base_target="edited"))."""
    from cad.edits import Edit

    v = flatten(scores)
    made_for = (getattr(scores, "meta", None) or {}).get("denoiser_identity")
    original = float(measure(None))
    also = dict(also or {})
    originals = {k: float(m(None)) for k, m in also.items()}
    points = []
    for i, fraction in enumerate(fractions):
        top = top_set(v, fraction, sign)
        count = int(top.sum())
        rand = random_set(v.numel(), count, seed + i)
        row = {"fraction": float(fraction), "n": count, "n_requested": count_of(v.numel(), fraction)}
        for key, mask in (("", top), ("random_", rand)):
            masks = unflatten(mask, scores)
            row[f"{key}predicted"] = -float(v[mask].sum())
            if count == 0:
                row.update({f"{key}measured": 0.0, **{f"{key}{k}": 0.0 for k in also}})
                continue
            edit = Edit({n: m.clone() for n, m in masks.items()},
                        {"kind": "analysis_" + (key or "top").rstrip("_"), "fraction": fraction, "sign": sign,
                         "made_for": made_for})
            row[f"{key}measured"] = float(measure(edit)) - original
            for k, m in also.items():
                row[f"{key}{k}"] = float(m(edit)) - originals[k]
        points.append(row)
    return {"original": original, "sign": sign, "points": points, "also_original": originals}
