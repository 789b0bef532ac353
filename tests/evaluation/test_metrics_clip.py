"""CLIP score: exact cosines on a hand-built embedding model, a real tiny open_clip CLIP end to end."""

from __future__ import annotations

import math

import pytest
import torch

from evaluation.metrics import ClipScore


class FixedEmbeddings(torch.nn.Module):
    """encode_image -> e_x for every image, encode_text -> the vector its prompt names: known cosines."""

    TEXT = {"a": [1.0, 0.0], "b": [0.6, 0.8], "c": [-0.8, 0.6]}

    def encode_image(self, pix):
        return torch.tensor([[2.0, 0.0]]).expand(len(pix), 2)  # unnormalised on purpose

    def encode_text(self, tok):
        return tok


def _tokenizer(prompts):
    return torch.tensor([FixedEmbeddings.TEXT[p.split()[-1]] for p in prompts]) * 3.0


def _to_tensor(im):
    return torch.zeros(3, 4, 4)


def test_exact_cosines_and_both_conventions(mk):
    m = ClipScore(FixedEmbeddings(), _to_tensor, _tokenizer)
    items = [mk.MetricItem(id=str(i), prompt=f"photo of {w}") for i, w in enumerate("abc")]
    m.update([mk.solid((0, 0, 0))] * 3, items)
    cos = [1.0, 0.6, -0.8]
    out = m.compute()
    assert out["clip_score_cos_mean"] == pytest.approx(sum(cos) / 3)
    assert out["clip_score_100"] == pytest.approx(100 * (1.0 + 0.6 + 0.0) / 3)  # negative cosine clipped at 0
    assert m.higher_is_better == {"clip_score_cos_mean": True, "clip_score_100": True}
    m.reset()
    assert all(math.isnan(v) for v in m.compute().values())


def test_tiny_open_clip_end_to_end(mk, tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    images = mk.render_shapes(5, size=48, seed=1)
    items = [mk.MetricItem(id=str(i), prompt=f"a drawing number {i}") for i in range(5)]
    m = ClipScore(model, preprocess, tokenizer, batch_size=2, weights="tiny random open_clip")
    m.update(images[:3], items[:3])
    m.update(images[3:], items[3:])
    out = m.compute()
    # recompute by hand through open_clip's public encoders
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer([it.prompt for it in items])), dim=-1)
    cos = (img * txt).sum(-1).double()
    assert out["clip_score_cos_mean"] == pytest.approx(float(cos.mean()), abs=1e-5)
    assert out["clip_score_100"] == pytest.approx(float((100 * cos.clamp(min=0)).mean()), abs=1e-3)
    p = m.protocol()
    assert p["backbone_weights"] == "tiny random open_clip" and p["image_sizes"] == ["48x48"] and p["n_images"] == 5


def test_injected_model_needs_its_preprocess_and_tokenizer(tiny_clip, mk):
    with pytest.raises(ValueError, match="preprocess= and tokenizer="):
        ClipScore(tiny_clip[0])
    m = ClipScore(*tiny_clip)
    with pytest.raises(TypeError, match="no attribute 'prompt'"):
        m.update([mk.solid((1, 2, 3))], [object()])
