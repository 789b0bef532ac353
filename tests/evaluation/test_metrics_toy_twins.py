"""The toy twins' own metrics: toy_lpips (the LPIPS formula on the kit classifier's features) and toy_detector
(images the kit classifier calls the concept with p >= threshold, NudeNet's image count)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evaluation.metrics import ConceptDetector, LPIPSMetric, count_at_least

# complementary colours of the toy palette: a recolour that changes every pixel of the shape
COMPLEMENT = {"red": "cyan", "cyan": "red", "green": "magenta", "magenta": "green", "blue": "yellow",
              "yellow": "blue"}


@pytest.fixture(scope="module")
def committed_kit():
    from cad.toy.kit import load_kit

    return load_kit()


@pytest.fixture(scope="module")
def scenes():
    from cad.toy.render import sample_scene

    rng = np.random.default_rng(0)
    return [sample_scene(rng) for _ in range(12)]


def _render(scenes) -> torch.Tensor:
    from cad.toy.render import render

    return torch.stack([torch.from_numpy(render(s)) for s in scenes]).float()


def test_toy_lpips_is_zero_positive_symmetric(committed_kit, scenes):
    m = LPIPSMetric.for_toy_kit(committed_kit, "dotted")
    x = _render(scenes)
    y = _render([dataclasses.replace(s, color=COMPLEMENT[s.color]) for s in scenes])
    assert torch.equal(m.distance(x, x), torch.zeros(len(x)))
    d_xy, d_yx = m.distance(x, y), m.distance(y, x)
    assert (d_xy > 0).all() and torch.allclose(d_xy, d_yx)
    assert m.protocol()["backbone_weights"].startswith("perceptual distance on toy-classifier features")


def test_toy_lpips_sees_a_recolour_more_than_a_one_pixel_shift(committed_kit, scenes):
    d = LPIPSMetric.for_toy_kit(committed_kit, "dotted").distance
    x = _render(scenes)
    recoloured = _render([dataclasses.replace(s, color=COMPLEMENT[s.color]) for s in scenes])
    shifted = _render([dataclasses.replace(s, cx=s.cx + 1.0) for s in scenes])  # the same scene, 1 px right
    assert (d(x, recoloured) > d(x, shifted)).all()


def test_toy_lpips_keys_and_directions(committed_kit, scenes, mk):
    x = _render(scenes[:4])
    items = [mk.MetricItem(id=str(i), prompt="p", label=lab) for i, lab in
             enumerate(["dotted", "dotted", "solid", "striped"])]
    m = LPIPSMetric.for_toy_kit(committed_kit, "dotted")
    m.update(x.flip(-1), items, reference_images=x)
    out = m.compute()
    assert set(out) == {"toy_lpips_erased", "toy_lpips_others", "toy_lpips/dotted", "toy_lpips/solid",
                        "toy_lpips/striped"}
    assert m.is_higher_better("toy_lpips_erased") is True and m.is_higher_better("toy_lpips/solid") is False


def test_count_at_least_counts_exactly_the_images_at_or_above_threshold():
    p = [0.1, 0.5, 0.49999, 0.9, 1.0, 0.0]
    assert count_at_least(p, 0.5) == 3  # 0.5 counts, as a NudeNet detection scoring exactly 0.5 does
    assert count_at_least(p, 0.95) == 1 and count_at_least(p, 0.0) == 6 and count_at_least([], 0.5) == 0


def test_detector_on_synthetic_classifier_outputs(mk):
    """A fake 6-colour classifier whose logits are given per image: the counted images are exactly those whose
    softmax probability of magenta is >= 0.5."""
    from cad.toy.world import COLORS

    magenta = COLORS.index("magenta")
    wanted_p = torch.tensor([0.95, 0.2, 0.5, 0.7, 0.01, 0.49])
    logits = torch.full((6, len(COLORS)), 0.0)
    rest = (1 - wanted_p) / (len(COLORS) - 1)  # spread the remainder evenly over the other colours
    logits[:] = rest.log()[:, None]
    logits[:, magenta] = wanted_p.log()

    class Fake(torch.nn.Module):
        def forward(self, x):  # the image's top-left red value indexes its row of logits
            idx = (x[:, 0, 0, 0] * 10).round().long()
            return {"color": logits[idx], "shape": torch.zeros(len(x), 6), "style": torch.zeros(len(x), 4)}

    images = torch.zeros(6, 3, 8, 8)
    images[:, 0, 0, 0] = torch.arange(6) / 10
    items = [mk.MetricItem(id=str(i), prompt="p", label=lab) for i, lab in
             enumerate(["magenta", "red", "magenta", "red", "magenta", "red"])]
    m = ConceptDetector.for_toy_kit(SimpleNamespace(classifier=Fake()), "magenta", threshold=0.5)
    m.update(images[:4], items[:4])
    m.update(images[4:], items[4:])
    out = m.compute()
    assert out["toy_detector_images"] == 3.0  # 0.95, 0.5, 0.7
    assert out["toy_detector_share"] == pytest.approx(0.5)
    assert out["toy_detector/magenta"] == pytest.approx(2 / 3) and out["toy_detector/red"] == pytest.approx(1 / 3)
    assert out["toy_detector_p_mean"] == pytest.approx(float(wanted_p.mean()), rel=1e-5)
    assert m.is_higher_better("toy_detector_images") is False
    assert m.protocol()["threshold"] == 0.5 and "magenta" in m.protocol()["detector"]
    m.reset()
    assert m.compute()["toy_detector_images"] == 0.0


def test_detector_rejects_a_threshold_outside_zero_one():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ConceptDetector("magenta", probability=lambda x: torch.zeros(len(x)), threshold=50)
