"""Scores files: round trip, provenance, and refusal to load against another model."""

from __future__ import annotations

import json

import pytest
import torch

from cad import AttributionScores, Edit, ScoresMismatchError, unet_fingerprint


def test_round_trip_and_sidecar(small_pipe, erase_scores, tmp_path):
    folder = erase_scores.save(tmp_path / "s")
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "scores.safetensors"]
    meta = json.loads((folder / "meta.json").read_text())
    for key in ("model", "unet_fingerprint", "concept", "objective", "estimator", "steps", "guidance",
                "num_samples", "seed", "space", "package_versions", "unet_calls"):
        assert key in meta, key
    assert meta["unet_fingerprint"] == unet_fingerprint(small_pipe.unet)
    loaded = AttributionScores.load(folder, unet=small_pipe)
    assert loaded.meta == meta and loaded.key == erase_scores.key
    for n, s in erase_scores.scores.items():
        assert torch.equal(loaded.scores[n], s)


def test_refuses_a_different_model(erase_scores, tiny_pipe_factory, tmp_path):
    folder = erase_scores.save(tmp_path / "s")
    other = tiny_pipe_factory(1, image_size=16)  # same architecture, other weights
    with pytest.raises(ScoresMismatchError) as err:
        AttributionScores.load(folder, unet=other.unet)
    msg = str(err.value)
    assert erase_scores.meta["unet_fingerprint"] in msg and unet_fingerprint(other.unet) in msg
    assert "recompute" in msg


def test_refuses_an_edited_model(small_pipe, erase_scores, tmp_path):
    folder = erase_scores.save(tmp_path / "s")
    with Edit.from_scores(erase_scores, 0.01).applied(small_pipe):
        with pytest.raises(ScoresMismatchError, match="fingerprint"):
            AttributionScores.load(folder, unet=small_pipe)
    AttributionScores.load(folder, unet=small_pipe)  # restored model: accepted again


def test_refuses_other_names_or_shapes(small_pipe, erase_scores):
    name = next(iter(erase_scores.scores))
    wrong_shape = AttributionScores({name: torch.zeros(3, 3)}, erase_scores.meta)
    with pytest.raises(ScoresMismatchError, match="shape"):
        wrong_shape.check(small_pipe)
    wrong_name = AttributionScores({"not.a.param": torch.zeros(3)}, erase_scores.meta)
    with pytest.raises(ScoresMismatchError, match="not parameters"):
        wrong_name.check(small_pipe)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="cad.attribute"):
        AttributionScores.load(tmp_path)
