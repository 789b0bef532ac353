"""The flux family (FLUX.1 schnell / dev: FluxTransformer2DModel, CLIP-L + T5, flow matching), tiny pipelines.

Tiny: cad.tiny.build_tiny_flux_pipeline, one double-stream and one single-stream block, 32x32 images
(16x16x16 latents, 64 packed tokens), 2-3 flow-matching Euler steps, T5 prompts cut to 32 tokens (a
FluxBackbone with max_sequence_length=32 is passed where cad wraps the pipeline; the default 256/512 only
costs time here). Two variants: schnell-like (no guidance embedder, static shift 1.0 as FLUX.1-schnell's
scheduler config) and dev-like (guidance_embeds=True, resolution-dependent shift).

Covers the family checks 1-7 (docs/ARCHITECTURE.md) plus: pack/unpack/img_ids parity with FluxPipeline's static
methods, the attribution schedule equal to the pipeline's own, the backbone's sampling loop reproducing the
pipeline's latents (predict's timestep / guidance / ids plumbing), and the absence of a CFG batch (denoiser
calls counted).
"""

from __future__ import annotations

import re

import pytest
import torch

import cad
from cad.backbones.flux import FluxBackbone, image_ids, pack_latents, unpack_latents

PROMPT = "a red circle"
SIZE = 32
STEPS = 2
SEQ = 32
GUIDANCE = {"schnell": 0.0, "dev": 3.5}


def _build(variant: str):
    from cad.tiny.flux import build_tiny_flux_pipeline

    dev = variant == "dev"
    return build_tiny_flux_pipeline(0, guidance_embeds=dev, dynamic_shifting=dev, image_size=SIZE)


@pytest.fixture(scope="module", params=["schnell", "dev"])
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def pipes():
    return {}


@pytest.fixture(scope="module")
def pipe(variant, pipes):
    if variant not in pipes:
        pipes[variant] = _build(variant)
    return pipes[variant]


@pytest.fixture
def bb(pipe):
    return FluxBackbone(pipe, max_sequence_length=SEQ)


@pytest.fixture(scope="module")
def images():
    """Fixed 'concept images' in [0, 1] for J_amplify (no sampling needed)."""
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in a)


def _erase(bb, variant, estimator="trajectory", space="ff", steps=STEPS):
    return cad.attribute(bb, PROMPT, steps=steps, guidance=GUIDANCE[variant], estimator=estimator,
                         space=space, seed=0, height=SIZE, width=SIZE, progress=False)


def _amplify(bb, images, space="ff"):
    return cad.attribute(bb, PROMPT, objective="amplify", images=images, steps=STEPS, seed=0, space=space,
                         height=SIZE, width=SIZE, progress=False)


def _ff_names(model) -> set[str]:
    return {n for n, _ in model.named_parameters()
            if re.fullmatch(r"transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)\.weight", n)
            or re.fullmatch(r"single_transformer_blocks\.\d+\.proj_mlp\.weight", n)}


# ---- plumbing parity with FluxPipeline -------------------------------------------------------------------

def test_pack_unpack_and_image_ids_match_flux_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(3, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 3, 16, 8, 12))
    # _unpack_latents takes pixel sides and the VAE factor (8 on the real VAE): 8x12 latents = 64x96 pixels.
    assert torch.equal(unpack_latents(packed, 8, 12), FluxPipeline._unpack_latents(packed, 64, 96, 8))
    assert torch.equal(unpack_latents(packed, 8, 12), x)
    assert torch.equal(image_ids(4, 6, "cpu", torch.float32),
                       FluxPipeline._prepare_latent_image_ids(3, 4, 6, "cpu", torch.float32))


def test_interface_basics(bb, variant):
    assert cad.backbones.wrap(bb.pipe).family == "flux"
    assert bb.prediction_type == "flow" and bb.uses_cfg is False and bb.latent_channels == 16
    assert bb.guidance_embeds == (variant == "dev")
    assert FluxBackbone(bb.pipe).sequence_length == (512 if variant == "dev" else 256)
    assert bb.default_size() == bb.pipe.default_sample_size * bb.vae_scale_factor
    assert bb.latent_shape(2, 34, 32) == (2, 16, 16, 16)  # 34 px: rounded down to even sides, as the pipeline
    bb.check_size(SIZE, SIZE)
    with pytest.raises(ValueError, match="multiple of 4"):
        bb.check_size(34, 32)
    assert bb.call_kwargs(3.5) == {"guidance_scale": 3.5, "max_sequence_length": SEQ}
    cond = bb.encode(PROMPT, 2)
    assert cond.batched["encoder_hidden_states"].shape == (2, SEQ, 32)
    assert cond.batched["pooled_projections"].shape == (2, 32) and cond.shared["txt_ids"].shape == (SEQ, 3)
    assert {"text_encoder", "text_encoder_2", "transformer", "vae"} <= set(bb.fingerprint_modules())


def test_schedule_is_the_pipelines(bb, variant):
    steps = 3
    ours = bb.scheduler(steps, height=SIZE, width=SIZE)
    bb.pipe(PROMPT, num_inference_steps=steps, height=SIZE, width=SIZE, output_type="latent",
            max_sequence_length=SEQ, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ours.timesteps, bb.pipe.scheduler.timesteps)
    assert torch.allclose(ours.sigmas, bb.pipe.scheduler.sigmas)
    if variant == "schnell":  # static shift 1.0: sigmas are the pipeline's linspace(1, 1/T, T) as given
        assert torch.allclose(ours.sigmas[:-1], torch.linspace(1.0, 1 / steps, steps))


def test_backbone_sampling_reproduces_the_pipeline(bb, variant):
    """initial_latents + guided_step (predict, scheduler) give FluxPipeline's own latents for the same seed:
    same timestep scaling, guidance embedding, position ids and shift."""
    g = GUIDANCE[variant]
    sched = bb.scheduler(STEPS, height=SIZE, width=SIZE)
    cond = bb.encode(PROMPT)
    x = bb.initial_latents(sched, 1, torch.Generator().manual_seed(5), SIZE, SIZE)
    for t in sched.timesteps:
        x = bb.guided_step(sched, x, t, cond, None, g)
    ref = bb.sample_latents(PROMPT, 1, steps=STEPS, guidance=g, height=SIZE, width=SIZE,
                            generator=torch.Generator().manual_seed(5))
    assert ref.shape == (1, 16, SIZE // 2, SIZE // 2)
    torch.testing.assert_close(x, ref, rtol=1e-4, atol=1e-5)
    if variant == "dev":  # the embedded guidance matters
        x2 = bb.initial_latents(sched := bb.scheduler(STEPS, height=SIZE, width=SIZE), 1,
                                torch.Generator().manual_seed(5), SIZE, SIZE)
        x2 = bb.guided_step(sched, x2, sched.timesteps[0], cond, None, 1.0)
        x1 = bb.initial_latents(sched := bb.scheduler(STEPS, height=SIZE, width=SIZE), 1,
                                torch.Generator().manual_seed(5), SIZE, SIZE)
        x1 = bb.guided_step(sched, x1, sched.timesteps[0], cond, None, g)
        assert not torch.allclose(x1, x2)


def test_no_cfg_batch(bb, variant):
    """J_erase costs exactly 2 transformer calls per step (gradient pass on the prompt + base), each on the K
    trajectories alone (no uncond half), also with a negative prompt and guidance > 1."""
    calls, guidances = [], []

    def record(m, a, kw, out):
        calls.append(kw["hidden_states"].shape[0])
        guidances.append(kw["guidance"])

    hook = bb.denoiser.register_forward_hook(record, with_kwargs=True)
    flags = cad.components.requires_grad_state(bb.denoiser)
    try:
        params = cad.enable_only(bb, "ff")
        res = cad.erase_objective(bb, PROMPT, negative_prompt="blurry", steps=STEPS, guidance=5.0,
                                  num_samples=2, params=params, height=SIZE, width=SIZE)
    finally:
        hook.remove()
        cad.components.restore_requires_grad(bb.denoiser, flags)
    assert res.unet_calls == len(calls) == 2 * STEPS
    assert calls == [2] * (2 * STEPS)
    # the objective's guidance is what [dev] was run at, every call; [schnell] has no guidance input
    if bb.guidance_embeds:
        assert all(torch.equal(g, torch.full([2], 5.0)) for g in guidances)
    else:
        assert all(g is None for g in guidances)


# ---- required tests 1-7 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("estimator", ["trajectory", "restart"])
def test_erase_attribution_shapes_and_determinism(bb, variant, estimator):
    a, b = _erase(bb, variant, estimator), _erase(bb, variant, estimator)
    params = dict(bb.denoiser.named_parameters())
    assert set(a.scores) == _ff_names(bb.denoiser)
    for name, s in a.scores.items():
        assert s.shape == params[name].shape and torch.isfinite(s).all()
        assert torch.equal(s, b.scores[name])
    assert a.meta["family"] == "flux" and a.meta["prediction_type"] == "flow"
    assert a.meta["objective_value"] > 0
    if estimator == "restart":  # restart: (1 + ... + T) guided calls + 2 per gradient, from fresh schedulers
        assert a.meta["unet_calls"] == STEPS * (STEPS + 1) // 2 + 2 * STEPS


def test_amplify_attribution_shapes_and_determinism(bb, images):
    a, b = _amplify(bb, images), _amplify(bb, images)
    params = dict(bb.denoiser.named_parameters())
    for name, s in a.scores.items():
        assert s.shape == params[name].shape and torch.isfinite(s).all()
        assert torch.equal(s, b.scores[name])
    assert a.meta["objective_value"] < 0


def test_amplify_from_generated_images(bb):
    """images=None: concept latents from FluxPipeline's own sampler (packed output unpacked)."""
    s = cad.attribute(bb, PROMPT, objective="amplify", images=None, num_images=1, steps=STEPS,
                      image_guidance=3.5, height=SIZE, width=SIZE, seed=0, progress=False)
    assert s.meta["images"]["count"] == 1
    assert all(torch.isfinite(v).all() for v in s.scores.values())


def test_top_positive_erase_components_lower_j_erase(bb, variant):
    scores = _erase(bb, variant)
    kw = dict(steps=STEPS, guidance=GUIDANCE[variant], seed=0, height=SIZE, width=SIZE)
    j0 = cad.measure_erase_objective(bb, PROMPT, **kw)
    assert j0 == pytest.approx(scores.meta["objective_value"], rel=1e-5)
    j1 = cad.measure_erase_objective(bb, PROMPT, edit=cad.Edit.from_scores(scores, 0.05, "positive"), **kw)
    assert j1 < j0


def test_top_negative_amplify_components_lower_flow_loss(bb, images):
    scores = _amplify(bb, images)
    latents = cad.concept_latents(bb, images, seed=0, height=SIZE, width=SIZE)
    assert latents.shape == (2, 16, SIZE // 2, SIZE // 2)
    j0 = cad.measure_amplify_objective(bb, latents, PROMPT, steps=STEPS, seed=0)
    assert j0 == pytest.approx(scores.meta["objective_value"], rel=1e-5)
    j1 = cad.measure_amplify_objective(bb, latents, PROMPT, steps=STEPS, seed=0,
                                       edit=cad.Edit.from_scores(scores, 0.05, "negative"))
    assert j1 > j0  # J_amplify = -flow loss rises: the loss on the concept images falls


def test_generation_with_edit_and_bit_exact_restore(bb, variant):
    scores = _erase(bb, variant)
    edit = cad.Edit.from_scores(scores, 0.1, "positive")
    before = _state(bb.denoiser)

    def gen():
        return bb.pipe(PROMPT, num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="pt",
                       generator=torch.Generator().manual_seed(0), **bb.call_kwargs(GUIDANCE[variant])).images

    plain = gen()
    with edit.applied(bb.pipe):
        edited = gen()
    assert plain.shape == (1, 3, SIZE, SIZE)
    assert not torch.allclose(plain, edited)
    assert _bit_equal(before, _state(bb.denoiser))
    assert torch.equal(gen(), plain)


@pytest.mark.parametrize("granularity", ["row", "tensor", "global"])
def test_selection_at_every_granularity(bb, variant, granularity):
    scores = _erase(bb, variant)
    edit = cad.Edit.from_scores(scores, 0.05, "positive", granularity)
    assert 0 < edit.n_ablated < edit.n_total
    assert set(edit.masks) <= set(scores.scores)
    before = _state(bb.denoiser)
    with edit.applied(bb.pipe):
        params = dict(bb.denoiser.named_parameters())
        for name, mask in edit.masks.items():
            assert (params[name][mask.to(params[name].device)] == 0).all()
    assert _bit_equal(before, _state(bb.denoiser))


def test_export_reloads_in_plain_diffusers(bb, variant, tmp_path):
    from diffusers import FluxPipeline

    scores = _erase(bb, variant)
    edit = cad.Edit.from_scores(scores, 0.05, "positive")
    folder = cad.export_edited_pipeline(bb.pipe, edit, tmp_path / "edited")
    reloaded = FluxPipeline.from_pretrained(folder)
    with edit.applied(bb.pipe):
        want = _state(bb.denoiser)
    assert _bit_equal(want, _state(reloaded.transformer))
    assert reloaded.transformer.config.guidance_embeds == (variant == "dev")


def test_ff_preset_on_tiny_model(pipe):
    model = pipe.transformer
    chosen = set(cad.get_space("ff", "flux").select(model))
    assert chosen == _ff_names(model)
    assert not any("ff_context" in n or "proj_out" in n for n in chosen)
    ff_context = r"transformer_blocks\.\d+\.ff_context\.net\.(0\.proj|2)\.weight"
    assert set(cad.get_space("ff_context", "flux").select(model)) == {
        n for n, _ in model.named_parameters() if re.fullmatch(ff_context, n)}
    assert set(cad.get_space("ff_single", "flux").select(model)) == {
        "single_transformer_blocks.0.proj_mlp.weight"}
    # proj_out (the single blocks' fused attention-out + MLP-out) is in attn and linear, not ff.
    assert "single_transformer_blocks.0.proj_out.weight" in cad.get_space("attn", "flux").select(model)
    assert "single_transformer_blocks.0.proj_out.weight" in cad.get_space("linear", "flux").select(model)
    assert set(cad.get_space("attn_context", "flux").select(model)) == {
        f"transformer_blocks.0.attn.{p}.weight"
        for p in ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")}
    for absent in ("cross_attn", "conv"):
        with pytest.raises(ValueError, match=f"no '{absent}' space"):
            cad.get_space(absent, "flux")
    assert "cross_attn" not in set(cad.components.presets("flux"))


@pytest.mark.parametrize("arch", ["flux", "flux_dev"])
def test_ff_preset_on_real_architecture(arch):
    """FLUX.1 (19 double-stream + 38 single-stream blocks, width 3072, MLP 12288) on the meta device."""
    from cad.architectures import build_on_meta

    model = build_on_meta(arch)

    def count(space):
        sel = cad.get_space(space, "flux").select(model)
        return len(sel), sum(p.numel() for p in sel.values())

    assert set(cad.get_space("ff", "flux").select(model)) == _ff_names(model)
    assert count("ff") == (76, 2_868_903_936)
    assert count("ff_context") == (38, 1_434_451_968)
    assert count("ff_single") == (38, 1_434_451_968)
