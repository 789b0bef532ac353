"""The sd3 family (SD 3 / 3.5: MMDiT, three text encoders, rectified flow) on a tiny random pipeline.

Tiny: cad.tiny.build_tiny_sd3_pipeline (2 joint blocks, the first with 3.5-medium's dual attention, the last
`context_pre_only`), 32x32 images (16x16x16 latents, 64 image tokens), 2-3 flow-matching Euler steps.
Covers the family checks 1-7 (docs/ARCHITECTURE.md) plus the flow-matching plumbing they rest on: the schedule is
the one the pipeline samples with, x_t = (1 - sigma) x_0 + sigma eps with target eps - x_0 agrees with the
scheduler's Euler step, latents use the VAE's shift and scale the way the pipeline decodes them, and the
stateful scheduler steps correctly from a fresh start (the restart estimator).
"""

from __future__ import annotations

import re

import pytest
import torch

import cad
from cad.backbones import wrap

PROMPT = "a red circle"
SIZE = 32
STEPS = 3
GUIDANCE = 3.0
# A tiny model has ~16k ff weights: beyond ~2% the first-order estimate stops holding (the cumulative
# J_erase change turns positive past 3% here), so the objective tests ablate 1%, as the paper does.
RATIO = 0.01


@pytest.fixture(scope="module")
def pipe():
    from cad.tiny.sd3 import build_tiny_sd3_pipeline

    return build_tiny_sd3_pipeline(0, image_size=SIZE)


@pytest.fixture(scope="module")
def images():
    """Fixed 'concept images' in [0, 1] for J_amplify (no sampling needed)."""
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in a)


def _ff_names(model) -> set[str]:
    return {n for n, _ in model.named_parameters() if re.fullmatch(r"transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)\.weight", n)}


def _erase(pipe, estimator="trajectory", space="ff"):
    return cad.attribute(pipe, PROMPT, steps=STEPS, guidance=GUIDANCE, estimator=estimator, space=space,
                         seed=0, progress=False)


def _amplify(pipe, images, space="ff"):
    return cad.attribute(pipe, PROMPT, objective="amplify", images=images, steps=STEPS, seed=0, space=space,
                         progress=False)


# ------------------------------------------------------------------------------------------ the adapter


def test_backbone_identity_and_conditioning(pipe):
    from cad.backbones.sd3 import SD3Backbone

    bb = wrap(pipe)
    assert isinstance(bb, SD3Backbone) and bb.family == "sd3" and bb.prediction_type == "flow"
    assert bb.denoiser is pipe.transformer and set(bb.text_encoders) == {"text_encoder", "text_encoder_2",
                                                                           "text_encoder_3"}
    assert {"transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"} <= set(bb.fingerprint_modules())
    assert bb.default_size() == pipe.transformer.config.sample_size * pipe.vae_scale_factor == SIZE
    cond = bb.encode(PROMPT, 2)
    emb, _, pooled, _ = pipe.encode_prompt(PROMPT, None, None, do_classifier_free_guidance=False)
    assert torch.allclose(cond.batched["encoder_hidden_states"][1], emb[0], atol=1e-5)
    assert torch.allclose(cond.batched["pooled_projections"][1], pooled[0], atol=1e-5) and len(cond) == 2
    x = torch.randn(bb.latent_shape(2, SIZE, SIZE))
    t = bb.scheduler(STEPS).timesteps[0]
    out = bb.predict(x, t, cond)
    direct = pipe.transformer(hidden_states=x, timestep=t.expand(2), encoder_hidden_states=emb.expand(2, -1, -1),
                              pooled_projections=pooled.expand(2, -1), return_dict=False)[0]
    assert out.shape == x.shape and torch.allclose(out, direct, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 4"):
        bb.check_size(30, 32)


def test_schedule_is_the_pipelines(pipe):
    """The attribution schedule equals what StableDiffusion3Pipeline.__call__ sets (static shift: no mu)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps

    bb = wrap(pipe)
    assert not pipe.scheduler.config.get("use_dynamic_shifting", False)
    ref = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    timesteps, _ = retrieve_timesteps(ref, STEPS, "cpu")
    sched = bb.scheduler(STEPS, height=SIZE, width=SIZE)
    assert sched is not pipe.scheduler
    assert torch.equal(sched.timesteps, timesteps) and torch.equal(sched.sigmas, ref.sigmas)
    # shift 3: sigma' = 3 s / (1 + 2 s) on a linear grid from 1; the first step is pure noise.
    assert sched.sigmas[0] == 1.0 and sched.sigmas[-1] == 0.0
    assert torch.allclose(sched.timesteps, sched.sigmas[:-1] * 1000)


def test_flow_noise_target_and_step_agree(pipe):
    """x_t = (1 - sigma) x_0 + sigma eps (SD3's rectified flow), target v = eps - x_0, and the scheduler's
    Euler step with the exact velocity lands on x_{t'} of the same x_0, eps: the sign the model learns."""
    bb = wrap(pipe)
    sched = bb.scheduler(STEPS)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 16, 8, 8, generator=g), torch.randn(2, 16, 8, 8, generator=g)
    for i, t in enumerate(sched.timesteps):
        s = float(sched.sigmas[i])
        assert abs(float(t) / 1000 - s) < 1e-6
        x_t = bb.add_noise(sched, x0, eps, t)
        assert torch.allclose(x_t, (1 - s) * x0 + s * eps, atol=1e-6)
        v = bb.target(sched, x0, eps, t)
        assert torch.equal(v, eps - x0)
        fresh = bb.scheduler(STEPS)       # a fresh scheduler starts at whatever timestep it is stepped from
        nxt = bb.step(fresh, v, t, x_t)
        s2 = float(sched.sigmas[i + 1])
        assert torch.allclose(nxt, (1 - s2) * x0 + s2 * eps, atol=1e-5)
    used = bb.scheduler(STEPS)
    bb.step(used, v, used.timesteps[0], x_t)
    with pytest.raises(RuntimeError, match="counts its own steps"):
        bb.step(used, v, used.timesteps[2], x_t)  # skipping a step would use the wrong sigmas


def test_encode_images_inverts_the_pipelines_decode(pipe):
    """Latents are (z - shift) * scale: exactly what the pipeline undoes before vae.decode."""
    bb = wrap(pipe)
    vae = pipe.vae
    assert vae.config.shift_factor and vae.config.scaling_factor != 1.0   # SD3's VAE has both
    px = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    lat = bb.encode_images(px, torch.Generator().manual_seed(0))
    z = vae.encode(px).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lat / vae.config.scaling_factor + vae.config.shift_factor, z, atol=1e-6)
    # Images the pipeline samples itself come back as the same (unpacked, scaled) latents.
    gen = cad.concept_latents(pipe, prompt=PROMPT, num_images=1, steps=2, guidance=GUIDANCE, seed=0)
    assert gen.shape == lat.shape == (1, 16, SIZE // 2, SIZE // 2) and gen.dtype == torch.float32


def test_spaces(pipe):
    tr = pipe.transformer
    names = dict(tr.named_parameters())
    ff = set(cad.get_space("ff", "sd3").select(tr))
    ctx = set(cad.get_space("ff_context", "sd3").select(tr))
    assert ff == _ff_names(tr) and len(ff) == 4 and not any("ff_context" in n for n in ff)
    # The last block is context_pre_only: no ff_context.
    assert ctx == {"transformer_blocks.0.ff_context.net.0.proj.weight", "transformer_blocks.0.ff_context.net.2.weight"}
    assert set(cad.get_space("ff_all", "sd3").select(tr)) == ff | ctx
    attn = set(cad.get_space("attn", "sd3").select(tr))
    assert attn == set(cad.get_space("attn_image", "sd3").select(tr)) | set(cad.get_space("attn_context", "sd3").select(tr))
    assert {"transformer_blocks.0.attn2.to_q.weight", "transformer_blocks.1.attn.add_k_proj.weight",
            "transformer_blocks.0.attn.to_add_out.weight", "transformer_blocks.0.attn.to_out.0.weight"} <= attn
    assert all(names[n].ndim == 2 and not n.endswith("bias") and "norm" not in n for n in attn) and len(attn) == 19
    assert set(cad.get_space("conv", "sd3").select(tr)) == {"pos_embed.proj.weight"}
    with pytest.raises(ValueError, match="joint attention"):
        cad.get_space("cross_attn", "sd3")
    assert "cross_attn" not in set(cad.components.presets("sd3"))   # listed presets are real ones


# ------------------------------------------------------------------------------------ required tests 1-7


def test_1_attribution_shapes_and_determinism(pipe, images):
    params = dict(pipe.transformer.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    for run in (lambda: _erase(pipe), lambda: _erase(pipe, "restart"), lambda: _amplify(pipe, images)):
        a, b = run(), run()
        assert set(a.scores) == _ff_names(pipe.transformer)
        for n, s in a.scores.items():
            assert s.shape == params[n].shape and torch.equal(s, b.scores[n]) and torch.isfinite(s).all()
        assert a.meta["family"] == "sd3" and a.meta["prediction_type"] == "flow"
        assert a.meta["objective_value"] == b.meta["objective_value"]
        assert any(s.abs().sum() > 0 for s in a.scores.values())
    assert {n: p.requires_grad for n, p in params.items()} == flags   # restored after each attribution


def test_restart_steps_like_the_trajectory(pipe):
    """The restart estimator's fresh scheduler per restart reproduces the trajectory's latents step by step."""
    bb = wrap(pipe)
    ref = cad.erase_reference(pipe, PROMPT, steps=STEPS, guidance=GUIDANCE, seed=0)
    cond, base = bb.encode(PROMPT), bb.encode("")
    sched = bb.scheduler(STEPS)
    timesteps = sched.timesteps
    for i in range(1, STEPS):
        fresh = bb.scheduler(STEPS)
        x = bb.initial_latents(fresh, 1, torch.Generator("cpu").manual_seed(0))
        for j in range(i):
            x = bb.guided_step(fresh, x, timesteps[j], cond, base, GUIDANCE)
        assert torch.allclose(x, ref.trajectory[i], atol=1e-5)
    res = _erase(pipe, "restart")
    assert res.meta["unet_calls"] == sum(range(1, STEPS + 1)) + 2 * STEPS


def test_2_erase_top_positive_lowers_j_erase(pipe):
    scores = _erase(pipe)
    kw = dict(steps=STEPS, guidance=GUIDANCE, seed=0)
    ref = cad.erase_reference(pipe, PROMPT, **kw)
    before = cad.measure_erase_objective(pipe, PROMPT, reference=ref, **kw)
    assert before == pytest.approx(scores.meta["objective_value"], rel=1e-5)
    edit = cad.Edit.from_scores(scores, RATIO, "positive", "row")
    assert scores.predicted_change(edit.masks) < 0
    after = cad.measure_erase_objective(pipe, PROMPT, edit=edit, reference=ref, **kw)
    assert after < before


def test_3_amplify_top_negative_lowers_flow_loss(pipe, images):
    scores = _amplify(pipe, images)
    lat = cad.concept_latents(pipe, images, seed=0)
    kw = dict(steps=STEPS, seed=0)
    before = cad.measure_amplify_objective(pipe, lat, PROMPT, **kw)
    assert before == pytest.approx(scores.meta["objective_value"], rel=1e-5) and before < 0
    edit = cad.Edit.from_scores(scores, RATIO, "negative", "row")
    assert scores.predicted_change(edit.masks) > 0
    after = cad.measure_amplify_objective(pipe, lat, PROMPT, edit=edit, **kw)
    assert after > before      # J_amplify = -flow loss rises: the flow loss on the concept falls


def test_4_generation_with_edit_and_bit_exact_restore(pipe):
    bb = wrap(pipe)
    scores = _erase(pipe)
    edit = cad.Edit.from_scores(scores, 0.05, "positive", "row")
    before = _state(pipe.transformer)

    def generate():
        return pipe(PROMPT, num_inference_steps=2, height=SIZE, width=SIZE, output_type="np",
                    generator=torch.Generator().manual_seed(0), **bb.call_kwargs(GUIDANCE)).images

    plain = generate()
    with edit.applied(pipe):
        edited = generate()
        zeroed = dict(pipe.transformer.named_parameters())
        assert all((zeroed[n][m] == 0).all() for n, m in edit.masks.items())
    assert not torch.equal(torch.as_tensor(plain), torch.as_tensor(edited))
    assert _bit_equal(before, _state(pipe.transformer))
    assert (torch.as_tensor(generate()) == torch.as_tensor(plain)).all()


def test_5_every_granularity_gives_a_valid_edit(pipe):
    scores = _erase(pipe)
    params = dict(pipe.transformer.named_parameters())
    before = _state(pipe.transformer)
    for granularity in ("row", "tensor", "global"):
        edit = cad.Edit.from_scores(scores, 0.05, "positive", granularity)
        assert set(edit.masks) == set(scores.scores) and edit.n_ablated > 0
        assert all(m.shape == params[n].shape for n, m in edit.masks.items())
        with edit.applied(pipe):
            assert all((params[n].detach()[m] == 0).all() for n, m in edit.masks.items())
        assert _bit_equal(before, _state(pipe.transformer))


def test_6_export_reloads_in_plain_diffusers(pipe, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    edit = cad.Edit.from_scores(_erase(pipe), 0.05, "positive", "row")
    before = _state(pipe.transformer)
    with edit.applied(pipe):
        expected = _state(pipe.transformer)
    folder = cad.export_edited_pipeline(pipe, edit, tmp_path / "edited")
    assert _bit_equal(before, _state(pipe.transformer))       # the pipeline in memory stays unedited
    reloaded = StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True)
    assert _bit_equal(expected, _state(reloaded.transformer))
    assert wrap(reloaded).family == "sd3"


ARCH = {  # name: (ff tensors, ff weights, ff_context tensors, ff_context weights); inner width d, 8 d^2 per block
    "sd35m": (48, 24 * 8 * 1536 ** 2, 46, 23 * 8 * 1536 ** 2),
    "sd35l": (76, 38 * 8 * 2432 ** 2, 74, 37 * 8 * 2432 ** 2),
}


@pytest.mark.parametrize("name", sorted(ARCH))
def test_7_ff_preset_on_the_real_architecture(name):
    from cad.architectures import build_on_meta

    model = build_on_meta(name)
    ff = cad.get_space("ff", "sd3").select(model)
    ctx = cad.get_space("ff_context", "sd3").select(model)
    assert set(ff) == _ff_names(model) and not set(ff) & set(ctx)
    got = (len(ff), sum(p.numel() for p in ff.values()), len(ctx), sum(p.numel() for p in ctx.values()))
    assert got == ARCH[name], got
    assert len(cad.get_space("ff_all", "sd3").select(model)) == got[0] + got[2]
    dual = [n for n in cad.get_space("attn", "sd3").select(model) if ".attn2." in n]
    assert len(dual) == (13 * 4 if name == "sd35m" else 0)   # MMDiT-X: 3.5 medium's blocks 0-12


def test_7_ff_preset_on_the_tiny_model(pipe):
    ff = cad.get_space("ff", "sd3").select(pipe.transformer)
    assert sorted(ff) == [f"transformer_blocks.{b}.ff.net.{k}.weight" for b in (0, 1) for k in ("0.proj", "2")]
    assert sum(p.numel() for p in ff.values()) == 4 * 128 * 32
