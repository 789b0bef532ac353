"""Generation at GPU speed without changing the images (cad.speed through cad.generate), on a tiny real
StableDiffusionPipeline on CPU: batch size, channels-last and a compiled denoiser each keep a seed's image within
cad.speed.PIXEL_TOLERANCE, stay out of the image folder's identity, and an edit applied to a compiled denoiser
takes effect and is undone by its restore."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cad.components import get_space
from cad.edits import Edit
from cad.generate import generate, image_dir, sampler_settings
from cad.speed import (
    CPU_BATCH_SIZE,
    PIXEL_MEAN_TOLERANCE,
    PIXEL_TOLERANCE,
    compile_options,
    fast_denoiser,
    resolve_batch_size,
    wants_channels_last,
)
from evaluation.benchmarks import Item

STEPS = 2


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(0)


def _items(n):
    return [Item(f"{k:04d}", f"a circle {k}", 1000 + k, "x", None) for k in range(n)]


def _px(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _assert_same_images(a, b):
    for pa, pb in zip(a, b, strict=True):
        diff = np.abs(_px(pa) - _px(pb))
        assert diff.max() <= PIXEL_TOLERANCE and diff.mean() <= PIXEL_MEAN_TOLERANCE, (pa.name, diff.max())


def _records(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def _unet_inputs(unet):
    c = unet.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=g)
    return x, torch.tensor(10), torch.randn(2, 77, c.cross_attention_dim, generator=g)


def _ff_edit(unet):
    params = get_space("ff").select(unet)
    return Edit({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}, {"kind": "test: ff zeroed"})


def test_batch_size_does_not_change_a_seeds_image(pipe, tmp_path):
    items = _items(4)
    one = generate(pipe, items, tmp_path / "b1", steps=STEPS, guidance=3.0, batch_size=1, progress=False)
    four = generate(pipe, items, tmp_path / "b4", steps=STEPS, guidance=3.0, batch_size=4, progress=False)
    _assert_same_images(one, four)
    assert [r["batch"] for r in _records(tmp_path / "b4")] == [4] * 4


def test_auto_batch_size_off_cuda_is_the_fixed_default(pipe, tmp_path):
    assert resolve_batch_size(pipe, "auto", height=32, width=32, guidance=3.0) == CPU_BATCH_SIZE
    assert resolve_batch_size(pipe, 3, height=32, width=32, guidance=3.0) == 3
    items = _items(CPU_BATCH_SIZE + 1)
    generate(pipe, items, tmp_path, steps=1, guidance=3.0, batch_size="auto", progress=False)
    assert sorted(r["batch"] for r in _records(tmp_path)) == [1] + [CPU_BATCH_SIZE] * CPU_BATCH_SIZE
    for bad in (0, -1, "big", True, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            generate(pipe, items, tmp_path / "bad", steps=1, guidance=3.0, batch_size=bad, progress=False)
    with pytest.raises(ValueError, match="compile"):
        generate(pipe, items, tmp_path / "bad", steps=1, guidance=3.0, compile=3, progress=False)
    with pytest.raises(ValueError, match="channels_last"):
        generate(pipe, items, tmp_path / "bad", steps=1, guidance=3.0, channels_last="on", progress=False)
    assert not (tmp_path / "bad").exists()  # refused before the folder was made


def test_channels_last_keeps_images_and_is_undone(pipe, tmp_path):
    conv = pipe.unet.conv_in.weight
    assert not wants_channels_last(pipe.unet, "auto")  # a CPU: auto leaves the layout alone
    with pytest.raises(ValueError, match="channels_last"):
        wants_channels_last(pipe.unet, "yes")
    with fast_denoiser(pipe, channels_last=True) as den:
        assert den is pipe.unet and conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert conv.is_contiguous() and pipe.unet.conv_in.weight is conv  # the same Parameter, its layout back
    items = _items(3)
    plain = generate(pipe, items, tmp_path / "plain", steps=STEPS, guidance=3.0, progress=False)
    nhwc = generate(pipe, items, tmp_path / "nhwc", steps=STEPS, guidance=3.0, channels_last=True, progress=False)
    _assert_same_images(plain, nhwc)
    assert all(r["channels_last"] for r in _records(tmp_path / "nhwc"))


def test_auto_layout_is_channels_last_only_for_a_compiled_cuda_unet(pipe, monkeypatch):
    """An H200 rendered eager SD 1.4 / SDXL UNets 10% slower in channels-last and compiled ones 31% faster than
    eager (benchmarks/results/bench_gpu_h200.md), so `auto` asks for both a compile and a CUDA UNet."""
    assert not wants_channels_last(pipe.unet, "auto", compiled=True)  # on the CPU: never
    import cad.speed

    monkeypatch.setattr(cad.speed, "_device_of", lambda module: torch.device("cuda"))
    assert wants_channels_last(pipe.unet, "auto", compiled=True)
    assert not wants_channels_last(pipe.unet, "auto", compiled=False)
    assert not wants_channels_last(torch.nn.Linear(2, 2), "auto", compiled=True)  # not a UNet
    assert wants_channels_last(pipe.unet, True) and not wants_channels_last(pipe.unet, False, compiled=True)


def test_a_layout_change_resets_compiled_code(pipe, monkeypatch):
    """Compiled code assumes the weight strides it was traced with, and no guard re-checks a parameter's layout
    (an H200 failed inductor's stride assertion compiling the other layout in the same process): compiling a
    denoiser in another layout than last time resets torch.compile's cache first, the same layout does not."""
    import cad.speed

    resets = []
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(1))
    monkeypatch.setattr(cad.speed, "_COMPILED_LAYOUT", {})
    x, t, emb = _unet_inputs(pipe.unet)
    outs = []
    for layout in (True, True, False):
        with torch.no_grad(), fast_denoiser(pipe, compile="eager", channels_last=layout) as den:
            outs.append(den(x, t, emb).sample)
    assert len(resets) == 1  # only the switch to contiguous
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-4, atol=1e-5)


def test_speed_settings_stay_out_of_the_image_folder(pipe, tmp_path):
    """The folder is named by what the images are; how they were rendered does not name it, so a compiled,
    channels-last, batch-1 run reuses the plain run's images (none rendered again) and writes no other folder."""
    items = _items(2)
    s = sampler_settings(pipe, steps=STEPS, guidance=3.0)
    folder = image_dir(tmp_path, "tiny", None, s, "b@v1")
    paths = generate(pipe, items, folder, steps=STEPS, guidance=3.0, progress=False)
    stamps = [p.stat().st_mtime_ns for p in paths]
    again = generate(pipe, items, folder, steps=STEPS, guidance=3.0, batch_size=1, compile="eager",
                     channels_last=True, progress=False)
    assert again == paths and [p.stat().st_mtime_ns for p in again] == stamps
    assert pipe.unet._compiled_call_impl is None  # nothing rendered, and nothing left compiled


def _check_compiled(pipe, backend, tmp_path):
    """A denoiser compiled with `backend` gives the plain one's output and images; an edit applied after
    compilation changes its output and its restore brings the compiled output back bit for bit."""
    unet = pipe.unet
    x, t, emb = _unet_inputs(unet)
    names = [n for n, _ in unet.named_parameters()]
    edit = _ff_edit(unet)
    with torch.no_grad():
        plain = unet(x, t, emb).sample
        with edit.applied(pipe):
            plain_edited = unet(x, t, emb).sample
        with fast_denoiser(pipe, compile=backend) as den:
            assert den is unet and den._compiled_call_impl is not None
            assert [n for n, _ in den.named_parameters()] == names  # edits still resolve every name
            compiled = den(x, t, emb).sample
            torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-5)
            with edit.applied(pipe):
                edited = den(x, t, emb).sample
            restored = den(x, t, emb).sample
    assert unet._compiled_call_impl is None
    assert (edited - compiled).abs().max() > 1e-3  # the edit reached the compiled code
    torch.testing.assert_close(edited, plain_edited, rtol=1e-4, atol=1e-5)
    assert torch.equal(restored, compiled)  # the same compiled computation on the restored weights

    items = _items(2)
    plain_imgs = generate(pipe, items, tmp_path / "plain", steps=STEPS, guidance=3.0, progress=False)
    compiled_imgs = generate(pipe, items, tmp_path / "compiled", steps=STEPS, guidance=3.0, compile=backend,
                             progress=False)
    _assert_same_images(plain_imgs, compiled_imgs)
    assert all(r["compile"] == compile_options(backend) for r in _records(tmp_path / "compiled"))


def test_compiled_denoiser_same_images_and_edits_take_effect(tiny_pipe_factory, tmp_path):
    """The compile path with torch.compile's `eager` backend (dynamo traces the UNet, no code generation): the
    same in-place compilation and restore as inductor, in seconds."""
    _check_compiled(tiny_pipe_factory(0), "eager", tmp_path)


@pytest.mark.slow
def test_inductor_compiled_denoiser_same_images_and_edits_take_effect(tiny_pipe_factory, tmp_path):
    """`generation.compile=true` as it runs: inductor generating C++ for the CPU (minutes with gcc)."""
    _check_compiled(tiny_pipe_factory(0), True, tmp_path)


def test_a_denoiser_the_caller_compiled_stays_compiled(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0)
    pipe.unet.compile(backend="eager")
    mine = pipe.unet._compiled_call_impl
    with fast_denoiser(pipe, compile=True):
        assert pipe.unet._compiled_call_impl is mine
    assert pipe.unet._compiled_call_impl is mine
