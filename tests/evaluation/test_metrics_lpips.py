"""LPIPS per artist: identical pairs give exactly 0, the erased/others split, pairing from a folder."""

from __future__ import annotations

import math

import pytest
import torch

from evaluation.metrics import FeatureLPIPS, LPIPSMetric


def mean_abs(x0, x1):
    """A transparent distance for checking the grouping arithmetic exactly."""
    return (x0 - x1).abs().mean((1, 2, 3))


def test_identical_pairs_are_exactly_zero_with_feature_lpips(mk):
    dist = FeatureLPIPS(mk.TinyPyramid())
    images = mk.render_shapes(6, size=32, seed=2)
    m = LPIPSMetric("Van Gogh", distance=dist, batch_size=4)
    m.update(images, [mk.MetricItem(id=str(i), prompt="p", label=["Van Gogh", "Monet"][i % 2]) for i in range(6)],
             reference_images=images)
    out = m.compute()
    assert out == {"lpips_erased": 0.0, "lpips_others": 0.0, "lpips/Van Gogh": 0.0, "lpips/Monet": 0.0}


def test_feature_lpips_is_a_distance(mk):
    net = mk.TinyPyramid()
    dist = FeatureLPIPS(net)
    a = torch.stack([torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)])
    b = a.flip(-1)
    d_ab, d_ba = dist(a, b), dist(b, a)
    assert d_ab.shape == (3,) and (d_ab > 0).all() and torch.allclose(d_ab, d_ba)
    assert torch.allclose(dist(a, 0.9 * a + 0.1 * b), dist(a, 0.9 * a + 0.1 * b))  # deterministic
    assert (dist(a, 0.9 * a + 0.1 * b) < d_ab).all()  # a small edit moves less than a big one
    # learned per-channel heads (LPIPS' 1x1 convs): uniform 1/C heads reproduce the channel mean
    uniform = FeatureLPIPS(net, [torch.full((8,), 1 / 8), torch.full((16,), 1 / 16)])
    assert torch.allclose(uniform(a, b), d_ab, rtol=1e-5)


def test_erased_versus_others_known_answers(mk):
    black, grey, white = mk.solid((0, 0, 0)), mk.solid((128, 128, 128)), mk.solid((255, 255, 255))
    originals = [black, black, black, black]
    edited = [white, grey, black, grey]  # distances 1, 128/255, 0, 128/255
    labels = ["vincent van gogh", "Van_Gogh", "Monet", "Picasso"]  # the target matches case/space-insensitively
    items = [mk.MetricItem(id=str(i), prompt="p", label=lab) for i, lab in enumerate(labels)]
    m = LPIPSMetric("Vincent van Gogh", distance=mean_abs)
    m.update(edited[:2], items[:2], reference_images=originals[:2])
    m.update(edited[2:], items[2:], reference_images=originals[2:])
    out = m.compute()
    g = 128 / 255
    # 'vincent van gogh' and 'Van_Gogh' are different names; only the first matches the target
    assert out["lpips_erased"] == pytest.approx(1.0)
    assert out["lpips_others"] == pytest.approx((g + 0 + g) / 3)
    assert out["lpips/Vincent van Gogh"] == pytest.approx(1.0) and out["lpips/Picasso"] == pytest.approx(g)
    assert m.is_higher_better("lpips_erased") is True and m.is_higher_better("lpips_others") is False
    assert m.is_higher_better("lpips/Vincent van Gogh") is True and m.is_higher_better("lpips/Monet") is False
    m.reset()
    assert all(math.isnan(v) for v in m.compute().values())


def test_originals_from_reference_dir(tmp_path, mk):
    originals = mk.render_shapes(3, size=32, seed=8)
    items = [mk.MetricItem(id=f"{i:05d}", prompt="p", label="A" if i else "B") for i in range(3)]
    for it, im in zip(items, originals):
        im.save(tmp_path / f"{it.id}.png")
    m = LPIPSMetric("B", distance=mean_abs, reference_dir=tmp_path)
    m.update(originals, items)  # the way evaluation.score drives it
    assert m.compute()["lpips_erased"] == 0.0 and m.compute()["lpips_others"] == 0.0
    with pytest.raises(FileNotFoundError, match="unedited model"):
        m.update(originals[:1], [mk.MetricItem(id="99999", prompt="p", label="A")])


def test_pairing_errors(mk):
    m = LPIPSMetric("A", distance=mean_abs)
    item = [mk.MetricItem(id="0", prompt="p", label="A")]
    with pytest.raises(ValueError, match="reference_images="):
        m.update([mk.solid((0, 0, 0))], item)
    with pytest.raises(ValueError, match="same size"):
        m.update([mk.solid((0, 0, 0), 32)], item, reference_images=[mk.solid((0, 0, 0), 16)])
    with pytest.raises(ValueError, match="1 images but 2 items"):
        m.update([mk.solid((0, 0, 0))], item * 2, reference_images=[mk.solid((0, 0, 0))])
