"""RECE, Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024): UCE, then epochs that each derive the
embedding which best regenerates the erased concept in closed form and erase it too; a weight edit.

Follows CharlesGong12/RECE @ 403a67fd86dce6c124b88798340e001e625b28c9 (`train.py`, `train_object.py`,
`train_artists.py`, `erase_methods/uce.py:edit_model_adversarial`,
`utils/embedding_calculation/close_form_emb.py:close_form_emb_regzero`, the README's "--emb_computing
close_regzero" setting); our own implementation of what that code computes. The starting model is UCE with
its own settings (cad.methods.uce, the reference's `erase_methods/train_uce.py`, whose retain set is [""] plus
the preserve texts). With W⁰_l the original and W_l the current projections (every attn2.to_k / attn2.to_v),
each epoch:

1. adversarial embedding, per row of the erase text's full context c (T, d):
       c' = argmin Σ_l ||W_l c' - W⁰_l c||² + reg ||c'||²  =  (Σ_l W_lᵀW_l + reg I)⁻¹ (Σ_l W_lᵀ W⁰_l) c
   (linear solve, float64): the embedding whose K/V under the edited model best match the original model's
   K/V of the concept;
2. re-edit with the UCE closed form from the *current* weights: erase keys = all T rows of c', targets W_l g
   (g: the guide's full context, row-aligned), the retain set below (full sequences), with RECE's
   λ (`rece_lamb`), erase_scale and `rece_preserve_scale` (each retain text weighted by it).

The re-edits' retain set (`rece_retain`) differs between the reference's scripts. train.py (nudity, unsafe)
retains " " once per erase text (`retain_texts = [' ' for _ in old_texts]`), so the preserve weight grows with
the number of concepts erased together (11 for its I2P categories): "per_concept". train_object.py and
train_artists.py retain [""] + the preserve texts once: "once". The default follows the script a kind's other
defaults come from (nudity, unsafe, toy_color and other kinds: per_concept; artist, object, toy_style, toy_shape:
once); with one erase text and no preserve texts both give the same edit (" " and "" tokenize alike).
train.py's own preserve list is unusable (it samples characters of the argument string); here per_concept
appends the preserve texts after the per-concept " " rows.

The concept gap recorded per epoch (the reference computes none; it validates on generated images) is
RECE's re-edit objective on its own adversarial embedding: sqrt Σ_l ||W_l c' - W_l g||² before the re-edit
(`gap_before`) and with the re-edited weights (`gap_after`), both divided by the original model's concept-to-
guide distance sqrt Σ_l ||W⁰_l c - W⁰_l g||². `attack_residual` is step 1's fit, sqrt Σ_l ||W_l c' - W⁰_l c||²
over sqrt Σ_l ||W⁰_l c||² (how well the best embedding still regenerates the concept's K/V; it grows as the
erasure hardens). The reference keeps the epoch with the best validation score; here the last epoch is the
edit and info holds every epoch's numbers.

Defaults: rece_lamb 0.1, rece_preserve_scale 0.1 (README: "for all concepts λ1=0.1 and λ2=0.1"), erase_scale 1;
epochs / reg by concept kind, from its scripts: nudity 3 / 0.1 (`scripts/nudity.sh`, train.py), unsafe (I2P
categories) 2 / 0.1, artists 1 / 1e-3 (`scripts/art.sh`), objects 1 / 1e-3 (`train_object.py`'s default, used
for Church and Garbage Truck; the README uses 1e-1 for English Springer, Golf Ball and Parachute: set
`regular_scale`). Toy kinds take their stand-in's: toy_color (nudity's stand-in) 3 / 0.1, toy_style (artists')
1 / 1e-3, toy_shape (objects') 1 / 1e-3; any other kind train.py's argparse defaults 3 / 0.1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from cad.methods.base import MethodConfigError, MethodContext, MethodOutput, check_choice, check_positive
from cad.methods.uce import UCE, embed, kv_distance, kv_norm, uce_solve

# kind -> (epochs, regular_scale) of the reference scripts (see the module doc).
FAMILY_DEFAULTS = {
    "nudity": (3, 0.1),
    "unsafe": (2, 0.1),
    "artist": (1, 1e-3),
    "object": (1, 1e-3),
    "toy_color": (3, 0.1),
    "toy_style": (1, 1e-3),
    "toy_shape": (1, 1e-3),
}
OTHER_DEFAULTS = (3, 0.1)
RETAIN_RULES = ("per_concept", "once")
# Kinds whose reference script (train_object.py, train_artists.py) retains [""] + preserve once; every other kind
# follows train.py (" " once per erase text).
RETAIN_ONCE_KINDS = ("artist", "object", "toy_style", "toy_shape")


def adversarial_map(current: dict[str, torch.Tensor], original: dict[str, torch.Tensor],
                    regular_scale: float) -> torch.Tensor:
    """M (d, d) with c' = c Mᵀ row-wise: M = (Σ W_lᵀW_l + reg I)⁻¹ Σ W_lᵀW⁰_l, by a linear solve (float64)."""
    W0 = next(iter(current.values()))
    d = W0.shape[1]
    a = regular_scale * torch.eye(d, dtype=torch.float64, device=W0.device)
    b = torch.zeros(d, d, dtype=torch.float64, device=W0.device)
    for n, W in current.items():
        a += W.T @ W
        b += W.T @ original[n].to(W)
    return torch.linalg.solve(a, b)


@dataclass
class RECE(UCE):
    """UCE (its fields, the starting model) then `epochs` adversarial re-edits (see the module doc)."""

    name: str = "rece"
    epochs: int | None = None             # re-edit iterations; None: by concept kind (FAMILY_DEFAULTS)
    regular_scale: float | None = None    # reg of the adversarial embedding's ||c'||²; None: by concept kind
    rece_lamb: float = 0.1                # λ of the re-edits (λ1 of the paper's Eq. 3)
    rece_preserve_scale: float = 0.1      # preserve scale of the re-edits (λ2 of Eq. 3)
    rece_retain: str | None = None        # per_concept | once (see the module doc); None: by concept kind

    def validate(self) -> None:
        super().validate()
        if self.epochs is not None:
            check_positive("method.epochs", self.epochs, integer=True, allow_zero=True)
        if self.regular_scale is not None:
            check_positive("method.regular_scale", self.regular_scale)
        check_positive("method.rece_lamb", self.rece_lamb)
        check_positive("method.rece_preserve_scale", self.rece_preserve_scale, allow_zero=True)
        if self.rece_retain is not None:
            check_choice("method.rece_retain", self.rece_retain, RETAIN_RULES)
        if isinstance(self.epochs, bool):
            raise MethodConfigError(f"method.epochs={self.epochs!r} must be an integer")

    def family_defaults(self, concept: dict) -> tuple[int, float]:
        epochs, reg = FAMILY_DEFAULTS.get(str(concept.get("kind")), OTHER_DEFAULTS)
        return (int(self.epochs) if self.epochs is not None else epochs,
                float(self.regular_scale) if self.regular_scale is not None else reg)

    def retain_rule(self, concept: dict) -> str:
        if self.rece_retain is not None:
            return str(self.rece_retain)
        return "once" if str(concept.get("kind")) in RETAIN_ONCE_KINDS else "per_concept"

    def retain_texts(self, concept: dict, erase: list[str], preserve: list[str]) -> list[str]:
        """The re-edits' retain texts; `preserve` is the UCE stage's ([""] + the preserve texts)."""
        if self.retain_rule(concept) == "once":
            return list(preserve)
        return [" "] * len(erase) + [p for p in preserve if p != ""]

    def build(self, ctx: MethodContext) -> MethodOutput:
        stage = self.uce_stage(ctx)
        t0 = time.perf_counter()
        bb = ctx.backbone
        epochs, reg = self.family_defaults(ctx.concept)
        w_orig, w = stage["w_old"], stage["w_new"]
        concept_rows = [embed(bb, e) for e in stage["erase"]]
        guide_rows = [embed(bb, g) for g in stage["guide"]]
        retain = self.retain_texts(ctx.concept, stage["erase"], stage["preserve"])
        keep = [embed(bb, p) for p in retain]
        # The original model's concept-to-guide K/V distance and the concept's K/V size: the scales of the gaps.
        ref_gap = sum(kv_distance(w_orig, c, w_orig, g) for c, g in zip(concept_rows, guide_rows))
        ref_kv = sum(kv_norm(w_orig, c) for c in concept_rows)
        wtw = sum(W.T @ W for W in w.values())
        eig = torch.linalg.eigvalsh(wtw)
        log = {"gap_before": [], "gap_after": [], "attack_residual": [], "attack_residual_after": []}
        for _ in range(epochs):
            m = adversarial_map(w, w_orig, reg)
            adv = [c @ m.T for c in concept_rows]
            w_next = uce_solve(w, list(zip(adv, guide_rows)), keep, lamb=float(self.rece_lamb),
                               erase_scale=float(self.erase_scale),
                               preserve_scale=float(self.rece_preserve_scale), technique=self.technique)
            log["gap_before"].append(sum(kv_distance(w, a, w, g) for a, g in zip(adv, guide_rows)) / ref_gap)
            log["gap_after"].append(sum(kv_distance(w_next, a, w, g) for a, g in zip(adv, guide_rows)) / ref_gap)
            log["attack_residual"].append(
                sum(kv_distance(w, a, w_orig, c) for a, c in zip(adv, concept_rows)) / ref_kv)
            log["attack_residual_after"].append(
                sum(kv_distance(w_next, a, w_orig, c) for a, c in zip(adv, concept_rows)) / ref_kv)
            w = w_next
        info = dict(stage["info"])
        info.update({f"rece_{k}": v for k, v in log.items()})
        info.update(rece_epochs=epochs, rece_regular_scale=reg, rece_retain=retain,
                    rece_seconds=time.perf_counter() - t0,
                    # reg against the scale of Σ WᵀW (after UCE): negligible when far below its eigenvalues.
                    rece_wtw_eig_min=float(eig[0]), rece_wtw_eig_mean=float(eig.mean()),
                    rece_wtw_eig_max=float(eig[-1]))
        meta = self.edit_meta(ctx, stage)
        meta.update(epochs=epochs, regular_scale=reg, retain_rule=self.retain_rule(ctx.concept), retain=retain)
        return MethodOutput(self.make_edit(ctx, w, meta), {}, info)

    def row_fields(self) -> dict:
        return {"lamb": float(self.lamb), "rece_lamb": float(self.rece_lamb)}
