"""Retain-aware ranking: prefer weights that matter for the target concept and little for concepts to keep.

CAD-Erase ranks weights by the target's alpha alone. Where the target shares weights with concepts that must
survive, its top alpha include those shared weights and the edit takes the neighbours with it. On the toy
world this is the rule rather than the exception: erasing "red" with plain CAD-Erase also removes yellow,
magenta and blue (the model renders every colour through the same few channels), erasing "striped" removes
"dotted".

`retain_ranking` divides each alpha by the retain concepts' attribution magnitude at the same weight,

    s_i = alpha_i / (R_i + eps_i),   R_i = reduce over retain concepts r of |alpha_r,i|,
    eps_i = eps * mean |alpha| of the tensor,

the forget/retain importance ratio of Selective Synaptic Dampening (Foster et al., AAAI 2024), with
attributions as importances. The sign of alpha is kept, so the result feeds `select_components` for CAD-Erase
(sign="positive") and CAD-Amplify (sign="negative") alike. The output ranks weights; it is not alpha, so it
refuses `predicted_change` (use the target's own scores for first-order predictions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cad.scores import AttributionScores, ScoresMismatchError

REDUCES = ("mean", "max")


def retain_importance(retain: Sequence[AttributionScores], reduce: str = "mean") -> dict[str, torch.Tensor]:
    """R_i per tensor: the mean (or max) over the retain concepts of |alpha|."""
    if reduce not in REDUCES:
        raise ValueError(f"unknown reduce {reduce!r}; use one of {REDUCES}")
    if not retain:
        raise ValueError("retain_importance needs the scores of at least one concept to retain")
    out = {}
    for name in retain[0].scores:
        stack = torch.stack([r.scores[name].abs() for r in retain])
        out[name] = stack.mean(0) if reduce == "mean" else stack.amax(0)
    return out


def _check_compatible(target: AttributionScores, retain: Sequence[AttributionScores]) -> None:
    fp = target.meta.get("unet_fingerprint")
    for r in retain:
        if set(r.scores) != set(target.scores):
            raise ScoresMismatchError(
                f"retain scores of {r.meta.get('concept')!r} cover other tensors than the target's "
                f"({len(r.scores)} vs {len(target.scores)}); attribute every concept in the same space")
        for name, s in r.scores.items():
            if s.shape != target.scores[name].shape:
                raise ScoresMismatchError(f"retain score {name!r} has shape {tuple(s.shape)}, the target's "
                                          f"{tuple(target.scores[name].shape)}; attribute both on the same model")
        if fp is not None and r.meta.get("unet_fingerprint") not in (None, fp):
            raise ScoresMismatchError(
                f"retain scores of {r.meta.get('concept')!r} were computed on another UNet (fingerprint "
                f"{r.meta.get('unet_fingerprint')} vs {fp}); attribute every concept on the same model")


def retain_ranking(target: AttributionScores, retain: Sequence[AttributionScores], *, reduce: str = "mean",
                   eps: float = 1e-3, names: Sequence[str] | None = None) -> AttributionScores:
    """The target's alpha divided by the retain concepts' importance (see the module doc); meta records the
    retain concepts (`names`, default: each scores' concept prompt), `reduce` and `eps`, so cached edits made
    from it are named apart from plain CAD ones."""
    if not isinstance(target, AttributionScores):
        raise TypeError(f"target must be AttributionScores, got {type(target).__name__}")
    retain = list(retain)
    if eps <= 0:
        raise ValueError(f"eps must be > 0 (it keeps weights no retain concept uses finite), got {eps}")
    if target.meta.get("retain"):
        raise ValueError("target scores are already a retain ranking; pass the concept's own attribution scores")
    if names is not None and len(names) != len(retain):
        raise ValueError(f"{len(names)} names for {len(retain)} retain scores; give one name per concept")
    _check_compatible(target, retain)
    importance = retain_importance(retain, reduce)
    ranked = {}
    for name, alpha in target.scores.items():
        floor = eps * alpha.abs().mean().clamp_min(torch.finfo(torch.float32).tiny)
        ranked[name] = alpha / (importance[name] + floor)
    concepts = list(names) if names is not None else [r.meta.get("concept") for r in retain]
    meta = {**target.meta, "retain": {"concepts": concepts, "reduce": reduce, "eps": eps,
                                      "keys": [r.key for r in retain]}}
    return AttributionScores(ranked, meta)
