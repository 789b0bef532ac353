"""ESD (cad.methods.esd) on a tiny SD pipeline: its loss falls, its conditional prediction moves toward the
negatively guided target of the frozen original, it edits only its variant's tensors, reproducibly; x_t comes
from the reference's partial denoising, one iteration's loss equals a re-derivation of the reference's
computation, and the trained sets are the reference's CompVis-name filters."""

from __future__ import annotations

import pytest
import torch

from cad.backbones import wrap
from cad.edits import WeightEdit
from cad.methods import MethodConfigError, MethodContext, build_method
from cad.methods.esd import esd_parameter_names, esd_target, partial_denoising

PROMPT = "a photo of a cat"
CONCEPT = {"name": "cat", "prompt": PROMPT, "base_prompt": "", "kind": "object"}
STEPS = 4     # DDIM steps of the x_t sampling (50 in the reference; few keep the test fast)
ETA = 1.0
# Per-variant test recipes: ESD-u moves ~all of this random UNet's weights, so Adam needs a much smaller lr.
RECIPES = {"x": {"lr": 1e-3, "iterations": 40}, "u": {"lr": 3e-5, "iterations": 60}}


def esd_cfg(**kw) -> dict:
    return {"_target_": "cad.methods.esd.ESD", "name": "esd", "ddim_steps": STEPS, **kw}


@pytest.fixture(scope="module")
def bb():
    from cad.tiny import build_tiny_pipeline

    return wrap(build_tiny_pipeline(0, image_size=16))


@pytest.fixture(scope="module")
def before(bb):
    return {n: p.detach().clone() for n, p in bb.denoiser.named_parameters()}


@pytest.fixture(scope="module")
def outputs(bb, before):
    out = {}
    for variant, recipe in RECIPES.items():
        method = build_method(esd_cfg(variant=variant, **recipe))
        out[variant] = method.build(MethodContext(backbone=bb, concept=CONCEPT, seed=0))
    return out


@pytest.fixture(scope="module")
def held_out(bb):
    """x_t from the frozen model's own concept trajectories (another seed than training), at their timesteps."""
    cond, uncond = bb.encode(PROMPT), bb.encode("")
    sched = bb.scheduler(STEPS)
    gen = torch.Generator().manual_seed(1234)
    pairs = []
    for i in range(8):
        k = i % STEPS
        x = bb.initial_latents(sched, 1, gen)
        for t in sched.timesteps[:k]:
            x = bb.guided_step(sched, x, t, cond, uncond, 3.0)
        t = sched.timesteps[k]
        pairs.append((x, t, esd_target(bb, x, t, cond, uncond, ETA)))
    return pairs


def _distance(bb, pairs) -> float:
    cond = bb.encode(PROMPT)
    with torch.no_grad():
        return sum(torch.mean((bb.predict(x, t, cond).float() - target) ** 2).item()
                   for x, t, target in pairs) / len(pairs)


@pytest.mark.parametrize("variant", ["x", "u"])
def test_loss_falls(outputs, variant):
    loss = outputs[variant].info["loss"]
    assert len(loss) == RECIPES[variant]["iterations"]
    k = 20 if variant == "u" else 10
    first, last = sum(loss[:k]) / k, sum(loss[-k:]) / k
    assert last < (0.85 if variant == "u" else 0.5) * first, loss


# ---- the reference's partial denoising (rohitgandikota/erasing @ a2189e9, train-esd.py + CompVis DDIMSampler) ----
def reference_ddim_timesteps(steps: int, n_train: int = 1000) -> list[int]:
    """make_ddim_timesteps("uniform"): every n_train // steps-th timestep, plus one (ascending)."""
    return [t + 1 for t in range(0, n_train, n_train // steps)]


def reference_run(steps: int, t_enc: int) -> list[int]:
    """The timesteps DDIMSampler.ddim_sampling visits with t_start=-1 and till_T=t_enc, re-read from its loop:
    the schedule without its last (top) entry, highest first, stopping once DDIM index + 1 == t_enc."""
    kept = reference_ddim_timesteps(steps)[:-1]
    visited = []
    for i, step in enumerate(reversed(kept)):
        visited.append(step)
        if len(kept) - i - 1 + 1 == t_enc:
            break
    return visited


def test_partial_denoising_enters_where_the_reference_does(bb):
    """SD's 50-step DDIM (tiny SD has SD 1.x's scheduler config): x_T enters at 961, not 981, and runs
    50 - t_enc steps (49 when t_enc = 0); the rewrite's rule ("matched") starts at the top."""
    ts = bb.scheduler(50).timesteps
    assert ts.tolist() == reference_ddim_timesteps(50)[::-1]          # 981, 961, ..., 1
    for t_enc in range(50):
        run = partial_denoising(ts, t_enc).tolist()
        assert run == reference_run(50, t_enc), t_enc
        assert run[0] == 961 and len(run) == (49 if t_enc == 0 else 50 - t_enc)
        assert partial_denoising(ts, t_enc, "matched").tolist() == ts[:t_enc].tolist()
    assert partial_denoising(ts, 10).tolist()[-1] == 181                # stops after DDIM index t_enc - 1
    assert partial_denoising(bb.scheduler(1).timesteps, 0).numel() == 0  # one step: x_T itself


def test_build_samples_through_the_reference_timesteps(bb, monkeypatch):
    """The trained x_t come from DDIM steps that start at the schedule's second timestep, never its first."""
    ts = bb.scheduler(STEPS).timesteps.tolist()
    runs, step = [], bb.guided_step

    def recording(sched, x, t, *args):
        runs[-1].append(int(t))
        return step(sched, x, t, *args)

    monkeypatch.setattr(bb, "initial_latents", lambda *a, _f=bb.initial_latents: runs.append([]) or _f(*a))
    monkeypatch.setattr(bb, "guided_step", recording)
    build_method(esd_cfg(variant="x", iterations=12, lr=1e-3)).build(
        MethodContext(backbone=bb, concept=CONCEPT, seed=5))
    assert len(runs) == 12 and {len(r) for r in runs} == {1, 2, STEPS - 1}   # t_enc 3, 2 and 0/1 all drawn
    for r in runs:
        assert r == ts[1 : 1 + len(r)]


def _ids(pipe, text):
    tok = pipe.tokenizer
    return tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


@torch.no_grad()
def reference_first_loss(pipe, seed, steps, start_guidance, eta, drop_top=True):
    """One iteration of train_esd at θ = θ*, re-derived from the paper code's math on the raw UNet and text
    encoder: LDM's beta schedule, the CompVis DDIM update (eta 0, CFG), t_enc_ddpm in t_enc's bin, MSE against
    e_0 - η (e_p - e_0). The random draws are taken in cad's order (t_enc, t_enc_ddpm, x_T) from one generator.
    drop_top=False starts at the top timestep instead (cad's earlier, wrong, reading)."""
    unet, n_train = pipe.unet, 1000
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, n_train, dtype=torch.float64) ** 2  # "linear" of LDM
    abar = torch.cumprod(1 - betas, 0).float()
    ddim = torch.tensor(reference_ddim_timesteps(steps, n_train))
    alphas, alphas_prev = abar[ddim], torch.cat([abar[:1], abar[ddim[:-1]]])
    gen = torch.Generator().manual_seed(seed)
    t_enc = int(torch.randint(steps, (1,), generator=gen))
    lo, hi = round(t_enc / steps * n_train), round((t_enc + 1) / steps * n_train)
    t_ddpm = torch.randint(lo, hi, (1,), generator=gen)
    side = unet.config.sample_size
    x = torch.randn((1, unet.config.in_channels, side, side), generator=gen)
    emb_p = pipe.text_encoder(_ids(pipe, PROMPT))[0]
    emb_0 = pipe.text_encoder(_ids(pipe, ""))[0]

    def eps(x, t, c):
        return unet(x, t, encoder_hidden_states=c).sample

    kept = ddim[:-1] if drop_top else ddim
    for i, step in enumerate(kept.flip(0)):
        index = len(kept) - i - 1
        e_u, e_c = eps(x, step, emb_0), eps(x, step, emb_p)
        e_t = e_u + start_guidance * (e_c - e_u)
        pred_x0 = (x - (1 - alphas[index]).sqrt() * e_t) / alphas[index].sqrt()
        x = alphas_prev[index].sqrt() * pred_x0 + (1 - alphas_prev[index]).sqrt() * e_t
        if index + 1 == t_enc:
            break
    e_0, e_p = eps(x, t_ddpm, emb_0), eps(x, t_ddpm, emb_p)
    e_n = e_p                                   # the trained model before its first update
    return float(torch.nn.functional.mse_loss(e_n, e_0 - eta * (e_p - e_0))), t_enc


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_first_iteration_loss_equals_the_reference_derivation(bb, seed):
    steps, guidance, eta = 50, 3.0, 1.0
    out = build_method(esd_cfg(variant="x", iterations=1, lr=1e-5, ddim_steps=steps, start_guidance=guidance,
                               negative_guidance=eta)).build(MethodContext(backbone=bb, concept=CONCEPT, seed=seed))
    ref, t_enc = reference_first_loss(bb.pipe, seed, steps, guidance, eta)
    # LDM builds ᾱ in float64 (then float32), diffusers' DDIMScheduler in float32: ᾱ differ by ~1e-6 relative,
    # the loss by ~5e-6 (with diffusers' ᾱ in the derivation, by ~1e-6).
    assert out.info["loss"][0] == pytest.approx(ref, rel=2e-5), t_enc
    # Entering at the top timestep instead gives another loss: the check can tell the two apart.
    wrong, _ = reference_first_loss(bb.pipe, seed, steps, guidance, eta, drop_top=False)
    assert abs(wrong - ref) > 1e-3 * ref, t_enc


# ---- ESD-u's trained set against the reference's CompVis names -------------------------------------------------
@pytest.mark.parametrize("shape", [{}, {"unet_channels": (32, 32, 64, 64), "layers_per_block": 2}])
def test_trained_sets_equal_the_references_compvis_filters(shape):
    """train-esd.py selects on CompVis names: noxattn = not out.*, no attn2, no time_embed; xattn = attn2. The
    CompVis names come from the test-only key map of test_checkpoints, and diffusers' own converter
    (convert_ldm_unet_checkpoint) maps each back to the diffusers parameter it loads into (tagged by value)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from test_checkpoints import _to_ldm

    from cad.tiny import build_tiny_pipeline

    bb = wrap(build_tiny_pipeline(0, image_size=16, **shape))
    unet = bb.denoiser
    compvis = list(_to_ldm(unet).items())
    tagged = {f"model.diffusion_model.{k}": torch.full(v.shape, float(i)) for i, (k, v) in enumerate(compvis)}
    to_compvis = {}
    for name, value in convert_ldm_unet_checkpoint(tagged, dict(unet.config)).items():
        tags = value.unique()
        assert tags.numel() == 1, name
        to_compvis[name] = compvis[int(tags.item())][0]
    params = [n for n, _ in unet.named_parameters()]
    assert set(to_compvis) == set(params) and len(set(to_compvis.values())) == len(params)

    def noxattn(c):
        return not (c.startswith("out.") or "attn2" in c or "time_embed" in c)

    assert set(esd_parameter_names(bb, "u")) == {n for n in params if noxattn(to_compvis[n])}
    assert set(esd_parameter_names(bb, "x")) == {n for n in params if "attn2" in to_compvis[n]}
    # What the CompVis filter keeps out, in diffusers names; conv_in (input_blocks.0.0) and the resnets' time
    # projections (emb_layers) are trained.
    assert {n.rpartition(".")[0] for n in params if not noxattn(to_compvis[n]) and "attn2" not in n} == {
        "time_embedding.linear_1", "time_embedding.linear_2", "conv_norm_out", "conv_out"}
    trained = set(esd_parameter_names(bb, "u"))
    assert to_compvis["conv_in.weight"] == "input_blocks.0.0.weight" and "conv_in.weight" in trained
    time_proj = [n for n in params if "time_emb_proj" in n]
    assert time_proj and all(".emb_layers.1." in to_compvis[n] and n in trained for n in time_proj)


def test_first_loss_is_the_guidance_gap(bb):
    """At iteration 0 θ = θ*, so the loss is (1 + η)² · mean((ε(c) − ε(∅))²) at that x_t."""
    out = build_method(esd_cfg(variant="x", iterations=1, lr=1e-3, negative_guidance=0.5)).build(
        MethodContext(backbone=bb, concept=CONCEPT, seed=3))
    assert out.info["loss"][0] > 0
    # Same draw, η = 0: the loss is the plain gap, so the ratio is (1 + 0.5)².
    out0 = build_method(esd_cfg(variant="x", iterations=1, lr=1e-3, negative_guidance=0.0)).build(
        MethodContext(backbone=bb, concept=CONCEPT, seed=3))
    assert out.info["loss"][0] / out0.info["loss"][0] == pytest.approx(1.5 ** 2, rel=1e-4)


@pytest.mark.parametrize("variant", ["x", "u"])
def test_prediction_moves_toward_negative_target(bb, outputs, held_out, variant):
    d_before = _distance(bb, held_out)
    with outputs[variant].edit.applied(bb.pipe):
        d_after = _distance(bb, held_out)
    assert d_after < (0.9 if variant == "u" else 0.5) * d_before, (d_before, d_after)


@pytest.mark.parametrize("variant", ["x", "u"])
def test_edit_touches_only_the_variant(bb, before, outputs, variant):
    edit = outputs[variant].edit
    assert isinstance(edit, WeightEdit) and edit.mode == "replace"
    assert edit.made_for == bb.denoiser_identity()
    assert edit.meta["method"] == "esd" and edit.meta["variant"] == variant
    assert edit.meta["revision"] == 2        # the reference's x_T entry; older cached edits are not reused
    names = set(edit.tensors)
    assert names == set(esd_parameter_names(bb, variant))
    all_names = [n for n, _ in bb.denoiser.named_parameters()]
    if variant == "x":
        assert names == {n for n in all_names if "attn2" in n}
    else:
        assert not any("attn2" in n for n in names)
        kept = {n for n in all_names if "attn2" not in n} - names
        assert kept == {n for n in all_names if n.startswith(("time_embedding.", "conv_norm_out.", "conv_out."))}
        assert any("time_emb_proj" in n for n in names) and "conv_in.weight" in names  # as the reference's noxattn
    # Training left the pipeline untouched (no gradients either), and applied() restores bit for bit.
    for n, p in bb.denoiser.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None, n
    with edit.applied(bb.pipe):
        now = dict(bb.denoiser.named_parameters())
        assert all(not torch.equal(now[n], before[n]) for n in names)
        assert all(torch.equal(now[n], before[n]) for n in all_names if n not in names)
    for n, p in bb.denoiser.named_parameters():
        assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("options", [{}, {"sample_with": "frozen", "score_timestep": "matched"}])
def test_deterministic_with_a_seed(bb, options):
    cfg = esd_cfg(variant="x", iterations=3, lr=1e-3, **options)

    def run(seed):
        return build_method(cfg).build(MethodContext(backbone=bb, concept=CONCEPT, seed=seed))

    a, b, c = run(7), run(7), run(8)
    assert a.info["loss"] == b.info["loss"]
    assert a.edit.fingerprint == b.edit.fingerprint
    assert c.edit.fingerprint != a.edit.fingerprint


@pytest.mark.parametrize("bad", [{"iterations": 0}, {"iterations": 2.5}, {"lr": 0}, {"lr": -1e-5},
                                 {"variant": "xattn"}, {"ddim_steps": 0}, {"negative_guidance": -1},
                                 {"sample_with": "orig"}, {"score_timestep": "x"}, {"image_size": 0},
                                 {"eta": 1.0}])
def test_bad_settings_refused(bad):
    with pytest.raises(MethodConfigError):
        build_method(esd_cfg(**bad))


def test_yaml_defaults_are_the_reference_recipe():
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "conf" / "method" / "esd.yaml").read_text())
    method = build_method(cfg)
    assert (method.name, method.goal, method.iterations, method.lr, method.negative_guidance, method.start_guidance,
            method.ddim_steps) == ("esd", "erase", 1000, 1e-5, 1.0, 3.0, 50)


def test_unsupported_family_named(bb):
    class Other:
        family = "flux"

    with pytest.raises(MethodConfigError, match="flux"):
        esd_parameter_names(Other(), "x")
