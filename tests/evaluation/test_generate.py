"""Seeded, resumable, shardable generation with a tiny real StableDiffusionPipeline (2 steps, 32 px)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cad.generate import generate, image_dir, read_manifest, sampler_settings
from evaluation.benchmarks import Item, load_benchmark, load_spec

STEPS = 2


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(0)


def _items(n, guidance=None, prompt="a circle"):
    return [Item(f"{k:04d}", f"{prompt} {k}", 1000 + k, "x", guidance) for k in range(n)]


def _px(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _stamp(paths):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def test_generates_one_png_per_item_with_manifest_and_meta(pipe, tmp_path):
    bench = load_benchmark("toy_colors", limit=5)
    paths = generate(pipe, bench, tmp_path, steps=STEPS, guidance=3.0, batch_size=2, progress=False,
                     info={"model": "tiny"})
    assert [p.name for p in paths] == [f"{i.id}.png" for i in bench]
    assert all(Image.open(p).size == (32, 32) for p in paths)
    manifest = read_manifest(tmp_path)
    assert list(manifest) == [i.id for i in bench]
    assert [manifest[i.id]["seed"] for i in bench] == [i.seed for i in bench]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["identity"]["steps"] == STEPS and meta["identity"]["edit"] is None
    assert meta["benchmark"]["key"] == "toy_colors@v1" and meta["model"] == "tiny"
    assert "torch" in meta["package_versions"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_image_depends_on_item_seed_not_on_batch(pipe, tmp_path):
    items = _items(3)
    together = generate(pipe, items, tmp_path / "a", steps=STEPS, guidance=3.0, batch_size=3, progress=False)
    alone = generate(pipe, items[1:2], tmp_path / "b", steps=STEPS, guidance=3.0, batch_size=1, progress=False)
    assert np.abs(_px(together[1]) - _px(alone[0])).max() <= 2  # batched kernels: round-off only
    reseeded = [Item(items[1].id, items[1].prompt, 7, "x", None)]
    other = generate(pipe, reseeded, tmp_path / "c", steps=STEPS, guidance=3.0, batch_size=1, progress=False)
    assert np.abs(_px(other[0]) - _px(alone[0])).mean() > 5


def test_fixed_seed_mode_uses_one_seed_for_all(pipe, tmp_path):
    items = [Item("a", "a circle", 1, None, None), Item("b", "a circle", 2, None, None)]
    paths = generate(pipe, items, tmp_path, steps=STEPS, guidance=3.0, batch_size=2, seed_mode="fixed",
                     fixed_seed=5, progress=False)
    assert np.abs(_px(paths[0]) - _px(paths[1])).max() <= 2
    assert {r["seed"] for r in read_manifest(tmp_path).values()} == {5}


def test_per_item_guidance_gets_its_own_batches(pipe, tmp_path):
    items = [Item("0", "a", 1, None, None), Item("1", "b", 2, None, 5.0), Item("2", "c", 3, None, None),
             Item("3", "d", 4, None, 5.0)]
    calls = []

    def spy(p, step, timestep, kwargs):  # a real diffusers step-end callback
        if step == 0:
            calls.append((p.guidance_scale, kwargs["latents"].shape[0]))
        return kwargs

    generate(pipe, items, tmp_path, steps=STEPS, guidance=3.0, batch_size=4, progress=False,
             call_kwargs={"callback_on_step_end": spy})
    assert calls == [(3.0, 2), (5.0, 2)]
    assert {k: r["guidance"] for k, r in read_manifest(tmp_path).items()} == {"0": 3.0, "1": 5.0, "2": 3.0, "3": 5.0}


class Interrupt(Exception):
    pass


def test_resume_after_interruption_regenerates_nothing_and_loses_nothing(pipe, tmp_path):
    items = _items(6)
    calls = {"n": 0}

    def die_in_third_batch(p, step, timestep, kwargs):
        calls["n"] += 1
        if calls["n"] > 2 * STEPS:  # batches of 2: two batches complete, the third dies mid-denoising
            raise Interrupt
        return kwargs

    with pytest.raises(Interrupt):
        generate(pipe, items, tmp_path, steps=STEPS, guidance=3.0, batch_size=2, progress=False,
                 call_kwargs={"callback_on_step_end": die_in_third_batch})
    done = sorted(tmp_path.glob("*.png"))
    assert [p.stem for p in done] == ["0000", "0001", "0002", "0003"]
    assert list(read_manifest(tmp_path)) == ["0000", "0001", "0002", "0003"]
    assert all(Image.open(p).size == (32, 32) for p in done)  # whole images only
    before = _stamp(done)

    paths = generate(pipe, items, tmp_path, steps=STEPS, guidance=3.0, batch_size=2, progress=False)
    assert [p.stem for p in paths] == [i.id for i in items] and all(p.exists() for p in paths)
    assert {k: v for k, v in _stamp(paths).items() if k in before} == before  # finished items untouched
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == [i.id for i in items]  # each once
    again = _stamp(paths)
    generate(pipe, items, tmp_path, steps=STEPS, guidance=3.0, batch_size=2, progress=False)
    assert _stamp(paths) == again  # a complete folder is a no-op


def test_shards_fill_one_folder(pipe, tmp_path):
    items = _items(5)
    got = [generate(pipe, items, tmp_path, steps=STEPS, guidance=3.0, batch_size=2, shard=s, num_shards=2,
                    progress=False) for s in (0, 1)]
    assert [p.stem for p in got[0]] == ["0000", "0002", "0004"] and [p.stem for p in got[1]] == ["0001", "0003"]
    assert sorted(p.name for p in tmp_path.glob("manifest*.jsonl")) == [
        "manifest.shard-000-of-002.jsonl", "manifest.shard-001-of-002.jsonl"]
    assert sorted(read_manifest(tmp_path)) == [i.id for i in items]
    single = generate(pipe, items, tmp_path / "one", steps=STEPS, guidance=3.0, batch_size=2, progress=False)
    for p in single:
        assert np.abs(_px(p) - _px(tmp_path / p.name)).max() <= 2


def test_folder_of_other_settings_is_refused(pipe, tmp_path):
    generate(pipe, _items(1), tmp_path, steps=STEPS, guidance=3.0, progress=False)
    with pytest.raises(ValueError, match="already holds images made with"):
        generate(pipe, _items(1), tmp_path, steps=STEPS + 1, guidance=3.0, progress=False)


def test_bad_arguments(pipe, tmp_path):
    with pytest.raises(ValueError, match="shard must be"):
        generate(pipe, _items(1), tmp_path, steps=1, guidance=3.0, shard=2, num_shards=2)
    with pytest.raises(ValueError, match="seed_mode"):
        generate(pipe, _items(1), tmp_path, steps=1, guidance=3.0, seed_mode="random")
    with pytest.raises(ValueError, match="not filename-safe"):
        generate(pipe, [Item("../x", "a", 1)], tmp_path, steps=1, guidance=3.0)
    with pytest.raises(ValueError, match="occurs twice"):
        generate(pipe, [Item("x", "a", 1), Item("x", "b", 2)], tmp_path, steps=1, guidance=3.0)


def test_image_dir_names_model_edit_sampler_benchmark(pipe, tmp_path):
    bench = load_benchmark("toy_objects", limit=2)
    s = sampler_settings(pipe, steps=20, guidance=3.0)
    d = image_dir(tmp_path, "org/model", None, s, bench)
    assert d.relative_to(tmp_path).parts[:3] == ("images", "org--model", "original")
    assert d.name == f"toy_objects@v1-{bench.meta['images_hash']}" and d.parent.name.startswith("s20-g3.0-32x32-")
    # named by every item of the version: a limit shares the folder, other items (a new template) do not
    assert image_dir(tmp_path, "org/model", None, s, load_benchmark("toy_objects", limit=5)) == d
    spec = {**load_spec("toy_objects"), "source": {**load_spec("toy_objects")["source"], "template": "one {shape}"}}
    assert image_dir(tmp_path, "org/model", None, s, load_benchmark(spec, limit=2)) != d
    assert image_dir(tmp_path, "org/model", None, sampler_settings(pipe, steps=20, guidance=3.0), bench) == d
    assert image_dir(tmp_path, "org/model", "abc123", s, bench).parts[-3] == "abc123"
    for other in (sampler_settings(pipe, steps=21, guidance=3.0),
                  sampler_settings(pipe, steps=20, guidance=3.0, seed_mode="fixed", fixed_seed=1)):
        assert image_dir(tmp_path, "org/model", None, other, bench) != d


def test_edit_is_applied_during_generation_and_restored(pipe, tmp_path):
    from cad.components import get_space
    from cad.edits import Edit

    params = get_space("ff").select(pipe.unet)
    masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in params.items()}
    edit = Edit(masks, {"kind": "test: all ff weights zeroed"})
    before = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    items = _items(2)
    original = generate(pipe, items, tmp_path / "orig", steps=STEPS, guidance=3.0, progress=False)
    edited = generate(pipe, items, tmp_path / "edit", edit=edit, steps=STEPS, guidance=3.0, progress=False)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())  # bit-exact restore
    assert np.abs(_px(original[0]) - _px(edited[0])).mean() > 1
    meta = json.loads((tmp_path / "edit" / "meta.json").read_text())
    assert meta["identity"]["edit"] == edit.fingerprint and meta["edit_meta"]["kind"].startswith("test")
    s = sampler_settings(pipe, steps=STEPS, guidance=3.0)
    assert image_dir(tmp_path, "tiny", edit, s, "b@v1").parts[-3] == edit.fingerprint
