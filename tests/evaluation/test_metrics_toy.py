"""The metrics accept the toy world's evaluators (cad.toy.models, the parts a ToyKit carries), untrained
here: what is checked is the plumbing (heads, uint8 features, open_clip model + world tokenizer, shipped
reference statistics), not the kit's quality."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.metrics import FID, ClassifierAccuracy, ClipScore


@pytest.fixture(scope="module")
def toy_kit(tmp_path_factory):
    import open_clip

    from cad.toy.models import ToyClassifier, ToyFidFeatures, clip_config, register_clip_config
    from cad.toy.tokenizer import MAX_LENGTH, build_world_tokenizer

    torch.manual_seed(0)
    clf = ToyClassifier(width=8).eval()
    feats = ToyFidFeatures(clf)
    tok_dir = tmp_path_factory.mktemp("toy-tok")
    tokenizer = build_world_tokenizer(MAX_LENGTH)
    tokenizer.save_pretrained(tok_dir)
    cfg = clip_config(width=32, embed_dim=32, vocab_size=len(tokenizer), context_length=MAX_LENGTH)
    model = open_clip.create_model(register_clip_config(cfg)).eval()
    preprocess = open_clip.image_transform(32, is_train=False)
    clip_tok = open_clip.tokenizer.HFTokenizer(str(tok_dir), context_length=MAX_LENGTH)

    # reference statistics of the features over some rendered scenes, as the kit ships them
    from cad.toy.render import render, sample_scene

    rng = np.random.default_rng(0)
    ref_images = [Image.fromarray((render(sample_scene(rng)).transpose(1, 2, 0) * 255).round().astype(np.uint8))
                  for _ in range(12)]
    with torch.no_grad():
        f = feats(torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in ref_images])).double()
    stats = {"mu": f.mean(0), "sigma": torch.cov(f.T), "n": len(f)}
    return SimpleNamespace(classifier=clf, fid_features=feats, clip=(model, preprocess, clip_tok),
                           fid_reference=lambda: stats, ref_images=ref_images, path=None)


def test_toy_classifier_reads_the_targets_head(toy_kit, mk):
    m = ClassifierAccuracy.for_toy_kit(toy_kit, "circle")
    assert m.head == "shape" and m.class_names[0] == "circle"
    items = [mk.MetricItem(id=str(i), prompt="a red circle", label=lab) for i, lab in enumerate(["circle", "square"])]
    m.update(toy_kit.ref_images[:2], items)
    out = m.compute()
    assert out["acc_target"] in (0.0, 1.0) and out["acc_others"] in (0.0, 1.0)
    assert ClassifierAccuracy.for_toy_kit(toy_kit, "striped").head == "style"


def test_toy_clip_with_world_tokenizer(toy_kit, mk):
    m = ClipScore.for_toy_kit(toy_kit)
    m.update(toy_kit.ref_images[:3], [mk.MetricItem(id=str(i), prompt="a red striped circle") for i in range(3)])
    out = m.compute()
    assert -1.0 <= out["clip_score_cos_mean"] <= 1.0 and 0.0 <= out["clip_score_100"] <= 100.0


def test_toy_fid_against_shipped_statistics_equals_folder(toy_kit, tmp_path):
    shipped = FID.for_toy_kit(toy_kit)
    shipped.update(toy_kit.ref_images, None)
    assert abs(shipped.compute()["fid"]) < 1e-4  # the reference set itself
    for i, im in enumerate(toy_kit.ref_images):
        im.save(tmp_path / f"{i:02d}.png")
    folder = FID.for_toy_kit(toy_kit, tmp_path, cache_dir=tmp_path / "cache")
    other = [im.transpose(Image.Transpose.ROTATE_90) for im in toy_kit.ref_images]
    shipped.reset()
    shipped.update(other, None)
    folder.update(other, None)
    a, b = shipped.compute()["fid"], folder.compute()["fid"]
    assert math.isfinite(a) and a == pytest.approx(b, rel=1e-5, abs=1e-8)
    assert shipped.protocol()["reference_dir"] == "precomputed statistics"


def test_fid_reference_arguments(toy_kit, tmp_path):
    with pytest.raises(ValueError, match="exactly one reference"):
        FID(features=toy_kit.fid_features)
    with pytest.raises(ValueError, match="same feature extractor"):
        FID(reference={"mu": torch.zeros(3), "sigma": torch.eye(3), "n": 5}, features=toy_kit.fid_features)
