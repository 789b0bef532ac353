"""Weight edits and composed edits share the mask edit's contract: bit-exact restore, refusal of another model,
the record inside the file checked against its sidecar, and a clear error for a damaged file."""

from __future__ import annotations

import json

import pytest
import torch

from cad.backbones import wrap
from cad.edits import (
    ComposedEdit,
    Edit,
    EditFileError,
    EditMismatchError,
    WeightEdit,
    load_composed,
    load_edit,
)


def _bits(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _same(a, b):
    return all(torch.equal(a[n], b[n]) for n in a)


@pytest.fixture()
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(0, image_size=16)


def _kv_edit(pipe, mode="replace", scale=0.5):
    bb = wrap(pipe)
    params = dict(bb.denoiser.named_parameters())
    names = [n for n in params if n.endswith("attn2.to_k.weight")]
    vals = {n: params[n].detach() * scale if mode == "replace" else torch.full_like(params[n], 0.25) for n in names}
    return WeightEdit(vals, {"method": "test", "made_for": bb.denoiser_identity()}, mode=mode), names


@pytest.mark.parametrize("mode", ["replace", "delta"])
def test_weight_edit_applies_and_restores_bit_for_bit(pipe, mode):
    edit, names = _kv_edit(pipe, mode)
    before = _bits(pipe.unet)
    params = dict(pipe.unet.named_parameters())
    with edit.applied(pipe):
        for n in names:
            want = before[n] * 0.5 if mode == "replace" else before[n] + 0.25
            assert torch.equal(params[n], want)
        untouched = [n for n in before if n not in names]
        assert all(torch.equal(params[n], before[n]) for n in untouched)
    assert _same(_bits(pipe.unet), before)


def test_weight_edit_save_load_and_damage(pipe, tmp_path):
    edit, _ = _kv_edit(pipe)
    edit.save(tmp_path / "e")
    back = load_edit(tmp_path / "e")
    assert isinstance(back, WeightEdit) and back.fingerprint == edit.fingerprint and back.mode == "replace"
    side = tmp_path / "e" / "meta.json"
    record = json.loads(side.read_text())
    record["meta"]["method"] = "something else"
    side.write_text(json.dumps(record))
    with pytest.raises(EditFileError, match="disagrees"):
        load_edit(tmp_path / "e")
    blob = (tmp_path / "e" / "edit.safetensors").read_bytes()
    (tmp_path / "e" / "edit.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(EditFileError, match="truncated"):
        load_edit(tmp_path / "e")


def test_edits_refuse_another_model_unless_forced(pipe, tiny_pipe_factory):
    edit, _ = _kv_edit(pipe)
    other = tiny_pipe_factory(1, image_size=16)
    with pytest.raises(EditMismatchError, match="force=True"):
        with edit.applied(other):
            pass
    before = _bits(other.unet)
    with edit.applied(other, force=True):
        pass
    assert _same(_bits(other.unet), before)
    # the same model in another dtype is the same model
    with edit.applied(pipe.to(torch.float16)):
        pass


def test_identity_sees_writes_that_bypass_the_version_counter(pipe):
    edit, names = _kv_edit(pipe)
    with torch.no_grad():
        p = dict(pipe.unet.named_parameters())[names[0]]
        with edit.applied(pipe):
            pass
        p.data.add_(1.0)  # .data does not bump the version counter; the model is another one now
    with pytest.raises(EditMismatchError):
        with edit.applied(pipe):
            pass


def test_weight_union_rules(pipe):
    a, names = _kv_edit(pipe, "delta")
    b = WeightEdit({n: torch.ones_like(t) for n, t in a.tensors.items()}, {"made_for": a.made_for}, mode="delta")
    u = WeightEdit.union(a, b)
    assert all(torch.equal(u.tensors[n], a.tensors[n] + 1) for n in names)
    r, _ = _kv_edit(pipe, "replace")
    with pytest.raises(EditMismatchError, match="mix"):
        WeightEdit.union(a, r)
    with pytest.raises(EditMismatchError, match="two edits replace"):
        WeightEdit.union(r, r)


def test_composed_edit_checks_each_part_on_the_model_it_was_made_for(pipe, tmp_path):
    erase, _ = _kv_edit(pipe)
    before = _bits(pipe.unet)
    with erase.applied(pipe):
        erased_identity = wrap(pipe).denoiser_identity()
    params = dict(pipe.unet.named_parameters())
    name = next(n for n in params if n.endswith("ff.net.2.weight"))
    mask = torch.zeros(params[name].shape, dtype=torch.bool)
    mask[0, :3] = True
    amplify = Edit({name: mask}, {"made_for": erased_identity})
    with pytest.raises(EditMismatchError):  # alone, the amplify mask refuses the unerased model
        with amplify.applied(pipe):
            pass
    both = ComposedEdit([erase, amplify])
    with both.applied(pipe):
        assert (params[name][mask] == 0).all()
    assert _same(_bits(pipe.unet), before)
    both.save(tmp_path / "c")
    back = load_composed(tmp_path / "c")
    assert back.fingerprint == both.fingerprint
