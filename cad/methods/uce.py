"""UCE, Unified Concept Editing (Gandikota et al., WACV 2024): a closed-form edit of the cross-attention
key/value projections, as a weight edit.

Follows the paper code rohitgandikota/unified-concept-editing @ 35e91e28df2f2fbcbef105fa079a436641a5142b
(`train-scripts/train_erase.py`, `edit_model` and its `__main__`), the version RECE (CharlesGong12/RECE
@ 403a67fd86dce6c124b88798340e001e625b28c9, `erase_methods/train_uce.py`) starts from; our own implementation
of what that code computes. For every projection W_old (each `attn2.to_k` / `attn2.to_v` of the denoiser,
solved independently):

    W_new = argmin_W  s_e Σ ||W c - v*||² + s_p Σ ||W c_p - W_old c_p||² + λ ||W - W_old||²_F
          = (λ W_old + s_e Σ v* cᵀ + s_p Σ W_old c_p c_pᵀ) (λ I + s_e Σ c cᵀ + s_p Σ c_p c_pᵀ)⁻¹

with c the erase keys, v* = W_old c_guide their targets ("replace"; "tensor" removes from W_old c_guide its
component along W_old c), c_p the preserve keys. The right factor is solved in float64 with
torch.linalg.solve (never an explicit inverse); it is the same for every layer, so many layers share one solve.

Keys (the reference's token positions, `tokens="aligned"`): an erase text and its guide are tokenized to the
context length; from the erase text's last word token (attention-mask sum - 2) to the end — that token, EOS and
the padding — paired position by position with the guide's rows from its own last word token (the BOS row for
an empty guide), both cut to the same length. Preserve texts use the whole sequence, and "" is always
preserved. `tokens="last"` is the 2025 rewrite's rule (HEAD 28c81ed5a3e41277c1a0dc55f738e7ab188e9718,
`trainscripts/uce_sd_erase.py`, `UCE`): one row per text, its last word token.

Defaults (35e91e2): λ = 0.5 (hard-coded in its `edit_model` call), erase_scale 1, preserve_scale
max(0.1, 1/len(preserve texts)) (1.0 with the default [""]), technique "replace", to_k and to_v edited, guide
" " (towards the unconditional) except "art" for artists (its README's art example; its
`--concept_type art`). The reference's artist default preserve set (every other artist of its 1734-artist
list) is not built in: pass them as `preserve`.

Embeddings come from the backbone's `encode` (SD: the text encoder's last hidden state, as the reference;
SDXL: the concatenated two-encoder states the UNet reads, as the rewrite's SDXL path), token counts from
`pipe.tokenizer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from cad.methods.base import (
    Method,
    MethodConfigError,
    MethodContext,
    MethodOutput,
    check_choice,
    check_positive,
)

KV_SUFFIXES = ("attn2.to_k", "attn2.to_v")
TECHNIQUES = ("replace", "tensor")
TOKEN_RULES = ("aligned", "last")
# Concept kinds whose reference guide is "art" (UCE's --concept_type art); every other kind is guided towards
# the unconditional " ". Toy styles stand in for artists but "art" is no toy-world word, so they keep " ".
ART_KINDS = ("artist", "art")
# Right-hand-side elements per linear solve: bounds the stacked (d, Σ d_out) block on SDXL (d = 2048).
_SOLVE_CHUNK = 1 << 25


# ---- the model's cross-attention projections ---------------------------------------------------------------
def kv_projections(denoiser: torch.nn.Module, with_to_k: bool = True) -> dict[str, torch.nn.Linear]:
    """name -> module of every cross-attention value (and key) projection, in the denoiser's module order."""
    suffixes = KV_SUFFIXES if with_to_k else ("attn2.to_v",)
    mods = {n: m for n, m in denoiser.named_modules() if n.endswith(suffixes)}
    if not mods:
        raise MethodConfigError(f"the denoiser {type(denoiser).__name__} has no cross-attention projections "
                                f"(modules named *{' / *'.join(suffixes)}); UCE/RECE edit only those")
    return mods


def kv_weights(denoiser: torch.nn.Module, with_to_k: bool = True) -> dict[str, torch.Tensor]:
    """name -> float64 copy of each projection's weight (d_out, d_text)."""
    return {n: m.weight.detach().double().clone() for n, m in kv_projections(denoiser, with_to_k).items()}


# ---- text rows ---------------------------------------------------------------------------------------------
def embed(bb, text: str) -> torch.Tensor:
    """The (T, d) cross-attention context of `text` from the backbone, float64."""
    return bb.encode(text).batched["encoder_hidden_states"][0].detach().double()


def last_token_index(bb, text: str) -> int:
    """Index of the last word token (the row before EOS): attention-mask sum - 2, the reference's rule; 0 (BOS)
    for an empty text. The mask marks BOS, the words and the first EOS (CLIP tokenizers pad unmasked)."""
    tok = bb.pipe.tokenizer
    ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True)
    return max(0, int(sum(ids["attention_mask"])) - 2)


def erase_rows(bb, erase: str, guide: str, tokens: str = "aligned") -> tuple[torch.Tensor, torch.Tensor]:
    """(erase keys C, guide rows G), both (n, d) and row-aligned: v* of C[i] is W_old G[i]."""
    ce, cg = embed(bb, erase), embed(bb, guide)
    ie, ig = last_token_index(bb, erase), last_token_index(bb, guide)
    if tokens == "last":
        return ce[ie : ie + 1], cg[ig : ig + 1]
    far, T = max(ie, ig), ce.shape[0]
    return ce[ie : T - (far - ie)], cg[ig : T - (far - ig)]


def preserve_rows(bb, text: str, tokens: str = "aligned") -> torch.Tensor:
    """Preserve keys of `text`: the whole sequence ("aligned", the reference) or its last word token."""
    c = embed(bb, text)
    if tokens == "last":
        i = last_token_index(bb, text)
        return c[i : i + 1]
    return c


# ---- the closed form ---------------------------------------------------------------------------------------
def uce_targets(W: torch.Tensor, C: torch.Tensor, G: torch.Tensor, technique: str) -> torch.Tensor:
    """v* rows (n, d_out) for keys C: W G ("replace"), or W G minus its component along W C ("tensor": one
    Frobenius projection over all rows, as the reference)."""
    new = G @ W.T
    if technique == "replace":
        return new
    old = C @ W.T
    u = old / old.norm().clamp_min(torch.finfo(old.dtype).tiny)
    return new - (u * new).sum() * u


def normal_matrices(W: torch.Tensor, erase: list[tuple[torch.Tensor, torch.Tensor]], preserve: list[torch.Tensor],
                    lamb: float, erase_scale: float, preserve_scale: float, technique: str = "replace"):
    """(mat1, mat2) of the normal equations W_new mat2 = mat1 for one projection W (float64)."""
    d = W.shape[1]
    mat2 = lamb * torch.eye(d, dtype=W.dtype, device=W.device)
    mat1 = lamb * W
    for C, G in erase:
        mat2 = mat2 + erase_scale * C.T @ C
        mat1 = mat1 + erase_scale * uce_targets(W, C, G, technique).T @ C
    for P in preserve:
        mat2 = mat2 + preserve_scale * P.T @ P
        mat1 = mat1 + preserve_scale * (P @ W.T).T @ P
    return mat1, mat2


def uce_solve(weights: dict[str, torch.Tensor], erase: list[tuple[torch.Tensor, torch.Tensor]],
              preserve: list[torch.Tensor], *, lamb: float, erase_scale: float, preserve_scale: float,
              technique: str = "replace") -> dict[str, torch.Tensor]:
    """W_new = mat1 mat2⁻¹ for every projection, by linear solves in float64.

    mat2 = λI + s_e Σ CᵀC + s_p Σ PᵀP depends only on the keys, so it is built once and the layers' mat1ᵀ are
    stacked as right-hand sides of shared solves (mat2 is symmetric: W_new = solve(mat2, mat1ᵀ)ᵀ)."""
    dev = next(iter(weights.values())).device
    erase = [(C.to(dev, torch.float64), G.to(dev, torch.float64)) for C, G in erase]
    preserve = [P.to(dev, torch.float64) for P in preserve]
    d = next(iter(weights.values())).shape[1]
    mat2 = lamb * torch.eye(d, dtype=torch.float64, device=dev)
    pp = torch.zeros(d, d, dtype=torch.float64, device=dev)
    for C, _ in erase:
        mat2 += erase_scale * C.T @ C
    for P in preserve:
        pp += P.T @ P
    mat2 += preserve_scale * pp
    rhs = {}
    for name, W in weights.items():
        W = W.to(dev, torch.float64)
        mat1 = lamb * W + preserve_scale * W @ pp
        for C, G in erase:
            mat1 += erase_scale * uce_targets(W, C, G, technique).T @ C
        rhs[name] = mat1.T
    out: dict[str, torch.Tensor] = {}
    names = list(rhs)
    while names:
        group, cols = [], 0
        while names and (not group or (cols + rhs[names[0]].shape[1]) * d <= _SOLVE_CHUNK):
            group.append(names.pop(0))
            cols += rhs[group[-1]].shape[1]
        sol = torch.linalg.solve(mat2, torch.cat([rhs[n] for n in group], dim=1))
        for n, part in zip(group, sol.split([rhs[n].shape[1] for n in group], dim=1)):
            out[n] = part.T.contiguous()
    return out


def kv_distance(weights_a: dict[str, torch.Tensor], A: torch.Tensor, weights_b: dict[str, torch.Tensor],
                B: torch.Tensor) -> float:
    """sqrt(Σ_layers ||W_a A - W_b B||²) over row-aligned keys A, B (n, d): the K/V outputs' distance."""
    total = 0.0
    for n, Wa in weights_a.items():
        total += float(((A.to(Wa) @ Wa.T - B.to(Wa) @ weights_b[n].T) ** 2).sum())
    return total ** 0.5


def kv_norm(weights: dict[str, torch.Tensor], A: torch.Tensor) -> float:
    """sqrt(Σ_layers ||W A||²): the size of keys A's K/V outputs."""
    return sum(float(((A.to(W) @ W.T) ** 2).sum()) for W in weights.values()) ** 0.5


def _str_list(name: str, value, *, allow_empty_list: bool = True, allow_empty_text: bool = True) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise MethodConfigError(f"{name}={value!r} must be a string or a list of strings")
    if not allow_empty_list and not value:
        raise MethodConfigError(f"{name}=[] names nothing; leave it null for the default")
    if not allow_empty_text and any(not v.strip() for v in value):
        raise MethodConfigError(f"{name}={value!r} holds an empty text; every entry must name a concept")


def as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


@dataclass
class UCE(Method):
    """Closed-form erasure of `erase` towards `guide` in every attn2.to_k / attn2.to_v (see the module doc)."""

    name: str = "uce"
    erase: list | str | None = None       # texts to erase; None: [the concept's prompt]
    guide: list | str | None = None       # one guide for all, or one per erase text; None: by concept kind
    preserve: list | str = field(default_factory=list)   # texts kept; "" is always added (the reference)
    lamb: float = 0.5                     # ridge towards the current weights (λ)
    erase_scale: float = 1.0              # s_e
    preserve_scale: float | None = None   # s_p; None: max(0.1, 1 / number of preserve texts incl. "")
    technique: str = "replace"            # replace: v* = W c_guide; tensor: minus its part along W c_erase
    tokens: str = "aligned"               # aligned: reference key rows; last: one row per text (2025 rewrite)
    with_to_k: bool = True                # edit the keys too (reference), not only the values

    def validate(self) -> None:
        _str_list("method.erase", self.erase, allow_empty_list=False, allow_empty_text=False)
        _str_list("method.guide", self.guide, allow_empty_list=False)
        _str_list("method.preserve", self.preserve)
        check_positive("method.lamb", self.lamb)
        check_positive("method.erase_scale", self.erase_scale, allow_zero=True)
        if self.preserve_scale is not None:
            check_positive("method.preserve_scale", self.preserve_scale, allow_zero=True)
        check_choice("method.technique", self.technique, TECHNIQUES)
        check_choice("method.tokens", self.tokens, TOKEN_RULES)
        if not isinstance(self.with_to_k, bool):
            raise MethodConfigError(f"method.with_to_k={self.with_to_k!r} must be true or false")
        if self.erase is not None and not isinstance(self.guide, (str, type(None))):
            if len(self.guide) not in (1, len(as_list(self.erase))):
                raise MethodConfigError(f"method.guide has {len(self.guide)} texts for {len(as_list(self.erase))} "
                                        "erase texts; give one guide for all or one per erase text")

    # ---- resolved prompt sets ------------------------------------------------------------------------------
    def erase_texts(self, concept: dict) -> list[str]:
        if self.erase is not None:
            return as_list(self.erase)
        prompt = concept.get("prompt")
        if not prompt:
            raise MethodConfigError(f"{self.name}: concept {concept.get('name')!r} has no prompt; set method.erase")
        return [str(prompt)]

    def guide_texts(self, concept: dict, n: int) -> list[str]:
        if self.guide is None:
            guides = ["art" if concept.get("kind") in ART_KINDS else " "]
        else:
            guides = as_list(self.guide)
        if len(guides) == 1:
            guides = guides * n
        if len(guides) != n:
            raise MethodConfigError(f"{self.name}: {len(guides)} guide texts for {n} erase texts; give one "
                                    "guide for all or one per erase text")
        # The reference replaces an empty guide by " " (they tokenize alike: BOS, EOS).
        return [g if g else " " for g in guides]

    def preserve_texts(self) -> list[str]:
        return [""] + [p for p in as_list(self.preserve) if p != ""]

    def resolved_preserve_scale(self, n_preserve: int) -> float:
        return float(self.preserve_scale) if self.preserve_scale is not None else max(0.1, 1.0 / n_preserve)

    # ---- the edit ------------------------------------------------------------------------------------------
    def uce_stage(self, ctx: MethodContext) -> dict:
        """Everything UCE computes: original and edited weights (float64), prompt sets, keys and timings."""
        t0 = time.perf_counter()
        bb = ctx.backbone
        erase = self.erase_texts(ctx.concept)
        guide = self.guide_texts(ctx.concept, len(erase))
        preserve = self.preserve_texts()
        s_p = self.resolved_preserve_scale(len(preserve))
        w_old = kv_weights(bb.denoiser, self.with_to_k)
        pairs = [erase_rows(bb, e, g, self.tokens) for e, g in zip(erase, guide)]
        keep = [preserve_rows(bb, p, self.tokens) for p in preserve]
        w_new = uce_solve(w_old, pairs, keep, lamb=float(self.lamb), erase_scale=float(self.erase_scale),
                          preserve_scale=s_p, technique=self.technique)
        seconds = time.perf_counter() - t0
        ref = sum(kv_distance(w_old, C, w_old, G) for C, G in pairs)
        info = {
            "erase": erase, "guide": guide, "preserve": preserve, "preserve_scale": s_p,
            "n_tensors": len(w_new), "uce_seconds": seconds,
            # sqrt Σ ||W c_erase - W_old c_guide||² over the erase keys, before and after, and the preserve
            # keys' relative drift ||W_new c_p - W_old c_p|| / ||W_old c_p||: what the edit did, at a glance.
            "erase_gap_before": ref,
            "erase_gap_after": sum(kv_distance(w_new, C, w_old, G) for C, G in pairs),
            "preserve_drift": [kv_distance(w_new, P, w_old, P) / max(kv_norm(w_old, P), 1e-30) for P in keep],
        }
        return {"w_old": w_old, "w_new": w_new, "erase": erase, "guide": guide, "preserve": preserve,
                "preserve_scale": s_p, "info": info}

    def edit_meta(self, ctx: MethodContext, stage: dict) -> dict:
        meta = self.settings()
        meta.update(method=self.name, made_for=ctx.backbone.denoiser_identity(), erase=stage["erase"],
                    guide=stage["guide"], preserve=stage["preserve"], preserve_scale=stage["preserve_scale"],
                    family=ctx.backbone.family)
        return meta

    def make_edit(self, ctx: MethodContext, weights: dict[str, torch.Tensor], meta: dict):
        from cad.edits import WeightEdit

        return WeightEdit({f"{n}.weight": w.float() for n, w in weights.items()}, meta, mode="replace")

    def build(self, ctx: MethodContext) -> MethodOutput:
        stage = self.uce_stage(ctx)
        edit = self.make_edit(ctx, stage["w_new"], self.edit_meta(ctx, stage))
        return MethodOutput(edit, {}, stage["info"])

    def row_fields(self) -> dict:
        return {"lamb": float(self.lamb)}
