"""cad.analysis on synthetic scores with a planted answer (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from cad.analysis import (
    ablation_curve,
    bucket_overlap,
    bucket_profile,
    chance_jaccard,
    flatten,
    generic_unique,
    gini,
    group_mass,
    jaccard,
    lorenz,
    overlap_matrix,
    settle_k,
    spearman,
    stability_table,
    top_set,
    unflatten,
)
from cad.backbones.sd import SDBackbone
from cad.scores import AttributionScores

# three UNet feed-forward tensors, named as in UNet2DConditionModel (registered: down, up, mid)
NAMES = ["down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight",
         "up_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight",
         "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"]


def _scores(seed: int, planted: str | None = None) -> AttributionScores:
    gen = torch.Generator().manual_seed(seed)
    t = {n: torch.randn(40, 50, generator=gen) * 0.01 for n in NAMES}
    if planted:
        t[planted] = t[planted] + torch.where(torch.rand(40, 50, generator=gen) < 0.1, 10.0, 0.0)
    return AttributionScores(t, {"family": "sd"})


def test_a_block_holding_every_top_component_is_found():
    mid = NAMES[2]
    s = _scores(0, planted=mid)
    groups = SDBackbone.group_names(NAMES, "block")
    assert list(groups) == ["down.0", "mid", "up.0"]  # forward order, not registration order
    rows = {r["group"]: r for r in group_mass(s, groups, fraction=0.02, seed=0)}
    assert rows["mid"]["top_pos_share"] == 1.0
    assert rows["down.0"]["top_pos_share"] == rows["up.0"]["top_pos_share"] == 0.0
    assert rows["mid"]["pos_share"] > 0.99
    # the random control spreads like the weights (a third each), far from the planted 1.0
    assert all(abs(r["random_pos_share"] - r["weight_share"]) < 0.15 for r in rows.values())
    assert sum(r["weight_share"] for r in rows.values()) == pytest.approx(1.0)
    assert sum(r["pos"] for r in rows.values()) == pytest.approx(float(flatten(s).clamp(min=0).sum()))


def test_identical_scores_overlap_fully():
    s = _scores(1)
    assert jaccard(s, s, 0.01) == 1.0
    assert jaccard(s, s, 0.01, "negative") == 1.0
    assert spearman(s, s) == pytest.approx(1.0)
    m = overlap_matrix({"a": s, "b": AttributionScores(dict(s.scores))}, 0.05)
    assert m["jaccard"] == [[1.0, 1.0], [1.0, 1.0]]


def test_independent_scores_overlap_at_chance():
    a, b = torch.randn(1_000_000, generator=torch.Generator().manual_seed(2)), \
        torch.randn(1_000_000, generator=torch.Generator().manual_seed(3))
    for f in (0.01, 0.1):  # |A ∩ B| ~ Binomial: 100 expected at 0.01 (sd 10), 10,000 at 0.1
        # top_set keeps positive alpha only; with f <= 0.5 every top entry of a centred normal is positive
        expected = chance_jaccard(f)
        assert jaccard(a, b, f) == pytest.approx(expected, rel=0.35 if f == 0.01 else 0.05)
    assert abs(spearman(a, b)) < 0.01
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_known_lorenz_curves_give_their_summary():
    n = 10_000
    even = torch.ones(n)
    assert gini(even) == pytest.approx(0.0, abs=1e-9)
    for f in (0.01, 0.1, 0.5):  # the mass sits evenly on a share f: G = 1 - f exactly
        v = torch.zeros(n)
        v[: int(f * n)] = 3.0
        assert gini(v) == pytest.approx(1 - f, abs=1e-9)
        x, y = lorenz(v, points=101)
        assert x[0] == 0 and y[0] == 0 and x[-1] == 1 and y[-1] == pytest.approx(1.0)
        assert y[[round(i * 100) for i in x].index(round(f * 100))] == pytest.approx(1.0)
    one = torch.zeros(n)
    one[7] = 1.0
    assert gini(one) == pytest.approx(1 - 1 / n)
    assert gini(-one, "negative") == pytest.approx(1 - 1 / n)
    assert math.isnan(gini(-even, "positive"))  # no positive mass


def test_top_set_keeps_only_its_sign_and_round_trips():
    v = torch.tensor([3.0, -2.0, 0.5, -0.1, 0.0, 1.0])
    assert top_set(v, 0.5, "positive").tolist() == [True, False, True, False, False, True]
    assert top_set(v, 0.5, "negative").tolist() == [False, True, False, True, False, False]
    s = _scores(4)
    back = unflatten(flatten(s), s)
    assert all(torch.equal(back[n].float(), s.scores[n]) for n in NAMES)


def test_ablation_curve_books_predicted_and_measured():
    """A linear objective (J = sum of the alpha left in place): measured equals predicted exactly, and the top
    set beats the random control (H1)."""
    s = _scores(5, planted=NAMES[0])
    total = float(flatten(s).sum())

    def measure(edit):
        if edit is None:
            return total
        return total - sum(float(s.scores[n][m].double().sum()) for n, m in edit.masks.items())

    curve = ablation_curve(s, [0.001, 0.01, 0.05], measure, sign="positive", seed=0)
    assert curve["original"] == pytest.approx(total)
    for p in curve["points"]:
        assert p["measured"] == pytest.approx(p["predicted"], abs=1e-6)
        assert p["random_measured"] == pytest.approx(p["random_predicted"], abs=1e-6)
        assert p["measured"] < p["random_measured"]
        assert p["n"] == p["n_requested"] == max(1, round(p["fraction"] * 6000))


def test_generic_and_unique_components():
    base = torch.zeros(1000)
    a, b, c = base.clone(), base.clone(), base.clone()
    a[:10] = b[:10] = c[:10] = 5.0      # generic: in every top set
    a[10:20], b[20:30], c[30:40] = 4.0, 4.0, 4.0   # unique to each
    out = generic_unique({"a": a, "b": b, "c": c}, fraction=0.02)
    assert out["n_generic"] == 10 and out["n_unique"] == 30 and out["n_in_any"] == 40
    assert out["per_concept"]["a"] == {"n_top": 20, "generic_share": 0.5, "unique_share": 0.5}


def test_stability_table_and_settle_k():
    gen = torch.Generator().manual_seed(6)
    truth = torch.randn(5000, generator=gen)
    # an estimate with K samples: the truth plus noise shrinking as 1/sqrt(K)
    est = {("trajectory", s, k): truth + torch.randn(5000, generator=gen) * 2 / math.sqrt(k)
           for s in (0, 1) for k in (1, 4, 16, 64)}
    rows = stability_table(est, truth, fraction=0.05)
    by_k = {k: [r["spearman"] for r in rows if r["k"] == k] for k in (1, 4, 16, 64)}
    assert by_k[1][0] < by_k[4][0] < by_k[16][0] < by_k[64][0]
    assert settle_k(rows, "trajectory", 0.85) == 16   # noise sd 0.5 at K = 16: rho ~ 0.89; K = 4: ~ 0.70
    assert settle_k(rows, "trajectory", 0.9999) is None


def test_bucket_profile_and_overlap():
    early = {n: torch.zeros(4, 5) for n in NAMES}
    late = {n: torch.zeros(4, 5) for n in NAMES}
    early[NAMES[0]][0, :] = 2.0   # down.0 acts early
    late[NAMES[1]][1, :] = 3.0    # up.0 acts late
    parts = [AttributionScores(early), AttributionScores(late)]
    groups = SDBackbone.group_names(NAMES, "block")
    prof = {r["group"]: r for r in bucket_profile(parts, groups)}
    assert prof["down.0"]["share"] == [1.0, 0.0] and prof["up.0"]["share"] == [0.0, 1.0]
    assert prof["down.0"]["net"] == [10.0, 0.0] and prof["mid"]["share"] == [0.0, 0.0]
    full = AttributionScores({n: early[n] + late[n] for n in NAMES})
    ov = bucket_overlap(parts, full, fraction=10 / 60)  # the top 10: each bucket holds 5 of them
    assert ov["pairs"][0][0] == 1.0 and ov["pairs"][0][1] == 0.0
    assert ov["with_full"] == [0.5, 0.5]
