"""attribute(..., time_buckets=B): B partial attributions over contiguous groups of timesteps that sum to the
full alpha, while the full alpha stays bit-identical to an attribution without buckets."""

from __future__ import annotations

import pytest
import torch

from cad import attribute
from cad.attribution import _check_bucket_memory, bucket_ends, bucket_memory_bytes

PROMPT = "a photo of a cat"
STEPS = 6


def _check_sum(plain, bucketed, buckets):
    assert len(bucketed.partials) == buckets
    for n in plain.scores:
        assert torch.equal(plain.scores[n], bucketed.scores[n])  # the full alpha: bit for bit
        total = sum(p.scores[n] for p in bucketed.partials)
        scale = float(plain.scores[n].abs().max())
        # a bucket is (running sum at its end - at its start) * w in float32: rounding only
        torch.testing.assert_close(total, plain.scores[n], rtol=0, atol=1e-5 * scale)
    steps = [p.meta["bucket_steps"] for p in bucketed.partials]
    assert steps[0][0] == 0 and steps[-1][1] == STEPS
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(steps, steps[1:]))
    assert bucketed.meta["time_buckets"] == steps


@pytest.mark.parametrize("objective,estimator", [("erase", "trajectory"), ("erase", "restart"),
                                                 ("amplify", "trajectory")])
def test_time_buckets_sum_to_the_full_attribution(small_pipe, objective, estimator):
    kw = dict(objective=objective, estimator=estimator, steps=STEPS, num_samples=2, seed=0, num_images=2,
              progress=False)
    plain = attribute(small_pipe, PROMPT, **kw)
    bucketed = attribute(small_pipe, PROMPT, time_buckets=3, **kw)
    _check_sum(plain, bucketed, 3)
    assert plain.partials is None and "time_buckets" not in plain.meta
    # the buckets differ: different timesteps weigh different components
    a, b = bucketed.partials[0], bucketed.partials[-1]
    assert any(not torch.allclose(a.scores[n], b.scores[n]) for n in a.scores)


def test_one_bucket_is_the_whole_trajectory(small_pipe):
    s = attribute(small_pipe, PROMPT, steps=STEPS, num_samples=1, seed=1, time_buckets=1, progress=False)
    for n in s.scores:
        torch.testing.assert_close(s.partials[0].scores[n], s.scores[n], rtol=0, atol=0)


def test_bucket_bounds_and_refusals(small_pipe):
    assert bucket_ends(6, 3) == [2, 4, 6]
    assert bucket_ends(20, 4) == [5, 10, 15, 20]
    assert bucket_ends(7, 7) == list(range(1, 8))
    with pytest.raises(ValueError, match="time_buckets=7 must lie in 1..steps"):
        attribute(small_pipe, PROMPT, steps=STEPS, time_buckets=7, progress=False)
    assert bucket_memory_bytes(1000, 4) == 16_000
    with pytest.raises(MemoryError, match="fewer buckets"):
        _check_bucket_memory(10**15, 50, "cpu")  # 200 PB: refused before anything runs
