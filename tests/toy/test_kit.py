"""The micro kit: trainer, save/load with checksums, the evaluator API, and the whole
attribute -> edit -> generate -> score chain on a kit trained in seconds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cad.toy.kit import KitError, load_kit
from cad.toy.quality import concept_accuracy, concept_prompt, head_accuracy, measure_quality, sample
from cad.toy.render import render_dataset


def test_kit_layout_and_manifest(micro_kit):
    m = micro_kit.manifest
    assert m["recipe"]["name"] == "micro" and m["seed"] == 0
    assert {"pipeline/model_index.json", "pipeline/unet/config.json", "classifier/model.safetensors",
            "clip/open_clip_model.safetensors", "fid_reference.safetensors"} <= set(m["files"])
    assert all(len(d) == 64 for d in m["files"].values())
    assert "torch" in m["versions"] and m["sampler"]["scheduler"] == "ddim"
    from cad.toy.kit import world_fingerprint

    assert m["world"]["fingerprint"] == world_fingerprint(32) != world_fingerprint(16)
    vae_cfg = json.loads((micro_kit.pipeline_path / "vae" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] == pytest.approx(m["training"]["stats"]["vae"]["scaling_factor"])


def test_load_verifies_checksums(micro_kit, tmp_path):
    bad = tmp_path / "kit"
    shutil.copytree(micro_kit.path, bad)
    load_kit(bad)  # an intact copy loads
    f = bad / "classifier" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(KitError, match="checksum.*experiments.toy_kit"):
        load_kit(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(KitError, match="manifest.json missing"):
        load_kit(bad)


def test_evaluator_api(micro_kit):
    d = render_dataset(8, seed=5)
    x = torch.from_numpy(d.images)
    logits = micro_kit.classifier(x)
    assert set(logits) == {"shape", "style", "color"}
    assert logits["shape"].shape == (8, 6) and logits["style"].shape == (8, 4) and logits["color"].shape == (8, 6)
    # other sizes are resized, not rejected
    assert micro_kit.classifier(torch.nn.functional.interpolate(x, size=64))["color"].shape == (8, 6)
    u8 = (x * 255).round().to(torch.uint8)
    feats = micro_kit.fid_features(u8)
    assert feats.shape == (8, micro_kit.fid_features.num_features) and feats.dtype == torch.float32
    with pytest.raises(TypeError, match="uint8"):
        micro_kit.fid_features(x)
    ref = micro_kit.fid_reference()
    assert ref["mu"].shape == (micro_kit.fid_features.num_features,)
    model, preprocess, tokenizer = micro_kit.clip
    tokens = tokenizer(["a red striped circle", "a ring"])
    assert tokens.shape == (2, 16)
    txt = model.encode_text(tokens)
    from PIL import Image

    img = preprocess(Image.fromarray((d.images[0].transpose(1, 2, 0) * 255).astype(np.uint8)))
    assert model.encode_image(img[None]).shape == txt[:1].shape


def test_pipeline_loads_like_sd(micro_kit):
    from cad.loading import load_pipeline

    pipe = load_pipeline(micro_kit.pipeline_path)
    assert pipe.unet.dtype == torch.float32
    assert any(".ff." in n for n, _ in pipe.unet.named_parameters())
    assert len(pipe.tokenizer("a circle").input_ids) == 4  # world words are single tokens
    a = sample(pipe, ["a circle", "a red shape"], [0, 1], steps=2, guidance=3.0)
    b = sample(pipe, ["a red shape"], [1], steps=2, guidance=3.0)
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a[1:], b)  # per-item seeds: batch composition does not change an image


# Bit for bit only where both trainings run the same kernels: Adam turns a last-bit difference in a gradient
# into an lr-sized step (1e-3 here under CAD_TEST_MKLDNN=mixed), so another machine's kit is not these bytes.
@pytest.mark.same_kernels("run-to-run determinism of training on one machine")
def test_training_is_deterministic(micro_kit, tmp_path):
    """Same recipe, same seed -> the same weights (the committed kit is reproducible on its machine)."""
    from cad.toy.kit import train_kit, with_overrides

    r = with_overrides("micro", vae_steps=2, unet_steps=2, clf_steps=2, clip_steps=2, n_train=32, n_test=16)
    k1 = train_kit(tmp_path / "a", r, progress=False, measure=False)
    k2 = train_kit(tmp_path / "b", r, progress=False, measure=False)
    skip = {"manifest.json"}
    for rel, digest in k1.manifest["files"].items():
        if rel not in skip:
            assert k2.manifest["files"][rel] == digest, rel


def test_attribute_edit_generate_score_chain(micro_kit):
    import cad

    pipe = micro_kit.load_pipeline()
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    scores = cad.attribute(pipe, concept_prompt("circle"), steps=3, guidance=3.0, progress=False)
    edit = cad.Edit.from_scores(scores, ratio=0.05, sign="positive")
    control = cad.Edit.random_like(edit, seed=1)
    assert edit.n_ablated == control.n_ablated > 0
    prompts, seeds = [concept_prompt("circle")] * 4, list(range(4))
    base = sample(pipe, prompts, seeds, steps=3, guidance=3.0)
    with edit.applied(pipe):
        erased = sample(pipe, prompts, seeds, steps=3, guidance=3.0)
    assert not torch.equal(base, erased)
    for n, p in pipe.unet.named_parameters():
        assert torch.equal(p, before[n]), n  # bit-exact restore
    acc = concept_accuracy(micro_kit.classifier, erased, "circle")
    assert 0.0 <= acc <= 1.0
    labels = render_dataset(4, seed=0).labels
    assert set(head_accuracy(micro_kit.classifier, base, labels)) == {"shape", "style", "color"}


def test_measure_quality_reports_bars(micro_kit):
    q = measure_quality(micro_kit, progress=False)
    assert len(q["generated"]) == 16 and set(q["passes"]) == {
        "classifier_rendered", "classifier_vae", "generated_shape", "generated_style", "generated_color"}
    assert np.isfinite(q["fid_generated"]) and q["fid_vae_recon"] >= 0


def test_committed_kit_matches_committed_recipe():
    """The kit shipped in cad/toy/kit/ loads, passes its checksums and was made by the current full recipe
    (change the recipe -> retrain with `python -m experiments.toy_kit` and recommit the kit)."""
    from dataclasses import asdict

    from cad.toy.kit import RECIPES, world_fingerprint

    kit = load_kit()
    recipe = json.loads(json.dumps(asdict(RECIPES["full"])))
    assert kit.manifest["recipe"] == recipe
    assert kit.manifest["world"]["fingerprint"] == world_fingerprint(32), "the renderer changed: retrain the kit"
    assert kit.classifier(torch.zeros(1, 3, 32, 32))["shape"].shape == (1, 6)
    assert set(kit.manifest["quality"]["passes"]) == {
        "classifier_rendered", "classifier_vae", "generated_shape", "generated_style", "generated_color"}


def test_register_clip_config_leaves_no_files_and_latest_wins(tmp_path, monkeypatch):
    import tempfile

    import open_clip

    from cad.toy.models import clip_config, register_clip_config

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for width in (32, 48):
        name = register_clip_config(clip_config(width=width, embed_dim=width), name="cad-test-clip")
    assert list(tmp_path.iterdir()) == []
    model = open_clip.create_model(name)
    assert model.text_projection.shape[-1] == 48
