"""No edit: the unedited model scored with the same protocol (the "SD" rows of the paper's tables)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cad.methods.base import Method, MethodContext, MethodOutput


@dataclass
class NoEdit(Method):
    name: str = "none"
    goal: ClassVar[str] = "none"

    def build(self, ctx: MethodContext) -> MethodOutput:
        return MethodOutput(None, {}, {})
