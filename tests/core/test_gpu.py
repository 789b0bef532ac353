"""CUDA checks (marked gpu; `make test` deselects them): half-precision attribution accumulates float32
gradients, edits restore bit for bit on the device, and devices agree with each other."""

from __future__ import annotations

import math

import pytest
import torch

from cad import Edit, attribute, concept_latents, measure_erase_objective, unet_fingerprint

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU host)")]

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def cuda_pipe(tiny_pipe_factory):
    return tiny_pipe_factory(0, image_size=32).to("cuda")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores_are_float32_and_agree(tiny_pipe_factory, dtype):
    ref = attribute(tiny_pipe_factory(0, image_size=32).to("cuda"), PROMPT, steps=10, progress=False)
    low = attribute(tiny_pipe_factory(0, image_size=32).to("cuda", dtype), PROMPT, steps=10, progress=False)
    a = torch.cat([s.flatten() for s in ref.scores.values()])
    b = torch.cat([s.flatten() for s in low.scores.values()])
    assert b.dtype == torch.float32 and torch.isfinite(b).all() and b.device.type == "cpu"
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95


def test_cuda_matches_cpu_trajectory(tiny_pipe_factory, cuda_pipe):
    """Same seed, same x_T (drawn on the CPU): the CUDA and CPU objectives agree to float tolerance."""
    cpu = tiny_pipe_factory(0, image_size=32)
    j_cpu = measure_erase_objective(cpu, PROMPT, steps=10)
    j_gpu = measure_erase_objective(cuda_pipe, PROMPT, steps=10)
    assert j_gpu == pytest.approx(j_cpu, rel=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_edit_restores_bit_for_bit_on_cuda(tiny_pipe_factory, dtype):
    pipe = tiny_pipe_factory(0, image_size=32).to("cuda", dtype)
    scores = attribute(pipe, PROMPT, steps=3, progress=False)
    edit = Edit.from_scores(scores, 0.05, "both")
    fp = unet_fingerprint(pipe.unet)
    with edit.applied(pipe):
        assert unet_fingerprint(pipe.unet) != fp
    assert unet_fingerprint(pipe.unet) == fp


def test_amplify_on_cuda_half(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0, image_size=32).to("cuda", torch.float16)
    imgs = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lat = concept_latents(pipe, imgs, seed=0)
    assert lat.dtype == torch.float32 and lat.shape == (3, 4, 16, 16)
    s = attribute(pipe, PROMPT, objective="amplify", images=imgs, steps=5, progress=False)
    assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in s.scores.values())


def test_measure_with_edit_on_cuda_half(tiny_pipe_factory):
    """The reference pass lives on the CPU and is moved back to the device for the edited evaluation."""
    from cad import erase_reference

    pipe = tiny_pipe_factory(0, image_size=32).to("cuda", torch.float16)
    scores = attribute(pipe, PROMPT, steps=5, progress=False)
    ref = erase_reference(pipe, PROMPT, steps=5)
    assert ref.value == pytest.approx(scores.meta["objective_value"], rel=1e-3)
    edit = Edit.from_scores(scores, 0.01)
    for target in ("fixed", "edited"):
        j = measure_erase_objective(pipe, PROMPT, steps=5, edit=edit, reference=ref, base_target=target)
        assert math.isfinite(j) and j != ref.value  # the edit changed J; its direction is tested on the CPU
