"""The tiny SDXL / SD 3.5 / FLUX.1 pipelines and the tiny T5 tokenizer: real diffusers pipelines that run,
save and reload offline, deterministically, in a fraction of a second each."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

PROMPT = "a red circle"
# The smallest height/width each tiny pipeline accepts (see each builder's docstring).
MIN_SIZE = {"sdxl": 8, "sd3": 4, "flux": 4, "flux_dev": 4}


def _build(family: str, seed: int = 0, **kw):
    from cad import tiny

    if family == "sdxl":
        return tiny.build_tiny_sdxl_pipeline(seed, **kw)
    if family == "sd3":
        return tiny.build_tiny_sd3_pipeline(seed, **kw)
    if family == "flux":
        return tiny.build_tiny_flux_pipeline(seed, **kw)
    if family == "flux_dev":
        return tiny.build_tiny_flux_pipeline(seed, guidance_embeds=True, **kw)
    raise KeyError(family)


def _pipeline_class(family: str):
    import diffusers

    return {
        "sdxl": diffusers.StableDiffusionXLPipeline,
        "sd3": diffusers.StableDiffusion3Pipeline,
        "flux": diffusers.FluxPipeline,
        "flux_dev": diffusers.FluxPipeline,
    }[family]


def _call(pipe, size: int = 32):
    return pipe(
        PROMPT,
        num_inference_steps=2,
        height=size,
        width=size,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


def _denoiser(pipe):
    return pipe.transformer if hasattr(pipe, "transformer") else pipe.unet


def _weights(pipe) -> dict[str, torch.Tensor]:
    """Every weight of every model component, keyed '<component>.<name>'."""
    out = {}
    for comp_name, comp in pipe.components.items():
        if isinstance(comp, torch.nn.Module):
            out.update({f"{comp_name}.{k}": v for k, v in comp.state_dict().items()})
    return out


FAMILIES = ["sdxl", "sd3", "flux", "flux_dev"]


@pytest.fixture(scope="module")
def pipes():
    """One pipeline per family, built once (they are not mutated by these tests)."""
    return {f: _build(f) for f in FAMILIES}


# ---------------------------------------------------------------------------------------------- tokenizer


def test_t5_tokenizer_layout_and_roundtrip(tmp_path):
    from transformers import AutoTokenizer, T5TokenizerFast

    from cad.tiny import build_t5_tokenizer

    tok = build_t5_tokenizer()
    assert isinstance(tok, T5TokenizerFast)
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok(PROMPT).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["▁a", "▁red", "▁circle", "</s>"]  # words, `▁` prefix, EOS last
    # Unknown words fall back to letters, not <unk>; runs of spaces collapse like SentencePiece.
    assert tok.decode(tok("a  zebra!").input_ids, skip_special_tokens=True) == "a zebra!"
    assert tok.unk_token_id in tok("a red é").input_ids
    padded = tok(PROMPT, padding="max_length", max_length=8, truncation=True).input_ids
    assert padded == ids + [0] * 4
    assert len(tok("a " * 50, max_length=8, truncation=True).input_ids) == 8

    tok.save_pretrained(tmp_path)
    for loaded in (T5TokenizerFast.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert len(loaded) == len(tok)
        for text in (PROMPT, "A Photo of a Dog, high quality", "a  zebra!", "a red é", ""):
            assert loaded(text).input_ids == tok(text).input_ids, text


def test_tiny_t5_encoder_seeded():
    from cad.tiny import build_tiny_t5_encoder

    a, b, c = build_tiny_t5_encoder(0, 50), build_tiny_t5_encoder(0, 50), build_tiny_t5_encoder(1, 50)
    assert a.config.d_model == 32 and a.config.feed_forward_proj == "gated-gelu"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.shared.weight, c.shared.weight)
    out = a(torch.tensor([[4, 5, 1]])).last_hidden_state
    assert out.shape == (1, 3, 32)


# ---------------------------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("family", FAMILIES)
def test_build_is_fast_and_seeded(family, pipes):
    t0 = time.perf_counter()
    again = _build(family)  # warm: the module fixture already paid the imports
    elapsed = time.perf_counter() - t0
    assert elapsed < 3.0, f"{family} build took {elapsed:.2f}s"
    first, second = _weights(pipes[family]), _weights(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first), "same seed must give bit-identical weights"
    other = _denoiser(_build(family, seed=1)).state_dict()
    ref = _denoiser(pipes[family]).state_dict()
    assert any(not torch.equal(ref[k], other[k]) for k in ref if ref[k].is_floating_point())


@pytest.mark.parametrize("family", FAMILIES)
def test_call_is_fast_and_deterministic(family, pipes):
    pipe = pipes[family]
    t0 = time.perf_counter()
    a = _call(pipe)
    elapsed = time.perf_counter() - t0
    b = _call(pipe)
    assert a.shape == (1, 32, 32, 3) and a.dtype == np.float32
    assert np.isfinite(a).all() and 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b)
    assert elapsed < 5.0, f"{family} call took {elapsed:.2f}s"


# flux_dev has every component of flux plus the guidance embedder, so it stands for both (saves ~2 s).
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux_dev"])
def test_save_load_roundtrip(family, pipes, tmp_path):
    pipe = pipes[family]
    pipe.save_pretrained(tmp_path)
    loaded = _pipeline_class(family).from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    for name, comp in pipe.components.items():
        if name.startswith("tokenizer"):
            other = loaded.components[name]
            assert type(other) is type(comp) and len(other) == len(comp), name
            assert other(PROMPT).input_ids == comp(PROMPT).input_ids, name
    assert type(loaded.scheduler) is type(pipe.scheduler)
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    w0, w1 = _weights(pipe), _weights(loaded)
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)  # the weights: bit for bit
    # The images: a separately loaded model may take another kernel path (its weights sit at other memory
    # alignments; seen: 5e-7 on AVX-512), so round-off only; a different weight would move them by > 1e-3.
    np.testing.assert_allclose(_call(loaded), _call(pipe), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_minimum_size(family, pipes):
    size = MIN_SIZE[family]
    assert _call(pipes[family], size).shape == (1, size, size, 3)


# ---------------------------------------------------------------------------------------------- structure


def test_sdxl_structure(pipes):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    pipe = pipes["sdxl"]
    unet = pipe.unet
    assert unet.config.addition_embed_type == "text_time"
    assert type(pipe.text_encoder) is CLIPTextModel
    assert type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    widths = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert unet.config.cross_attention_dim == widths  # [CLIP-L ; CLIP-G] hidden states
    assert unet.config.down_block_types[0] == "DownBlock2D"  # SDXL's attention-free first level
    ff = [n for n, _ in unet.named_parameters() if n.endswith((".ff.net.0.proj.weight", ".ff.net.2.weight"))]
    assert ff and not any(n.startswith("down_blocks.0.") for n in ff)
    cfg = pipe.scheduler.config
    assert (cfg.beta_schedule, cfg.beta_start, cfg.beta_end, cfg.prediction_type) == (
        "scaled_linear", 0.00085, 0.012, "epsilon"
    )
    v = _build("sdxl", prediction_type="v_prediction")
    assert v.scheduler.config.prediction_type == "v_prediction"


def test_sd3_structure(pipes):
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    pipe = pipes["sd3"]
    blocks = pipe.transformer.transformer_blocks
    assert any(b.ff is not None and b.ff_context is not None for b in blocks), "ff and ff_context"
    assert blocks[-1].ff_context is None  # the last block is context_pre_only, as in every SD3
    assert blocks[0].attn2 is not None  # MMDiT-X dual attention (3.5 medium)
    assert blocks[0].attn.norm_q is not None  # rms qk-norm (3.5)
    assert type(pipe.text_encoder) is type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    assert isinstance(pipe.text_encoder_3, T5EncoderModel)
    assert pipe.vae.config.latent_channels == 16
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (1.5305, 0.0609)
    assert pipe.scheduler.config.shift == 3.0


@pytest.mark.parametrize("family", ["flux", "flux_dev"])
def test_flux_structure(family, pipes):
    from transformers import CLIPTextModel, T5EncoderModel

    pipe = pipes[family]
    tr = pipe.transformer
    assert len(tr.transformer_blocks) >= 1 and len(tr.single_transformer_blocks) >= 1
    assert tr.config.in_channels == 4 * pipe.vae.config.latent_channels == 64  # 2x2 latent packing
    assert (tr.time_text_embed.__class__.__name__ == "CombinedTimestepGuidanceTextProjEmbeddings") == (
        family == "flux_dev"
    )
    assert type(pipe.text_encoder) is CLIPTextModel and isinstance(pipe.text_encoder_2, T5EncoderModel)
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (0.3611, 0.1159)
    cfg = pipe.scheduler.config
    assert cfg.use_dynamic_shifting and (cfg.base_shift, cfg.max_shift) == (0.5, 1.15)
    static = _build("flux", dynamic_shifting=False).scheduler.config
    assert not static.use_dynamic_shifting and static.shift == 1.0
