"""select_components against a brute-force transcription of the reference rule, every sign and granularity."""

from __future__ import annotations

import itertools

import pytest
import torch

from cad import count_ablated, random_masks, select_components


def brute_rows(a: torch.Tensor, k: int, sign: str) -> torch.Tensor:
    """Per row: sort descending (the reference's argsort), then apply the sign rule entry by entry."""
    mask = torch.zeros(a.shape, dtype=torch.bool)
    n = a.shape[1]
    for r in range(a.shape[0]):
        order = sorted(range(n), key=lambda j: -float(a[r, j]))
        top, bottom = set(order[:k]), set(order[n - k:]) if k else set()
        for j in range(n):
            v = float(a[r, j])
            if sign == "positive":
                mask[r, j] = j in top and v > 0  # strictly: alpha = 0 is neither sign
            elif sign == "negative":
                mask[r, j] = j in bottom and v < 0
            else:
                mask[r, j] = j in top or j in bottom
    return mask


def brute(scores: dict, ratio: float, sign: str, granularity: str) -> dict:
    if granularity == "row":
        out = {}
        for name, s in scores.items():
            rows = s.reshape(s.shape[0], -1) if s.ndim >= 2 else s.reshape(1, -1)
            out[name] = brute_rows(rows, int(ratio * rows.shape[1]), sign).reshape(s.shape)
        return out
    if granularity == "tensor":
        return {n: brute_rows(s.reshape(1, -1), int(ratio * s.numel()), sign).reshape(s.shape)
                for n, s in scores.items()}
    flat = torch.cat([s.reshape(-1) for s in scores.values()]).reshape(1, -1)
    mask = brute_rows(flat, int(ratio * flat.shape[1]), sign)[0]
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = mask[start:start + s.numel()].reshape(s.shape)
        start += s.numel()
    return out


def random_scores(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    # Shifted normals so rows hold few/many positives; a conv kernel and a 1-D tensor exercise other ranks.
    return {
        "a.ff.weight": torch.randn(6, 40, generator=g) + 0.8,
        "b.ff.weight": torch.randn(5, 23, generator=g) - 0.8,
        "c.conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "d.bias": torch.randn(17, generator=g),
    }


@pytest.mark.parametrize("sign,granularity", list(itertools.product(["positive", "negative", "both"],
                                                                     ["row", "tensor", "global"])))
@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.3, 0.6, 1.0])
def test_matches_brute_force(sign, granularity, ratio):
    for seed in range(2):
        scores = random_scores(seed)
        got = select_components(scores, ratio, sign, granularity)
        want = brute(scores, ratio, sign, granularity)
        assert set(got) == set(scores)
        for n in scores:
            assert got[n].dtype == torch.bool and got[n].shape == scores[n].shape
            assert torch.equal(got[n], want[n]), (n, sign, granularity, ratio)


def test_row_count_and_sign():
    g = torch.Generator().manual_seed(3)
    s = {"w": torch.randn(8, 100, generator=g).abs()}  # all positive
    m = select_components(s, 0.05, "positive")["w"]
    assert m.sum(1).tolist() == [5] * 8  # k = floor(0.05 * 100) per row
    assert not select_components(s, 0.05, "negative")["w"].any()  # no alpha < 0 anywhere
    assert select_components(s, 0.05, "both")["w"].sum() == 80
    info = count_ablated({"w": m})
    assert info["n_ablated"] == 40 and info["n_total"] == 800 and info["fraction"] == pytest.approx(0.05)


@pytest.mark.parametrize("granularity", ["row", "tensor", "global"])
def test_zero_scores_are_neither_positive_nor_negative(granularity):
    """A base prompt equal to the prompt makes J_erase 0 everywhere: all alpha = 0 must ablate nothing (the
    reference's ">= 0" ablated every top-k tie), and zeros among signed scores are never picked either."""
    zeros = {"a.ff.weight": torch.zeros(6, 40), "b.ff.weight": torch.zeros(5, 23)}
    for sign in ("positive", "negative"):
        assert not any(m.any() for m in select_components(zeros, 0.5, sign, granularity).values())
    mixed = {"w": torch.tensor([[3.0, 0.0, 0.0, -2.0], [0.0, 0.0, 0.0, 1.0]])}
    pos = select_components(mixed, 0.5, "positive", granularity)["w"]
    neg = select_components(mixed, 0.5, "negative", granularity)["w"]
    assert not (pos | neg)[mixed["w"] == 0].any()
    assert pos[0, 0] and neg[0, 3]


def test_real_fraction_differs_from_nominal():
    """Per-row flooring: 3% of 50 columns is 1.5 -> 1 per row, so 2% is really ablated."""
    s = {"w": torch.arange(500, dtype=torch.float32).reshape(10, 50)}
    info = count_ablated(select_components(s, 0.03, "positive"))
    assert info["n_ablated"] == 10 and info["fraction"] == pytest.approx(0.02)


def test_accepts_attribution_scores_object():
    from cad import AttributionScores

    s = AttributionScores(random_scores(0), {})
    got = select_components(s, 0.1)
    assert torch.equal(got["a.ff.weight"], select_components(random_scores(0), 0.1)["a.ff.weight"])


@pytest.mark.parametrize("kwargs,match", [
    ({"ratio": -0.1}, "ratio"), ({"ratio": 1.5}, "ratio"), ({"ratio": float("nan")}, "ratio"),
    ({"ratio": 0.1, "sign": "up"}, "sign"), ({"ratio": 0.1, "granularity": "block"}, "granularity"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_components(random_scores(0), **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_raise(bad):
    s = random_scores(0)
    s["a.ff.weight"][2, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        select_components(s, 0.1)


def test_empty_scores_raise():
    with pytest.raises(ValueError, match="non-empty"):
        select_components({}, 0.1)


def test_random_masks_same_count_and_seeded():
    masks = select_components(random_scores(1), 0.2, "both")
    r1, r2, r3 = random_masks(masks, 0), random_masks(masks, 0), random_masks(masks, 1)
    for n in masks:
        assert int(r1[n].sum()) == int(masks[n].sum()) and r1[n].shape == masks[n].shape
        assert torch.equal(r1[n], r2[n])
    assert any(not torch.equal(r1[n], r3[n]) for n in masks)


def test_row_granularity_warns_once_about_tensors_left_untouched(caplog):
    """k = int(ratio x columns) is 0 in rows narrower than 1/ratio: one warning says how many and the fix."""
    import logging

    s = {"narrow.weight": torch.randn(4, 32), "narrow2.weight": torch.randn(4, 40), "wide.weight": torch.randn(4, 200)}
    with caplog.at_level(logging.WARNING, logger="cad.selection"):
        masks = select_components(s, 0.01, "both", "row")
    assert not masks["narrow.weight"].any() and masks["wide.weight"].any()
    warnings = [r for r in caplog.records if r.name == "cad.selection"]
    assert len(warnings) == 1
    assert "2 of 3 tensors got k = int(ratio x columns) = 0" in warnings[0].getMessage()
    assert "use granularity=tensor or a higher ratio" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cad.selection"):
        select_components(s, 0.01, "both", "tensor")
        select_components(s, 0.05, "both", "row")
    assert not [r for r in caplog.records if r.name == "cad.selection"]
