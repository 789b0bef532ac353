"""cad.retain_ranking: alpha over retain importance (SSD-style), sign-preserving, refusing mismatched inputs."""

from __future__ import annotations

import pytest
import torch

import cad
from cad.retain import retain_importance, retain_ranking
from cad.scores import AttributionScores, ScoresMismatchError

STEPS = 6  # as the erase_scores fixture (conftest)


def _scores(values: dict, concept: str, fp: str = "fp0") -> AttributionScores:
    return AttributionScores({k: torch.tensor(v) for k, v in values.items()},
                             {"concept": concept, "unet_fingerprint": fp, "objective": "erase"})


def test_formula_and_sign():
    target = _scores({"w": [[4.0, 2.0, -3.0, 1.0]]}, "red")
    r1 = _scores({"w": [[2.0, 0.0, 1.0, -1.0]]}, "green")
    r2 = _scores({"w": [[-4.0, 0.0, 3.0, 1.0]]}, "blue")
    ranked = retain_ranking(target, [r1, r2], eps=0.1)
    floor = 0.1 * torch.tensor([4.0, 2.0, 3.0, 1.0]).mean()
    expected = torch.tensor([[4 / (3 + floor), 2 / floor, -3 / (2 + floor), 1 / (1 + floor)]])
    torch.testing.assert_close(ranked.scores["w"], expected)
    # the weight no retain concept uses now ranks first, ahead of the larger alpha the others share
    assert ranked.scores["w"].argmax() == 1 and target.scores["w"].argmax() == 0
    assert torch.equal(torch.sign(ranked.scores["w"]), torch.sign(target.scores["w"]))
    mx = retain_importance([r1, r2], "max")["w"]
    assert torch.equal(mx, torch.tensor([[4.0, 0.0, 3.0, 1.0]]))


def test_meta_key_and_predicted_change_refused():
    target = _scores({"w": [[1.0, 2.0]]}, "red")
    ranked = retain_ranking(target, [_scores({"w": [[1.0, 0.5]]}, "green")], reduce="max")
    assert ranked.meta["retain"]["concepts"] == ["green"] and ranked.meta["retain"]["reduce"] == "max"
    assert ranked.key != target.key
    with pytest.raises(ValueError, match="own attribution scores"):
        ranked.predicted_change({"w": torch.ones(1, 2, dtype=torch.bool)})
    edit = cad.Edit.from_scores(ranked, 0.5, sign="positive", granularity="tensor")
    assert edit.meta["scores"]["retain"]["concepts"] == ["green"]
    with pytest.raises(ValueError, match="already a retain ranking"):
        retain_ranking(ranked, [target])


@pytest.mark.parametrize("bad, match", [
    (_scores({"v": [[1.0, 2.0]]}, "g"), "other tensors"),
    (_scores({"w": [[1.0, 2.0, 3.0]]}, "g"), "shape"),
    (_scores({"w": [[1.0, 2.0]]}, "g", fp="fp1"), "another UNet"),
])
def test_mismatched_retain_scores_are_refused(bad, match):
    with pytest.raises(ScoresMismatchError, match=match):
        retain_ranking(_scores({"w": [[1.0, 2.0]]}, "red"), [bad])


def test_bad_arguments():
    t = _scores({"w": [[1.0]]}, "red")
    with pytest.raises(ValueError, match="at least one concept"):
        retain_ranking(t, [])
    with pytest.raises(ValueError, match="unknown reduce"):
        retain_ranking(t, [t], reduce="median")
    with pytest.raises(ValueError, match="eps must be > 0"):
        retain_ranking(t, [t], eps=0.0)


def test_on_a_real_pipeline_spares_what_the_retain_concept_uses(small_pipe, erase_scores):
    keep = cad.attribute(small_pipe, "a photo of a dog", steps=STEPS, num_samples=2, seed=0, progress=False)
    ranked = cad.retain_ranking(erase_scores, [keep])
    plain = cad.Edit.from_scores(erase_scores, 0.05, sign="positive", granularity="tensor")
    aware = cad.Edit.from_scores(ranked, 0.05, sign="positive", granularity="tensor")
    assert plain.n_ablated == aware.n_ablated
    # the retain-aware edit removes less of what the retain concept's alpha says it needs
    spent = {name: keep.scores[name].abs()[m].sum() for name, m in plain.masks.items()}
    spared = {name: keep.scores[name].abs()[m].sum() for name, m in aware.masks.items()}
    assert sum(spared.values()) < sum(spent.values())
    with aware.applied(small_pipe):
        out = small_pipe("a photo of a cat", num_inference_steps=2, output_type="np",
                         generator=torch.Generator().manual_seed(0)).images
    assert out.shape[0] == 1
