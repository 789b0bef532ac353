"""CAD-Erase / CAD-Amplify / random (ScoreMask): an edit that would ablate nothing is refused with the reason
and the fix, never returned as an "edited" model that is the original one."""

from __future__ import annotations

import pytest
import torch

from cad.methods import MethodConfigError, MethodContext
from cad.methods.cad_amplify import CADAmplify
from cad.methods.cad_erase import CADErase
from cad.methods.random import RandomAblation
from cad.scores import AttributionScores


def _ctx(scores: dict) -> MethodContext:
    made = AttributionScores(scores, {"objective": "erase"})
    return MethodContext(backbone=None, concept={"name": "diamond", "prompt": "a diamond"},
                         scores=lambda concept, objective, space: made)


def _scores(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"a.ff.weight": torch.randn(8, 32, generator=g), "b.ff.weight": torch.randn(4, 128, generator=g)}


@pytest.mark.parametrize("method", [CADErase, RandomAblation])
def test_a_ratio_too_small_for_any_row_is_refused_with_the_fix(method):
    with pytest.raises(MethodConfigError) as err:
        method(ratio=1e-9, granularity="row").build(_ctx(_scores()))
    msg = str(err.value)
    assert "method.ratio=1e-09" in msg and "ablates no weight of the 768" in msg
    assert ">= 0.00781" in msg and "granularity=tensor" in msg  # 1 / 128 columns of the widest row


def test_all_zero_scores_are_refused_naming_the_base_prompt():
    zeros = {n: torch.zeros_like(t) for n, t in _scores().items()}
    with pytest.raises(MethodConfigError, match="no score is positive.*base prompt equal to the prompt"):
        CADErase(ratio=0.5, granularity="tensor").build(_ctx(zeros))
    with pytest.raises(MethodConfigError, match="no score is negative"):
        CADAmplify(ratio=0.5, granularity="tensor").build(_ctx(zeros))


def test_an_edit_that_ablates_something_is_built():
    out = CADErase(ratio=0.05, granularity="row").build(_ctx(_scores()))
    assert out.edit.n_ablated > 0 and out.controls["random-0"].n_ablated == out.edit.n_ablated
