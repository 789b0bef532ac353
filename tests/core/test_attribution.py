"""attribute(): shapes, determinism, gradients only where asked, call counts, and that the scores mean
what the sign convention says (zeroing top components moves the measured objective the predicted way)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cad import (
    Edit,
    attribute,
    concept_latents,
    erase_reference,
    get_space,
    measure_amplify_objective,
    measure_erase_objective,
)

PROMPT = "a photo of a cat"  # as in conftest.py, which builds erase_scores with these
STEPS = 6

KW = dict(steps=STEPS, num_samples=2, seed=0)


def test_scores_shapes_finite_meta(small_pipe, erase_scores):
    params = get_space("ff").select(small_pipe.unet)
    assert list(erase_scores.scores) == list(params)
    for n, s in erase_scores.scores.items():
        assert s.dtype == torch.float32 and s.shape == params[n].shape and torch.isfinite(s).all()
        assert s.abs().sum() > 0
    meta = erase_scores.meta
    assert meta["objective"] == "erase" and meta["estimator"] == "trajectory" and meta["concept"] == PROMPT
    assert meta["steps"] == STEPS and meta["num_samples"] == 2 and meta["guidance"] == 3.0
    assert meta["unet_calls"] == 2 * STEPS  # base eps doubles as the CFG's unconditional eps
    assert meta["space"]["name"] == "ff" and "torch" in meta["package_versions"]
    assert meta["objective_value"] > 0 and len(meta["objective_terms"]) == STEPS


def test_deterministic_under_seed(small_pipe, erase_scores):
    again = attribute(small_pipe, PROMPT, progress=False, **KW)
    other = attribute(small_pipe, PROMPT, progress=False, **{**KW, "seed": 1})
    for n in erase_scores.scores:
        assert torch.equal(again.scores[n], erase_scores.scores[n])
    assert any(not torch.equal(other.scores[n], erase_scores.scores[n]) for n in other.scores)


def test_only_chosen_tensors_get_gradients(small_pipe):
    unet = small_pipe.unet
    seen = []
    handle = unet.register_forward_pre_hook(
        lambda mod, args: seen.append({n for n, p in mod.named_parameters() if p.requires_grad}))
    try:
        scores = attribute(small_pipe, PROMPT, steps=2, space="cross_attn", progress=False)
    finally:
        handle.remove()
    chosen = set(get_space("cross_attn").select(unet))
    assert set(scores.scores) == chosen
    assert seen and all(s == chosen for s in seen)
    assert all(p.requires_grad for p in unet.parameters())  # flags restored afterwards
    assert all(p.grad is None for p in unet.parameters())  # nothing left behind in .grad


def test_call_counts_trajectory_vs_restart(small_pipe):
    t = attribute(small_pipe, PROMPT, steps=4, progress=False)
    r = attribute(small_pipe, PROMPT, steps=4, estimator="restart", progress=False)
    neg = attribute(small_pipe, PROMPT, steps=4, negative_prompt="blurry", progress=False)
    assert t.meta["unet_calls"] == 8  # O(T): 2 per step
    assert r.meta["unet_calls"] == (1 + 2 + 3 + 4) + 8  # O(T^2): fresh trajectory per step
    assert neg.meta["unet_calls"] == 12  # a separate unconditional eps when negative != base
    for n in t.scores:
        assert torch.isfinite(r.scores[n]).all() and r.scores[n].shape == t.scores[n].shape
    # Restart is itself seeded and deterministic.
    r2 = attribute(small_pipe, PROMPT, steps=4, estimator="restart", progress=False)
    assert all(torch.equal(r.scores[n], r2.scores[n]) for n in r.scores)


def test_measured_objective_reuses_attribution_latents(small_pipe, erase_scores):
    assert measure_erase_objective(small_pipe, PROMPT, **KW) == pytest.approx(
        erase_scores.meta["objective_value"], rel=1e-6)


@pytest.mark.parametrize("base_target", ["fixed", "edited"])
def test_zeroing_top_positive_lowers_erase_more_than_random(small_pipe, erase_scores, base_target):
    ref = erase_reference(small_pipe, PROMPT, **KW)  # x_t (and base targets) of the unedited model
    j0 = ref.value
    edit = Edit.from_scores(erase_scores, 0.01, "positive")
    assert edit.n_ablated > 0
    kw = dict(reference=ref, base_target=base_target, **KW)
    j_top = measure_erase_objective(small_pipe, PROMPT, edit=edit, **kw)
    j_rand = [measure_erase_objective(small_pipe, PROMPT, edit=Edit.random_like(edit, s), **kw) for s in range(3)]
    assert j_top < j0
    assert j0 - j_top > 2 * max(j0 - j for j in j_rand), (j0, j_top, j_rand)


def test_single_weight_alpha_is_first_order_change(small_pipe, erase_scores):
    """alpha_i ~ J(w) - J(w with w_i = 0) for the largest |alpha|, each zeroed alone (sign convention)."""
    ref = erase_reference(small_pipe, PROMPT, **KW)
    flat = torch.cat([s.flatten() for s in erase_scores.scores.values()])
    names, sizes = list(erase_scores.scores), [s.numel() for s in erase_scores.scores.values()]
    for largest in (True, False):
        for i in torch.topk(flat, 2, largest=largest).indices.tolist():
            alpha = float(flat[i])
            k = 0  # flat index -> (tensor k, entry i)
            while i >= sizes[k]:
                i, k = i - sizes[k], k + 1
            name, size = names[k], sizes[k]
            mask = torch.zeros(size, dtype=torch.bool)
            mask[i] = True
            edit = Edit({name: mask.reshape(erase_scores.scores[name].shape)})
            drop = ref.value - measure_erase_objective(small_pipe, PROMPT, edit=edit, reference=ref, **KW)
            assert (alpha > 0) == largest and 0.5 < drop / alpha < 2, (name, alpha, drop)


def test_amplify_zeroing_top_negative_lowers_denoising_loss(small_pipe, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):  # smooth random images in a folder: the folder input path
        img = rng.random((4, 4, 3)) * 255
        Image.fromarray(img.astype(np.uint8)).resize((16, 16), Image.BILINEAR).save(tmp_path / f"{i}.png")
    scores = attribute(small_pipe, PROMPT, objective="amplify", images=tmp_path, steps=STEPS, progress=False)
    assert scores.meta["estimator"] == "direct" and scores.meta["images"]["count"] == 3
    assert scores.meta["unet_calls"] == STEPS
    latents = concept_latents(small_pipe, tmp_path, seed=0)
    j0 = measure_amplify_objective(small_pipe, latents, PROMPT, steps=STEPS)
    assert j0 == pytest.approx(scores.meta["objective_value"], rel=1e-6)
    edit = Edit.from_scores(scores, 0.05, "negative")
    j1 = measure_amplify_objective(small_pipe, latents, PROMPT, steps=STEPS, edit=edit)
    j_rand = measure_amplify_objective(small_pipe, latents, PROMPT, steps=STEPS, edit=Edit.random_like(edit, 0))
    assert j1 > j0 and j1 - j0 > abs(j_rand - j0)  # denoising loss on the concept went down
    # First order: the predicted change has the measured sign and magnitude.
    predicted = scores.predicted_change(edit.masks)
    assert predicted > 0 and 0.3 < (j1 - j0) / predicted < 3


def test_amplify_from_generated_images_and_tensor(small_pipe):
    lat = concept_latents(small_pipe, None, prompt=PROMPT, num_images=2, steps=3, seed=0)
    assert lat.shape == (2, 4, 8, 8) and torch.isfinite(lat).all()
    imgs = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    lat_t = concept_latents(small_pipe, imgs, seed=0)
    assert lat_t.shape == (2, 4, 8, 8)
    assert torch.equal(lat_t, concept_latents(small_pipe, imgs, seed=0))
    s = attribute(small_pipe, PROMPT, objective="amplify", images=imgs, steps=2, progress=False)
    assert all(torch.isfinite(v).all() for v in s.scores.values())


def test_half_precision_model_accumulates_float32(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0, image_size=16)
    ref = attribute(pipe, PROMPT, steps=3, progress=False)
    pipe.to(dtype=torch.bfloat16)
    low = attribute(pipe, PROMPT, steps=3, progress=False)
    assert low.meta["dtype"] == "bfloat16"
    a = torch.cat([ref.scores[n].flatten() for n in ref.scores])
    b = torch.cat([low.scores[n].flatten() for n in low.scores])
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9  # same scores up to bf16 noise


@pytest.mark.parametrize("kwargs,match", [
    ({"objective": "forget"}, "objective"), ({"estimator": "exact"}, "estimator"),
    ({"objective": "amplify", "estimator": "restart"}, "restart estimator applies"), ({"steps": 0}, "steps"),
    ({"space": "mlp"}, "component space"),
])
def test_bad_arguments_raise(small_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        attribute(small_pipe, PROMPT, progress=False, **kwargs)


def test_bad_images_raise(small_pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        concept_latents(small_pipe, tmp_path / "nope")
    with pytest.raises(ValueError, match="no images"):
        concept_latents(small_pipe, tmp_path)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        concept_latents(small_pipe, torch.full((1, 3, 16, 16), -1.0))


def test_restart_and_trajectory_estimate_the_same_gradient(small_pipe):
    """Parity: the two estimators agree far better than chance (they differ in which x_t they visit)."""
    def flat(s):
        return torch.cat([v.flatten() for v in s.scores.values()])

    kw = dict(steps=10, num_samples=4, seed=0, progress=False)
    t = flat(attribute(small_pipe, PROMPT, **kw))
    r = flat(attribute(small_pipe, PROMPT, estimator="restart", **kw))
    assert torch.corrcoef(torch.stack([t, r]))[0, 1] > 0.5


def test_bare_trajectory_equals_reference(small_pipe, erase_scores):
    """measure_erase_objective(trajectory=x_t) recomputes the unedited base targets: same as reference=."""
    from cad.objectives import erase_trajectory

    ref = erase_reference(small_pipe, PROMPT, **KW)
    traj = erase_trajectory(small_pipe, PROMPT, **KW)
    edit = Edit.from_scores(erase_scores, 0.01)
    assert measure_erase_objective(small_pipe, PROMPT, trajectory=traj, edit=edit, **KW) == \
        measure_erase_objective(small_pipe, PROMPT, reference=ref, edit=edit, **KW)
    with pytest.raises(ValueError, match="base_target"):
        measure_erase_objective(small_pipe, PROMPT, reference=ref, edit=edit, base_target="moving", **KW)


def test_finiteness_check_sees_nan_and_inf_anywhere():
    from cad.attribution import _all_finite

    t = torch.zeros(64, 33)
    assert _all_finite(t) and _all_finite(torch.empty(0))
    for bad in (float("nan"), float("inf"), -float("inf")):
        u = t.clone()
        u[40, 17] = bad
        assert not _all_finite(u)
