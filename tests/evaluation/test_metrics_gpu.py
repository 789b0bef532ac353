"""On a CUDA device the metrics give the CPU's numbers (tiny backbones; real weights are not needed)."""

from __future__ import annotations

import copy

import pytest
import torch

from evaluation.metrics import FID, ClassifierAccuracy, ClipScore, FeatureLPIPS, LPIPSMetric

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.fail("gpu-marked test run without a CUDA device: deselect with -m 'not gpu'")


def test_metrics_match_cpu_on_cuda(tmp_path, mk, tiny_clip):
    images = mk.render_shapes(12, size=32, seed=11)
    for i, im in enumerate(mk.render_shapes(12, size=32, seed=12)):
        im.save(tmp_path / f"{i:02d}.png")
    labels = ["red", "green", "blue"] * 4
    items = [mk.MetricItem(id=str(i), prompt=f"a {c} shape", label=c) for i, c in enumerate(labels)]
    results = {}
    for dev in ("cpu", "cuda"):
        out = {}
        clf = ClassifierAccuracy("red", classifier=mk.MeanColorClassifier(mk.PALETTE).to(dev),
                                 class_names=list(mk.PALETTE), device=dev)
        clf.update(images, items)
        out.update(clf.compute())
        model, pre, tok = tiny_clip
        clip = ClipScore(copy.deepcopy(model).to(dev), pre, tok, device=dev)
        clip.update(images, items)
        out.update(clip.compute())
        fid = FID(tmp_path, features=mk.TinyFeatures(), cache_dir=tmp_path / f"cache-{dev}", device=dev)
        fid.update(images, items)
        out.update(fid.compute())
        lp = LPIPSMetric("red", distance=FeatureLPIPS(mk.TinyPyramid().to(dev)), device=dev)
        lp.update(images, items, reference_images=images[::-1])
        out.update(lp.compute())
        results[dev] = out
    for key, cpu in results["cpu"].items():
        assert results["cuda"][key] == pytest.approx(cpu, rel=1e-3, abs=1e-4), key
