"""Deterministic renderer of the toy world: one coloured, styled shape per small RGB image, with captions.

Every image is a pure function of (seed, index), so datasets, reference statistics and tests are reproducible
bit for bit. Shapes are drawn on a 2x supersampled grid and box-filtered, which keeps edges smooth enough for
the tiny VAE to model yet leaves stripes and dots crisp enough to tell apart at 32x32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cad.toy.world import COLORS, SHAPES, STYLES

# Saturated primaries/secondaries: far apart in RGB so a colour survives the VAE and stays nameable.
RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.12, 0.10),
    "green": (0.10, 0.85, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "magenta": (0.90, 0.15, 0.90),
    "cyan": (0.10, 0.90, 0.92),
}
BACKGROUND = 0.08  # near-black, so every colour contrasts with it
_SS = 2  # supersampling factor


@dataclass(frozen=True)
class Scene:
    shape: str
    style: str
    color: str
    cx: float  # centre, in pixels of the final image
    cy: float
    radius: float

    @property
    def labels(self) -> tuple[int, int, int]:
        return SHAPES.index(self.shape), STYLES.index(self.style), COLORS.index(self.color)


def sample_scene(rng: np.random.Generator, size: int = 32, shape=None, style=None, color=None) -> Scene:
    """A random scene; fixed attributes may be given. Position and size jitter keep the concepts compositional."""
    shape = shape if shape is not None else SHAPES[rng.integers(len(SHAPES))]
    style = style if style is not None else STYLES[rng.integers(len(STYLES))]
    color = color if color is not None else COLORS[rng.integers(len(COLORS))]
    for name, value, allowed in (("shape", shape, SHAPES), ("style", style, STYLES), ("color", color, COLORS)):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; choose one of {allowed}")
    s = size / 32.0
    radius = float(rng.uniform(9.0, 12.5)) * s
    cx = size / 2 + float(rng.uniform(-3.5, 3.5)) * s
    cy = size / 2 + float(rng.uniform(-3.5, 3.5)) * s
    return Scene(shape, style, color, cx, cy, radius)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.82 * r
    if shape == "triangle":  # apex up, base at +0.75 r
        h = 1.75 * r
        t = (dy + r) / h  # 0 at apex, 1 at base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * 0.95 * r)
    if shape == "cross":
        w = 0.32 * r
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.05 * r
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        inner = out.copy()
        inner[1:, :] &= out[:-1, :]
        inner[:-1, :] &= out[1:, :]
        inner[:, 1:] &= out[:, :-1]
        inner[:, :-1] &= out[:, 1:]
        out = inner
    return out


def _style_mask(style: str, mask: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if style == "solid":
        return mask
    if style == "outline":  # a band ~1.5 px wide along the boundary
        return mask & ~_erode(mask, 3)
    if style == "striped":  # horizontal stripes, period 4 px
        return mask & (np.floor(y / 2.0) % 2 == 0)
    if style == "dotted":  # 2x2 px dots on a 4 px lattice, in the rows the stripes leave empty
        # (kit v3 put the dots inside the stripe rows, so every dotted image was a striped image with columns
        # removed; erasing "striped" then always took "dotted" with it)
        return mask & (np.floor(x / 2.0) % 2 == 1) & (np.floor(y / 2.0) % 2 == 1)
    raise ValueError(f"unknown style {style!r}; choose one of {STYLES}")


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """Render a scene to a float32 (3, size, size) array in [0, 1]."""
    n = size * _SS
    coords = (np.arange(n, dtype=np.float32) + 0.5) / _SS  # pixel units of the final image
    y, x = np.meshgrid(coords, coords, indexing="ij")
    mask = _shape_mask(scene.shape, x - scene.cx, y - scene.cy, scene.radius)
    mask = _style_mask(scene.style, mask, x, y)
    cover = mask.reshape(size, _SS, size, _SS).mean(axis=(1, 3)).astype(np.float32)
    rgb = np.asarray(RGB[scene.color], dtype=np.float32)[:, None, None]
    return BACKGROUND + cover[None] * (rgb - BACKGROUND)


def caption(scene: Scene | None, rng: np.random.Generator, p_drop: float = 0.0, p_empty: float = 0.0) -> str:
    """'a red striped circle', with each attribute word dropped with probability p_drop ('a striped shape'),
    or '' with probability p_empty (the unconditional caption classifier-free guidance trains on)."""
    if scene is None or rng.random() < p_empty:
        return ""
    keep = rng.random(3) >= p_drop
    return caption_from(scene.shape if keep[0] else None, scene.style if keep[1] else None,
                        scene.color if keep[2] else None)


def caption_from(shape: str | None = None, style: str | None = None, color: str | None = None) -> str:
    """The caption naming the given attributes; a missing shape reads 'shape' ('a red shape')."""
    words = [w for w in (color, style) if w] + [shape or "shape"]
    return "a " + " ".join(words)


@dataclass
class Dataset:
    images: np.ndarray  # (N, 3, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N, 3) int64: shape, style, color indices
    scenes: list[Scene]


def render_dataset(n: int, seed: int, size: int = 32, **fixed) -> Dataset:
    """n scenes drawn from the world (attributes uniform unless fixed, e.g. shape='circle'), rendered."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, size, **fixed) for _ in range(n)]
    images = np.stack([render(s, size) for s in scenes])
    labels = np.asarray([s.labels for s in scenes], dtype=np.int64)
    return Dataset(images, labels, scenes)
