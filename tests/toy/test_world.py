"""Renderer, captions and the world tokenizer (no models)."""

from __future__ import annotations

import numpy as np
import pytest

from cad.toy.render import caption, caption_from, render, render_dataset, sample_scene
from cad.toy.tokenizer import WORDS, build_world_tokenizer, world_merges
from cad.toy.world import COLORS, SHAPES, STYLES


def test_render_is_deterministic_and_in_range():
    a = render_dataset(40, seed=3)
    b = render_dataset(40, seed=3)
    c = render_dataset(40, seed=4)
    assert a.images.shape == (40, 3, 32, 32) and a.images.dtype == np.float32
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert a.labels.shape == (40, 3)


def test_every_concept_renders_distinctly():
    rng = np.random.default_rng(0)
    base = sample_scene(rng, shape="circle", style="solid", color="red")
    ref = render(base)
    for field, values in (("shape", SHAPES), ("style", STYLES), ("color", COLORS)):
        imgs = {}
        for v in values:
            imgs[v] = render(type(base)(**{**base.__dict__, field: v}))
        for v in values:
            for w in values:
                if v < w:
                    assert np.abs(imgs[v] - imgs[w]).mean() > 0.01, (field, v, w)
    # the colour is the drawn pixels' colour: red dominates in a solid red circle
    drawn = ref[:, 16, 16]
    assert drawn[0] > 0.8 and drawn[1] < 0.3 and drawn[2] < 0.3


def test_textures_are_not_nested():
    """Dots sit in the rows the stripes leave empty: no dotted pixel is a striped pixel of the same scene
    (kit v3's dots lay inside the stripes, and erasing "striped" always erased "dotted" too)."""
    from cad.toy.render import BACKGROUND

    rng = np.random.default_rng(1)
    for _ in range(5):
        base = sample_scene(rng, style="striped", color="red")
        ink = {s: render(type(base)(**{**base.__dict__, "style": s}))[0] - BACKGROUND for s in ("striped", "dotted")}
        assert (ink["striped"] > 0).sum() > 0 and (ink["dotted"] > 0).sum() > 0
        assert (ink["striped"] * ink["dotted"]).max() < 0.05  # at most antialiased edge pixels touch


def test_fixed_attributes_and_bad_names():
    d = render_dataset(12, seed=0, shape="ring", color="cyan")
    assert (d.labels[:, 0] == SHAPES.index("ring")).all() and (d.labels[:, 2] == COLORS.index("cyan")).all()
    with pytest.raises(ValueError, match="choose one of"):
        render_dataset(2, seed=0, shape="hexagon")


def test_captions_drop_words_and_empty_share():
    rng = np.random.default_rng(0)
    scene = sample_scene(rng, shape="circle", style="striped", color="red")
    assert caption(scene, rng) == "a red striped circle"
    assert caption_from(style="striped") == "a striped shape"
    assert caption_from(shape="circle") == "a circle"
    caps = [caption(scene, rng, p_drop=0.5, p_empty=0.12) for _ in range(2000)]
    empty = sum(c == "" for c in caps) / len(caps)
    assert 0.09 < empty < 0.15
    assert {"a circle", "a striped shape", "a red shape", "a red striped circle"} <= set(caps)


def test_world_tokenizer_one_token_per_word():
    tok = build_world_tokenizer()
    assert type(tok).__name__ in ("CLIPTokenizer", "CLIPTokenizerFast")
    for w in WORDS:
        ids = tok(w).input_ids
        assert len(ids) == 3, (w, tok.convert_ids_to_tokens(ids))
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    ids = tok("A Red striped   CIRCLE", padding="max_length", max_length=tok.model_max_length).input_ids
    assert tok.convert_ids_to_tokens(ids[1:5]) == ["a</w>", "red</w>", "striped</w>", "circle</w>"]
    assert len(ids) == tok.model_max_length
    # the end token has the largest id: open_clip's argmax pooling relies on it
    assert tok.eos_token_id == max(tok.get_vocab().values())


def test_world_tokenizer_leaves_no_temp_files_and_round_trips(tmp_path, monkeypatch):
    """Its files live in a temporary folder only while it is built; it still saves and reloads whole."""
    import tempfile

    from transformers import CLIPTokenizer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    tok = build_world_tokenizer()
    assert list((tmp_path / "tmp").iterdir()) == []
    tok.save_pretrained(tmp_path / "saved")
    again = CLIPTokenizer.from_pretrained(str(tmp_path / "saved"))
    text = "a red striped circle"
    assert again(text).input_ids == tok(text).input_ids
    assert again.get_vocab() == tok.get_vocab()


def test_merges_are_minimal_chains():
    merges = world_merges(("circle", "ring", "triangle"))
    assert len(merges) <= sum(len(w) - 1 for w in ("circle", "ring", "triangle"))
