"""Real-weight loaders: each loading call, its clear offline error (deterministic: empty caches, offline
mode), and, marked `network`, the real backbones themselves."""

from __future__ import annotations

import math

import pytest
import torch

from evaluation.metrics import (
    FID,
    ClassifierAccuracy,
    ClipScore,
    LPIPSMetric,
    WeightsUnavailableError,
    load_inception,
    load_lpips_alexnet,
    load_openai_clip,
    load_resnet50,
)


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    """Nothing cached anywhere torch hub or open_clip looks, and offline mode on."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_resnet50_offline_error_names_weights_and_fix(empty_caches):
    with pytest.raises(WeightsUnavailableError) as e:
        load_resnet50()
    msg = str(e.value)
    assert "ResNet50_Weights.IMAGENET1K_V2" in msg and "resnet50-11ad3fa6.pth" in msg
    assert "TORCH_HOME" in msg and "weights_path" in msg and str(empty_caches / "torch") in msg
    with pytest.raises(WeightsUnavailableError, match="IMAGENET1K_V2"):
        ClassifierAccuracy("tench")  # the metric's default path goes through the same loader


def test_resnet50_loads_a_local_weights_file(tmp_path):
    """The loading call itself, minus the download: a torchvision ResNet-50 state dict from a file."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    path = tmp_path / "resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    model, preprocess, classes = load_resnet50(str(path))
    assert len(classes) == 1000 and classes[217] == "English springer"
    x = preprocess(torch.rand(2, 3, 64, 64))
    assert x.shape == (2, 3, 224, 224) and model(x).shape == (2, 1000)
    with pytest.raises(WeightsUnavailableError, match="could not read ResNet-50 weights"):
        (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
        load_resnet50(str(tmp_path / "junk.pth"))


def test_openai_clip_offline_error(empty_caches):
    with pytest.raises(WeightsUnavailableError) as e:
        load_openai_clip(cache_dir=str(empty_caches / "hf"))
    msg = str(e.value)
    assert "ViT-B-32" in msg and "'openai'" in msg and "HF_HOME" in msg and "pretrained=" in msg
    with pytest.raises(ValueError, match="no pretrained tag"):
        load_openai_clip(pretrained="not-a-tag", cache_dir=str(empty_caches / "hf"))


def test_openai_clip_offline_uses_the_cached_file(empty_caches):
    """Offline, a file already in open_clip's download cache is what gets loaded (here: a bad one)."""
    import open_clip

    url = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["url"]
    cache = empty_caches / "clip"
    cache.mkdir()
    (cache / url.rsplit("/", 1)[-1]).write_bytes(b"not weights")
    with pytest.raises(WeightsUnavailableError, match="could not load open_clip ViT-B-32"):
        load_openai_clip(cache_dir=str(cache))


def test_inception_offline_error(empty_caches, tmp_path):
    with pytest.raises(WeightsUnavailableError) as e:
        load_inception()
    msg = str(e.value)
    assert "InceptionV3" in msg and "weights-inception-2015-12-05-6726825d.pth" in msg and "TORCH_HOME" in msg
    with pytest.raises(WeightsUnavailableError, match="InceptionV3"):
        FID(tmp_path)


def test_lpips_alexnet_offline_error(empty_caches):
    with pytest.raises(WeightsUnavailableError) as e:
        load_lpips_alexnet()
    msg = str(e.value)
    assert "AlexNet" in msg and "alexnet-owt-7be5be79.pth" in msg and "TORCH_HOME" in msg
    with pytest.raises(WeightsUnavailableError, match="AlexNet"):
        LPIPSMetric("Van Gogh")


def test_clip_score_default_goes_through_the_loader(empty_caches):
    with pytest.raises(WeightsUnavailableError, match="ViT-B-32"):
        ClipScore(cache_dir=str(empty_caches / "hf"))


# -- real weights (need internet once, then the caches) ----------------------------------------------------
@pytest.mark.network
def test_real_resnet50_classifies_rendered_images(mk):
    m = ClassifierAccuracy("tench", offline=False)
    m.update(mk.render_shapes(2, size=256), [mk.MetricItem(id=str(i), prompt="", label="tench") for i in range(2)])
    assert 0.0 <= m.compute()["acc_target"] <= 1.0
    assert "IMAGENET1K_V2" in m.protocol()["backbone_weights"]


@pytest.mark.network
def test_real_openai_clip_scores_in_the_usual_range(mk):
    m = ClipScore(offline=False)
    m.update([mk.solid((220, 30, 30), 224)], [mk.MetricItem(id="0", prompt="a plain red square")])
    assert 0.1 < m.compute()["clip_score_cos_mean"] < 0.5


@pytest.mark.network
def test_real_inception_fid_identical_sets(tmp_path, mk):
    for i, im in enumerate(mk.render_shapes(4, size=64, seed=1)):
        im.save(tmp_path / f"{i}.png")
    m = FID(tmp_path, cache_dir=tmp_path / "cache", offline=False)
    m.update(mk.render_shapes(4, size=64, seed=1), None)
    assert abs(m.compute()["fid"]) < 1e-2


@pytest.mark.network
def test_real_lpips_alexnet_zero_on_identical_pairs(mk):
    m = LPIPSMetric("A", offline=False)
    ims = mk.render_shapes(2, size=64)
    m.update(ims, [mk.MetricItem(id=str(i), prompt="", label="A") for i in range(2)], reference_images=ims)
    assert m.compute()["lpips_erased"] == pytest.approx(0.0, abs=1e-6) and math.isnan(m.compute()["lpips_others"])
