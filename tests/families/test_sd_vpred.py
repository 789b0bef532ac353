"""The sd family with v-prediction (SD 2.1 768-v: stabilityai/stable-diffusion-2-1) on a tiny random pipeline.

Tiny: cad.tiny.build_tiny_pipeline (SD 1.x layout at 16x16 images, 8x8 latents) with its DDIM scheduler config
switched to prediction_type="v_prediction", the one scheduler setting that makes SD 2.1 768-v a v-model (the
UNet is the same class). Checks that J_amplify regresses onto v = sqrt(abar) eps - sqrt(1 - abar) x_0
(diffusers' get_velocity), that CAD-Amplify's top negative components lower that v-loss, that the attribution
schedule keeps v-prediction whatever the pipeline samples with (SD 2.1's model card samples with DPM-Solver),
and that J_erase works on v outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cad
from cad.backbones import wrap

PROMPT = "a photo of a cat"
SIZE = 16
STEPS = 4
KW = dict(steps=STEPS, guidance=3.0, num_samples=2, seed=0)
REPO = Path(__file__).resolve().parents[2]


def _vpred(pipe):
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    return pipe


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return _vpred(tiny_pipe_factory(0, image_size=SIZE))


@pytest.fixture(scope="module")
def images():
    """Fixed smooth 'concept images' in [0, 1] (no sampling needed)."""
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    return torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def latents(pipe, images):
    return cad.concept_latents(pipe, images, seed=0)


@pytest.fixture(scope="module")
def amplify_scores(pipe, images):
    return cad.attribute(pipe, PROMPT, objective="amplify", images=images, steps=STEPS, seed=0, progress=False)


def test_backbone_reports_v_prediction(pipe):
    bb = wrap(pipe)
    assert bb.family == "sd" and bb.prediction_type == "v_prediction"


def test_target_is_the_velocity(pipe):
    bb = wrap(pipe)
    sched = bb.scheduler(STEPS)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in sched.timesteps:
        target = bb.target(sched, x0, noise, t)
        v = sched.get_velocity(x0, noise, t.reshape(1).repeat(2))
        assert torch.equal(target, v)
        abar = sched.alphas_cumprod[int(t)]
        assert torch.allclose(target, abar.sqrt() * noise - (1 - abar).sqrt() * x0, atol=1e-6)
        assert not torch.allclose(target, noise, atol=1e-3)  # not the epsilon target


def test_amplify_objective_is_minus_the_v_loss(pipe, latents):
    """J_amplify equals -sum_t mean || v - unet(x_t, t, c) ||^2, computed here by hand with the same noise."""
    bb = wrap(pipe)
    res = cad.amplify_objective(pipe, latents, PROMPT, steps=2, seed=0)
    sched = bb.scheduler(2)
    emb = bb.encode(PROMPT, latents.shape[0]).batched["encoder_hidden_states"]
    gen = torch.Generator("cpu").manual_seed(0)
    total = 0.0
    with torch.no_grad():
        for t in sched.timesteps:
            noise = torch.randn(latents.shape, generator=gen)
            tt = t.reshape(1).repeat(latents.shape[0])
            x_t = sched.add_noise(latents, noise, tt)
            pred = pipe.unet(x_t, t, encoder_hidden_states=emb).sample
            total -= float((sched.get_velocity(latents, noise, tt) - pred).pow(2).sum()) / latents.shape[0]
    assert res.value == pytest.approx(total, rel=1e-5)


def test_amplify_top_negative_components_lower_the_v_loss(pipe, latents, amplify_scores):
    assert amplify_scores.meta["prediction_type"] == "v_prediction"
    kw = dict(steps=STEPS, seed=0)
    j0 = cad.measure_amplify_objective(pipe, latents, PROMPT, **kw)
    assert j0 == pytest.approx(amplify_scores.meta["objective_value"], rel=1e-6)
    edit = cad.Edit.from_scores(amplify_scores, 0.05, "negative")
    j1 = cad.measure_amplify_objective(pipe, latents, PROMPT, edit=edit, **kw)
    j_rand = cad.measure_amplify_objective(pipe, latents, PROMPT, edit=cad.Edit.random_like(edit, 0), **kw)
    assert j1 > j0 and j1 - j0 > abs(j_rand - j0), (j0, j1, j_rand)  # the v-loss on the concept went down


def test_erase_on_v_predictions(pipe):
    scores = cad.attribute(pipe, PROMPT, **KW, progress=False)
    assert scores.meta["prediction_type"] == "v_prediction"
    ref = cad.erase_reference(pipe, PROMPT, **KW)
    edit = cad.Edit.from_scores(scores, 0.01, "positive")
    j = cad.measure_erase_objective(pipe, PROMPT, edit=edit, reference=ref, **KW)
    j_rand = cad.measure_erase_objective(pipe, PROMPT, edit=cad.Edit.random_like(edit, 0), reference=ref, **KW)
    assert j < ref.value and ref.value - j > 2 * abs(ref.value - j_rand), (ref.value, j, j_rand)


@pytest.mark.parametrize("sampler", [None, "dpm", "euler"])
def test_attribution_schedule_keeps_v_prediction(tiny_pipe_factory, sampler):
    """Whatever the pipeline samples with (sd21v.yaml: DPM-Solver, its model card's), attribution runs on DDIM
    from the model's config and stays v-prediction; so does the swapped sampling scheduler."""
    from diffusers import DDIMScheduler

    bb = wrap(_vpred(tiny_pipe_factory(0, image_size=SIZE)))
    bb.set_scheduler(sampler)
    assert bb.pipe.scheduler.config.prediction_type == "v_prediction" and bb.prediction_type == "v_prediction"
    sched = bb.scheduler(50)
    assert isinstance(sched, DDIMScheduler) and sched.config.prediction_type == "v_prediction"
    assert sched.timesteps[0] == 981 and sched.timesteps[-1] == 1
    assert bb.pipe.scheduler is not sched  # pipe.scheduler untouched


def test_loading_a_v_model_folder_keeps_v_prediction(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "v")
    for scheduler in ("default", "dpm"):
        bb = cad.backbones.load(tmp_path / "v", scheduler=scheduler)
        assert bb.family == "sd" and bb.prediction_type == "v_prediction"
        assert bb.scheduler(STEPS).config.prediction_type == "v_prediction"


def test_real_sd2_ff_counts():
    from cad.architectures import build_on_meta

    for name in ("sd2", "sd2_base"):
        chosen = cad.get_space("ff", "sd").select(build_on_meta(name))
        # Same channel widths as SD 1.x, so the same ff: 16 transformer blocks x 2 matrices.
        assert len(chosen) == 32 and sum(p.numel() for p in chosen.values()) == 148_684_800


def test_model_config():
    import yaml

    from cad.backbones.base import check_scheduler

    cfg = yaml.safe_load((REPO / "conf/model/sd21v.yaml").read_text())
    base = yaml.safe_load((REPO / "conf/model/sd21.yaml").read_text())
    assert set(base) <= set(cfg) and cfg["name"] == "sd21v" and cfg["family"] == "sd"
    assert cfg["id"] == "stabilityai/stable-diffusion-2-1" and cfg["resolution"] == 768
    assert base["id"] == "stabilityai/stable-diffusion-2-1-base" and base["resolution"] == 512
    check_scheduler(cfg["scheduler"])
