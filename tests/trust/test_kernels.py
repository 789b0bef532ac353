"""The portability guard of `make test-portable` (MixedKernels in tests/conftest.py): each module instance
keeps one oneDNN choice for its life, both choices are in use, and the flag is restored around every forward."""

from __future__ import annotations

import contextlib

import pytest
import torch


class Probe(torch.nn.Module):
    """Records the oneDNN flag its forward runs under, and its inner probe's."""

    def __init__(self, inner: Probe | None = None) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(torch.backends.mkldnn.enabled)
        if self.inner is not None:
            self.inner(x)
            self.seen.append(torch.backends.mkldnn.enabled)  # back to this module's own choice
        return x


def _mixer(kernel_mixer):
    # Under CAD_TEST_MKLDNN=mixed the session's own hooks are active: check those rather than stack a second set.
    return contextlib.nullcontext(kernel_mixer.active) if kernel_mixer.active else kernel_mixer(seed=1)


def test_each_module_instance_keeps_one_choice_and_both_are_used(kernel_mixer):
    x = torch.zeros(1)
    with _mixer(kernel_mixer) as mixer:
        probes = [Probe() for _ in range(16)]
        for _ in range(3):
            for p in probes:
                p(x)
        assert all(len(p.seen) == 3 and len(set(p.seen)) == 1 for p in probes)  # one object, one choice
        assert {p.seen[0] for p in probes} == {True, False}  # separate instances: both kernels in use
        inner = next(p for p in probes if not p.seen[0])
        outer = Probe(inner)
        for _ in range(2):
            outer(x)
        assert len(set(outer.seen)) == 1 and inner.seen[-1] is False  # the inner choice ends with its forward
        assert torch.backends.mkldnn.enabled  # outside any forward: oneDNN on
        mixer.paused = True
        try:
            assert all(Probe()(x) is x for _ in range(4)) and inner(x) is x and inner.seen[-1] is True
        finally:
            mixer.paused = False


@pytest.mark.same_kernels("checks the marker itself")
def test_a_same_kernels_test_runs_every_module_with_onednn_on():
    probes = [Probe() for _ in range(8)]
    for p in probes:
        p(torch.zeros(1))
    assert all(p.seen == [True] for p in probes)
