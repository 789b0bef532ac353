"""CAD-Amplify: zero the top-`ratio` negative alpha of J_amplify (the denoising loss on concept images), which
strengthens the concept; the paper's Table 6 recalls concepts that other methods erased with it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from cad.methods.cad_erase import ScoreMask


@dataclass
class CADAmplify(ScoreMask):
    name: str = "cad_amplify"
    objective: str = "amplify"
    ratio: float = 0.003
    sign: str = "negative"
    controls: list = field(default_factory=list)
    goal: ClassVar[str] = "amplify"
