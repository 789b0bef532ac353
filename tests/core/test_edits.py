"""Edits: bit-exact apply/revert, loud failures before any weight changes, save/load, union, export."""

from __future__ import annotations

import pytest
import torch

from cad import Edit, EditMismatchError, export_edited_pipeline, unet_fingerprint


def _state(unet):
    return {n: p.detach().clone() for n, p in unet.named_parameters()}


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal as bit patterns (so -0.0 vs 0.0 or NaN payloads would count as different)."""
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return a.dtype == b.dtype and torch.equal(a.view(as_int[a.element_size()]), b.view(as_int[b.element_size()]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_applied_restores_bit_for_bit(tiny_pipe_factory, erase_scores, dtype):
    pipe = tiny_pipe_factory(0, image_size=16).to(dtype=dtype)
    edit = Edit.from_scores(erase_scores, 0.1, "both")
    before, fp = _state(pipe.unet), unet_fingerprint(pipe.unet)
    params = dict(pipe.unet.named_parameters())
    with edit.applied(pipe) as same:
        assert same is pipe
        for n, m in edit.masks.items():
            assert (params[n][m] == 0).all()
            assert torch.equal(params[n][~m], before[n][~m])
        assert unet_fingerprint(pipe.unet) != fp
    assert all(_bits_equal(p, before[n]) for n, p in pipe.unet.named_parameters())
    assert unet_fingerprint(pipe.unet) == fp


def test_restores_when_body_raises(small_pipe, erase_scores):
    edit = Edit.from_scores(erase_scores, 0.1)
    fp = unet_fingerprint(small_pipe.unet)
    with pytest.raises(RuntimeError, match="boom"):
        with edit.applied(small_pipe):
            raise RuntimeError("boom")
    assert unet_fingerprint(small_pipe.unet) == fp


def test_apply_in_place(tiny_pipe_factory, erase_scores):
    pipe = tiny_pipe_factory(0, image_size=16)
    edit = Edit.from_scores(erase_scores, 0.1)
    edit.apply_(pipe.unet)
    params = dict(pipe.unet.named_parameters())
    assert all((params[n][m] == 0).all() for n, m in edit.masks.items())
    assert sum(int((params[n] == 0).sum()) for n in edit.masks) >= edit.n_ablated


def test_mismatch_fails_before_touching_weights(small_pipe, erase_scores):
    good = Edit.from_scores(erase_scores, 0.1).masks
    fp = unet_fingerprint(small_pipe.unet)
    missing = Edit({**good, "no.such.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(EditMismatchError, match="lacks"):
        missing.apply_(small_pipe)
    first = next(iter(good))
    shaped = Edit({**good, first: torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(EditMismatchError, match="shape"):
        with shaped.applied(small_pipe):
            pass
    assert unet_fingerprint(small_pipe.unet) == fp


def test_counts_and_meta(erase_scores):
    edit = Edit.from_scores(erase_scores, 0.05, "positive", "row")
    assert edit.n_ablated == sum(edit.counts.values()) == sum(int(m.sum()) for m in edit.masks.values())
    assert edit.n_total == erase_scores.numel and edit.fraction == edit.n_ablated / edit.n_total
    assert edit.meta["ratio"] == 0.05 and edit.meta["sign"] == "positive" and edit.meta["space"]["name"] == "ff"
    assert edit.meta["scores"]["unet_fingerprint"] == erase_scores.meta["unet_fingerprint"]
    assert edit.meta["n_ablated"] == edit.n_ablated
    assert Edit.from_scores(erase_scores, 0.05).fingerprint == edit.fingerprint
    assert Edit.from_scores(erase_scores, 0.06).fingerprint != edit.fingerprint


def test_random_like_is_the_matched_control(erase_scores):
    edit = Edit.from_scores(erase_scores, 0.05)
    ctrl = Edit.random_like(edit, 0)
    assert ctrl.counts == edit.counts and ctrl.fingerprint != edit.fingerprint
    assert ctrl.meta["kind"] == "random" and ctrl.meta["control_of"] == edit.fingerprint
    assert Edit.random_like(edit, 0).fingerprint == ctrl.fingerprint


def test_save_load_round_trip(erase_scores, tmp_path):
    edit = Edit.from_scores(erase_scores, 0.05, "both")
    edit.save(tmp_path / "e")
    back = Edit.load(tmp_path / "e")
    assert back.fingerprint == edit.fingerprint and back.meta == edit.meta
    assert all(torch.equal(back.masks[n], edit.masks[n]) for n in edit.masks)
    # Compact: indices only, far smaller than a dense float mask.
    assert (tmp_path / "e" / "edit.safetensors").stat().st_size < 4 * edit.n_ablated + 4096
    with pytest.raises(FileNotFoundError, match="Edit.from_scores"):
        Edit.load(tmp_path / "missing")


def test_union(erase_scores):
    a = Edit.from_scores(erase_scores, 0.05, "positive")
    b = Edit.from_scores(erase_scores, 0.05, "negative")
    u = Edit.union(a, b)
    for n in a.masks:
        assert torch.equal(u.masks[n], a.masks[n] | b.masks[n])
    assert u.n_ablated == a.n_ablated + b.n_ablated  # disjoint signs
    assert u.meta["part_fingerprints"] == [a.fingerprint, b.fingerprint]
    with pytest.raises(EditMismatchError, match="shape"):
        Edit.union(a, Edit({next(iter(a.masks)): torch.zeros(2, dtype=torch.bool)}))


def test_export_loads_in_plain_diffusers(small_pipe, erase_scores, tmp_path):
    from diffusers import StableDiffusionPipeline

    edit = Edit.from_scores(erase_scores, 0.1)
    fp = unet_fingerprint(small_pipe.unet)
    out = export_edited_pipeline(small_pipe, edit, tmp_path / "edited")
    assert unet_fingerprint(small_pipe.unet) == fp  # the pipeline in memory stays unedited
    loaded = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, requires_safety_checker=False)
    with edit.applied(small_pipe):
        assert unet_fingerprint(loaded.unet) == unet_fingerprint(small_pipe.unet)
    assert (out / "cad_edit.json").is_file()
    with pytest.raises(FileExistsError, match="overwrite"):
        export_edited_pipeline(small_pipe, edit, out)
