"""experiment=analysis end to end on the micro toy kit: figures, a stable JSON schema, a summary, the cache (a
second run computes no attribution), refusals before any model loads, and W&B images and tables."""

from __future__ import annotations

import json

import pytest

from experiments.analysis import run_analysis
from experiments.config import compose_config
from experiments.run import run_from_config
from experiments.validate import ConfigError

MICRO = ["model=toy", "experiment=analysis", "model.steps=3", "model.guidance=4.0", "attribution.steps=3",
         "attribution.num_samples=2", "attribution.num_images=2", "analysis.concepts=[circle,ring,red]",
         "analysis.fractions=[0.001,0.01]", "analysis.stability.ks=[1,2]", "analysis.stability.seeds=[0,1]",
         "analysis.stability.restart_ks=[1]", "analysis.time_buckets=3", "analysis.spaces.concepts=[red]",
         "analysis.spaces.names=[ff,cross_attn]"]

# The JSON's shape: what docs/analysis_toy.md and downstream notebooks read. Change it with SCHEMA.
TOP_KEYS = {"schema", "model", "space", "level", "fraction", "concepts", "protocol", "attribution", "parts", "where",
            "concentration", "overlap", "stability", "time", "spaces", "figures", "timings_s",
            "attributions_computed"}
WHERE_ROW = {"group", "n", "weight_share", "pos", "neg", "pos_share", "neg_share", "top_pos_share", "top_neg_share",
             "random_pos_share", "random_neg_share"}
ABLATION_POINT = {"fraction", "n", "n_requested", "predicted", "measured", "gap", "random_predicted",
                  "random_measured", "random_gap"}


def test_analysis_end_to_end(toy, tmp_path):
    out = run_from_config(compose_config(MICRO), tmp_path / "run1")
    run = tmp_path / "run1"
    data = json.loads((run / "analysis.json").read_text())
    assert set(data) == TOP_KEYS and data["schema"] == 1
    assert data["concepts"] == ["circle", "ring", "red"]
    # where: every group once, in forward order; the shares of each top set add up to one
    where = data["where"]["per_concept"]["circle"]
    assert {r["group"] for r in where} == set(data["where"]["groups"]) and set(where[0]) == WHERE_ROW
    assert sum(r["top_pos_share"] for r in where) == pytest.approx(1.0)
    assert sum(r["weight_share"] for r in where) == pytest.approx(1.0)
    # concentration: Gini in [0, 1], one ablation point per share with its random control, for both objectives
    c = data["concentration"]["per_concept"]["ring"]
    assert 0 < c["gini_pos"] < 1 and 0 < c["gini_neg"] < 1
    assert [p["fraction"] for p in c["erase"]["points"]] == [0.001, 0.01]
    assert set(c["erase"]["points"][0]) == ABLATION_POINT
    assert c["amplify"]["sign"] == "negative" and len(c["amplify"]["points"]) == 2
    # zeroing the top positive components shrinks the edited model's own concept gap more than random ones do
    assert c["erase"]["points"][-1]["gap"] < c["erase"]["points"][-1]["random_gap"]
    # overlap: a concept with itself is 1
    ov = data["overlap"]
    assert [ov["jaccard"][i][i] for i in range(3)] == [1.0, 1.0, 1.0] and ov["names"] == ["circle", "ring", "red"]
    assert ov["generic_unique"]["n_concepts"] == 3
    # stability: every (estimator, seed, K) against the reference
    st = data["stability"]
    assert {(r["estimator"], r["seed"], r["k"]) for r in st["rows"]} == \
        {("trajectory", 0, 1), ("trajectory", 0, 2), ("trajectory", 1, 1), ("trajectory", 1, 2),
         ("restart", 0, 1), ("restart", 1, 1)}
    # time: 3 buckets that sum to the full alpha
    t = data["time"]["per_concept"]["red"]
    assert t["buckets"] == [[0, 1], [1, 2], [2, 3]]
    assert t["sum_max_abs_error"] <= 1e-5 * t["max_abs_alpha"]
    assert len(data["time"]["mean_share"]) == len(data["time"]["groups"])
    assert all(sum(row) == pytest.approx(1.0) for row in data["time"]["mean_share"])
    # spaces: one row per (concept, space)
    assert [(r["concept"], r["space"]) for r in data["spaces"]["rows"]] == [("red", "ff"), ("red", "cross_attn")]
    # figures: written, named in the JSON, PNG files
    for key in ("where_circle", "where_heatmap_top_pos_share", "lorenz_positive", "ablation_erase_ring",
                "ablation_amplify_red", "overlap_jaccard", "overlap_spearman", "stability", "time_profile"):
        path = run / "figures" / f"{key}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and data["figures"][key] == str(path)
    summary = (run / "summary.md").read_text()
    for heading in ("## Where", "## How concentrated", "## Which concepts share", "## How stable", "## When",
                    "## Which space"):
        assert heading in summary
    assert out["attributions_computed"] > 0
    # a second run reads every attribution from the cache, and hands its figures and tables to the logger
    logger = _Recorder()
    again = run_analysis(compose_config(MICRO + ["analysis.parts=[where,overlap,stability,time]"]),
                         tmp_path / "run2", logger=logger)
    assert again["attributions_computed"] == 0
    assert {k for k, _ in logger.images} == {f"analysis/{k}" for k in again["figures"]}
    assert {k for k, _ in logger.tables} == {"analysis/where", "analysis/stability"}


class _Recorder:
    """The logger interface of evaluation/wandb_log.py, recording what a run logs."""

    def __init__(self):
        self.images, self.tables = [], []

    def log_image(self, key, image, caption=None):
        self.images.append((key, image))

    def log_table(self, key, rows):
        self.tables.append((key, rows))

    def log_metrics(self, metrics, step=None):
        pass


def test_analysis_refuses_bad_settings_before_loading(toy, tmp_path):
    with pytest.raises(ConfigError, match="analysis.parts"):
        run_from_config(compose_config(MICRO + ["analysis.parts=[where,wher]"]), tmp_path / "a")
    with pytest.raises(ConfigError, match="compares concepts"):
        run_from_config(compose_config(MICRO + ["analysis.concepts=[circle]"]), tmp_path / "b")
    with pytest.raises(ConfigError, match="time_buckets=9"):
        run_from_config(compose_config(MICRO + ["analysis.time_buckets=9"]), tmp_path / "c")
    with pytest.raises(ConfigError, match="unknown concept"):
        run_from_config(compose_config(MICRO + ["analysis.concepts=[circle,hexagon]"]), tmp_path / "d")
    with pytest.raises(ConfigError, match=r"analysis\.fraction"):
        run_from_config(compose_config(MICRO + ["analysis.fraction=2"]), tmp_path / "e")
