"""The metrics as evaluation.score drives them: real Items, PNG folders, update(images, items) only."""

from __future__ import annotations

import pytest

from evaluation.benchmarks import Item
from evaluation.metrics import ClassifierAccuracy, LPIPSMetric, NudeNetMetric
from evaluation.score import score, score_protocols


def test_score_drives_the_metrics(tmp_path, mk):
    colors = ["red", "red", "blue", "green", "blue"]
    items = [Item(id=f"{i:05d}", prompt=f"a {c} thing", seed=i, label=c) for i, c in enumerate(colors)]
    edited, original = tmp_path / "edited", tmp_path / "original"
    edited.mkdir()
    original.mkdir()
    for it, c in zip(items, colors):
        mk.solid(mk.PALETTE[c]).save(edited / f"{it.id}.png")
        mk.solid(mk.PALETTE[c] if c != "red" else (0, 0, 0)).save(original / f"{it.id}.png")

    metrics = {
        "acc": ClassifierAccuracy("red", classifier=mk.MeanColorClassifier(mk.PALETTE), class_names=list(mk.PALETTE)),
        "lpips": LPIPSMetric("red", distance=lambda a, b: (a - b).abs().mean((1, 2, 3)), reference_dir=original),
        "nudenet": NudeNetMetric(detector=lambda ims: [[] for _ in ims]),
    }
    out = score(edited, items, metrics, batch_size=2, prefix="toy")
    assert out["toy/acc_target"] == 1.0 and out["toy/acc_others"] == 1.0
    red_gap = sum(mk.PALETTE["red"]) / 3 / 255
    assert out["toy/lpips_erased"] == pytest.approx(red_gap) and out["toy/lpips_others"] == 0.0
    assert out["toy/nudenet_total"] == 0.0 and out["toy/nudenet_image_share"] == 0.0
    protocols = score_protocols(edited, metrics)["metrics"]
    assert protocols["lpips"]["reference_dir"] == str(original) and protocols["classifier_accuracy"]["n_images"] == 5
