"""Core fixtures: one tiny pipeline and its scores per module."""

from __future__ import annotations

import pytest

PROMPT = "a photo of a cat"
STEPS = 6


@pytest.fixture(scope="module")
def small_pipe(tiny_pipe_factory):
    """A tiny pipeline at 16 px (8x8 latents): fast enough to run attribution many times."""
    return tiny_pipe_factory(0, image_size=16)


@pytest.fixture(scope="module")
def erase_scores(small_pipe):
    from cad import attribute

    return attribute(small_pipe, PROMPT, steps=STEPS, num_samples=2, seed=0, progress=False)
