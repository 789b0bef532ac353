"""The random-ablation baseline: as many weights per tensor as CAD-Erase would zero at this ratio, placed
uniformly at random (seed). It reads the erase scores only to know the count."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from cad.methods.base import MethodContext, MethodOutput
from cad.methods.cad_erase import ScoreMask


@dataclass
class RandomAblation(ScoreMask):
    name: str = "random"
    seed: int = 0
    controls: list = field(default_factory=list)
    goal: ClassVar[str] = "erase"

    def build(self, ctx: MethodContext) -> MethodOutput:
        from cad.edits import Edit

        out = super().build(ctx)
        edit = Edit.random_like(out.edit, int(self.seed))
        edit.meta["method"] = self.name
        return MethodOutput(edit, {}, out.info)
