"""The toy world's vocabulary: the concepts a caption can name. Shared by the renderer, the kit and the benchmarks."""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond")
STYLES: tuple[str, ...] = ("solid", "outline", "striped", "dotted")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")

# concept kind -> its values; a concept is named by its value ("circle", "striped", "red").
KINDS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "style": STYLES, "color": COLORS}


def kind_of(concept: str) -> str:
    """Which attribute a concept word belongs to ('circle' -> 'shape')."""
    for kind, values in KINDS.items():
        if concept in values:
            return kind
    known = ", ".join(v for vs in KINDS.values() for v in vs)
    raise ValueError(f"unknown toy-world concept {concept!r}; choose one of: {known}")
