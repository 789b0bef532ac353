"""Core fixtures: one tiny pipeline and its scores per module, single-threaded torch.

On a small shared CPU, torch's intra-op thread pool oversubscribes the cores and tiny UNet calls slow
down by tens of times; one thread is both faster and deterministic here.
"""

from __future__ import annotations

import pytest
import torch

PROMPT = "a photo of a cat"
STEPS = 6


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_pipe(tiny_pipe_factory):
    """A tiny pipeline at 16 px (8x8 latents): fast enough to run attribution many times."""
    return tiny_pipe_factory(0, image_size=16)


@pytest.fixture(scope="module")
def erase_scores(small_pipe):
    from cad import attribute

    return attribute(small_pipe, PROMPT, steps=STEPS, num_samples=2, seed=0, progress=False)
