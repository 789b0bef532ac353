"""CAD-Erase (the paper's method): zero the top-`ratio` positive alpha of J_erase, a mask edit.

Scores come from the runner's cached attribution (`MethodContext.scores`), so a ratio sweep attributes once.
With `retain` set, alpha is ranked against the kept concepts' attributions (cad.retain_ranking, an extension).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from cad.methods.base import (
    Method,
    MethodConfigError,
    MethodContext,
    MethodOutput,
    check_choice,
    check_fraction,
)
from cad.selection import GRANULARITIES, SIGNS


@dataclass
class ScoreMask(Method):
    """Select components from CAD attribution scores of `objective` (shared by CAD-Erase and CAD-Amplify)."""

    name: str = "cad_erase"
    objective: str = "erase"
    ratio: float = 0.01            # fraction of component weights zeroed
    sign: str = "positive"
    granularity: str = "row"       # row (the reference rule), tensor, global
    space: str = "ff"              # component space, resolved in the model's family
    controls: list = field(default_factory=lambda: [0])   # seeds of same-count random ablations
    retain: list | str = field(default_factory=list)      # concepts to keep, or "siblings"
    retain_reduce: str = "mean"
    allow_other_model: bool = False  # apply even where the scores' model differs (intended transfers)

    uses_scores: ClassVar[bool] = True

    def validate(self) -> None:
        check_fraction("method.ratio", self.ratio)
        check_choice("method.sign", self.sign, SIGNS)
        check_choice("method.granularity", self.granularity, GRANULARITIES)
        check_choice("method.objective", self.objective, ("erase", "amplify"))
        if not isinstance(self.controls, (list, tuple)) or not all(
                isinstance(s, int) and s >= 0 for s in self.controls):
            raise MethodConfigError(f"method.controls={self.controls!r} must be a list of non-negative int seeds")

    def build(self, ctx: MethodContext) -> MethodOutput:
        from cad.edits import Edit
        from cad.retain import retain_ranking

        if ctx.scores is None:
            raise MethodConfigError(f"{self.name} needs attribution scores: pass MethodContext(scores=...)")
        scores = ctx.scores(ctx.concept, self.objective, self.space)
        info = {"scores_key": scores.key}
        if ctx.retain:
            kept = [ctx.scores(c, self.objective, self.space) for c in ctx.retain]
            scores = retain_ranking(scores, kept, reduce=self.retain_reduce, names=[c["name"] for c in ctx.retain])
            info["retain"] = [c["name"] for c in ctx.retain]
        edit = Edit.from_scores(scores, float(self.ratio), self.sign, self.granularity)
        if edit.n_ablated == 0:
            # the "edited" model would be the original one, and its rows would read like a result
            raise MethodConfigError(self._nothing_ablated(scores))
        edit.meta["method"] = self.name
        controls = {f"random-{s}": Edit.random_like(edit, int(s)) for s in self.controls}
        return MethodOutput(edit, controls, info)

    def _nothing_ablated(self, scores) -> str:
        import torch

        tensors = getattr(scores, "scores", scores)
        total = sum(t.numel() for t in tensors.values())
        signed = {"positive": lambda t: t > 0, "negative": lambda t: t < 0, "both": torch.ones_like}[self.sign]
        n_signed = sum(int(signed(t.float()).bool().sum()) for t in tensors.values())
        unit = {"row": max((t.reshape(t.shape[0], -1).shape[1] if t.ndim >= 2 else t.numel())
                           for t in tensors.values()),
                "tensor": max(t.numel() for t in tensors.values()), "global": total}[self.granularity]
        if n_signed == 0:
            why = (f"no score is {self.sign} (alpha = 0 is neither sign); check the concept's prompts, e.g. a base "
                   "prompt equal to the prompt makes every alpha 0")
        else:
            why = (f"k = int(ratio x {'columns' if self.granularity == 'row' else 'weights'}) is 0; use a higher "
                   f"ratio (>= {1.0 / unit:.3g})"
                   + (" or method.granularity=tensor" if self.granularity == "row" else ""))
        return (f"method.ratio={self.ratio:g} (granularity={self.granularity}, sign={self.sign}) ablates no weight "
                f"of the {total} in component space {self.space!r}: {why}. Nothing was generated")

    def row_fields(self) -> dict:
        return {"ratio": float(self.ratio), "sign": self.sign, "granularity": self.granularity}


@dataclass
class CADErase(ScoreMask):
    name: str = "cad_erase"
    goal: ClassVar[str] = "erase"
