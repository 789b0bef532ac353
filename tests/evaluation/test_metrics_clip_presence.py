"""CLIP zero-shot presence on the committed toy kit's CLIP: rendered images of the concept score high, images of
another class low; the real-model variants load open_clip by name and fail offline with the fix."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cad.toy.render import render_dataset
from cad.toy.world import SHAPES
from evaluation.metrics import ClipPresence, WeightsUnavailableError
from evaluation.metrics.clip_presence import concept_texts
from experiments.metric_factory import MetricPreflightError, preflight_metrics


@pytest.fixture(scope="module")
def kit():
    from cad.toy.kit import load_kit

    return load_kit()


def _images(shape: str, n: int = 24, seed: int = 0) -> list[Image.Image]:
    data = render_dataset(n, seed, 32, shape=shape)
    return [Image.fromarray((np.asarray(x).transpose(1, 2, 0) * 255).round().astype(np.uint8)) for x in data.images]


def _presence(metric: ClipPresence, images) -> dict:
    metric.reset()
    metric.update(images, [None] * len(images))
    return metric.compute()


def test_concept_images_score_high_and_another_class_low(kit):
    diamond = {"name": "diamond", "prompt": "a diamond", "base_prompt": "a circle"}
    m = ClipPresence.for_toy_kit(kit, diamond)
    on_diamonds, on_circles = _presence(m, _images("diamond")), _presence(m, _images("circle"))
    assert on_diamonds["clip_presence"] >= 0.6 and on_circles["clip_presence"] <= 0.1
    assert on_diamonds["clip_presence_margin"] > 0 > on_circles["clip_presence_margin"]
    # any concept with anchors: every other shape
    anchored = ClipPresence.for_toy_kit(kit, {"name": "circle", "prompt": "a circle",
                                              "anchors": [f"a {s}" for s in SHAPES if s != "circle"]})
    assert _presence(anchored, _images("circle"))["clip_presence"] >= 0.8
    for other in ("triangle", "cross", "ring"):  # (the kit's CLIP confuses a third of squares with circles)
        assert _presence(anchored, _images(other))["clip_presence"] <= 0.1
    assert m.protocol()["anchors"] == ["a circle"] and m.protocol()["n_images"] == 24


def test_direction_keys_and_bad_concepts(kit):
    erase = ClipPresence.for_toy_kit(kit, {"prompt": "a ring", "base_prompt": ""}, key="clip_presence")
    amplify = ClipPresence.for_toy_kit(kit, {"prompt": "a ring", "base_prompt": ""}, goal="amplify")
    assert erase.is_higher_better("clip_presence") is False and amplify.is_higher_better("clip_presence_margin")
    assert concept_texts({"prompt": "pikachu"}) == ("pikachu", [""])  # no base prompt: the empty prompt
    with pytest.raises(ValueError, match="also an anchor"):
        concept_texts({"name": "x", "prompt": "a ring", "base_prompt": "a ring"})
    with pytest.raises(ValueError, match="no prompt"):
        concept_texts({"name": "x", "prompt": ""})


def test_real_clip_offline_fails_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(WeightsUnavailableError, match="ViT-L-14"):
        ClipPresence("a dog", ["a cat"], model_name="ViT-L-14", pretrained="openai", cache_dir=str(tmp_path / "c"))
    with pytest.raises(MetricPreflightError, match="clip_presence_l14.*ViT-L-14.*offline"):
        preflight_metrics(["clip_presence_l14"], {"name": "x"}, toy=False, offline=True)
    with pytest.raises(MetricPreflightError, match="one CLIP"):
        preflight_metrics(["clip_presence_l14"], {"name": "x"}, toy=True)
