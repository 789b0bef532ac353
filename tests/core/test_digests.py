"""cad.backbones.digests: a model's fingerprint and identity are hashed once per state of its weights, and any write
to the weights (through the parameter, `p.detach()` or `p.data`) or a move to another device or dtype makes the
next call hash again; an edit restored bit for bit finds the digests it left without hashing."""

from __future__ import annotations

import pytest
import torch

from cad.backbones import digests as dg
from cad.components import get_space
from cad.edits import Edit


@pytest.fixture
def unet(tiny_pipe_factory):
    return tiny_pipe_factory(0).unet


@pytest.fixture
def walks(monkeypatch):
    """The walks over the weights made, as the kinds each hashed."""
    seen = []
    real = dg._combined_digests

    def counting(module, digest):
        kinds = next(k for k, fn in dg._WALKS.items() if fn is digest)
        seen.append(kinds)
        return real(module, digest)

    monkeypatch.setattr(dg, "_combined_digests", counting)
    return seen


def test_one_walk_per_state(unet, walks):
    fp, ident = dg.module_fingerprint_and_identity(unet)
    assert walks == [("fingerprint", "identity")]  # both in one walk
    assert dg.module_fingerprint(unet) == fp and dg.module_identity(unet) == ident
    assert dg.module_fingerprint_and_identity(unet) == (fp, ident)
    assert len(walks) == 1  # the memo answered


def test_memoised_digests_equal_a_walk_without_the_memo(unet):
    dg.module_fingerprint_and_identity(unet)
    assert dg.module_fingerprint_and_identity(unet) == tuple(dg._combined_digests(unet, dg._both))
    assert dg.module_identity(unet) == dg._combined_digests(unet, dg._WALKS[("identity",)])[0]


def test_a_missing_kind_walks_for_that_kind_only(unet, walks):
    fp = dg.module_fingerprint(unet)
    ident = dg.module_identity(unet)
    assert walks == [("fingerprint",), ("identity",)]
    assert dg.module_fingerprint_and_identity(unet) == (fp, ident) and len(walks) == 2


@pytest.mark.parametrize("how", ["detach", "no_grad", "data"])
def test_any_write_to_the_weights_hashes_again(unet, walks, how):
    before = dg.module_fingerprint_and_identity(unet)
    p = unet.conv_in.weight
    old = p.detach().clone()
    if how == "detach":
        p.detach().mul_(2)
    elif how == "no_grad":
        with torch.no_grad():
            p.add_(1)
    else:
        p.data.mul_(2)  # bypasses the version counter: the sum catches it
    changed = dg.module_fingerprint_and_identity(unet)
    assert changed[0] != before[0] and changed[1] != before[1] and len(walks) == 2
    p.data.copy_(old)
    assert dg.module_fingerprint_and_identity(unet) == before and len(walks) == 3


def test_a_dtype_change_counts(unet, walks):
    fp32 = dg.module_fingerprint_and_identity(unet)
    half = unet.to(torch.float16)
    fp16 = dg.module_fingerprint_and_identity(half)
    assert fp16[0] != fp32[0] and fp16[1] == fp32[1]  # other bytes, the same model
    assert len(walks) == 2


def test_an_edit_restored_finds_the_digests_it_left(unet, walks):
    before = dg.module_fingerprint_and_identity(unet)
    space = get_space("ff", "sd").select(unet)
    name = next(iter(space))
    mask = {name: torch.zeros_like(space[name], dtype=torch.bool)}
    mask[name].view(-1)[:3] = True
    edit = Edit(mask, {"made_for": before[1]})
    with edit.applied(unet):
        inside = dg.module_fingerprint_and_identity(unet)
        assert inside[0] != before[0] and len(walks) == 2
    # versions moved on, values are back bit for bit: the memo knows them without a walk
    assert dg.known_digests(unet) == {"fingerprint": before[0], "identity": before[1]}
    assert dg.module_fingerprint_and_identity(unet) == before and len(walks) == 2


def test_kinds_are_checked(unet):
    with pytest.raises(ValueError, match="fingerprint"):
        dg.digests(unet, "checksum")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool])
@pytest.mark.parametrize("view", ["whole", "offset", "odd", "transposed"])
def test_the_state_sees_one_changed_element(dtype, view):
    """The bit sum of weights_state changes when any one element changes, in word-aligned tensors, views at an
    offset that is not a word, odd byte counts and non-contiguous views."""
    base = (torch.randn(6, 7) * 5).to(dtype)
    t = {"whole": base, "offset": base.view(-1)[1:29], "odd": base.view(-1)[:7], "transposed": base.t()}[view]
    before = int(dg._bit_sum(t))
    flat_index = (0, min(t.shape[-1], 2) - 1) if t.dim() == 2 else (t.numel() - 1,)
    t[flat_index] = ~t[flat_index] if dtype == torch.bool else t[flat_index] + 1
    assert int(dg._bit_sum(t)) != before


def test_the_benchmark_runs_on_a_tiny_unet(unet, walks):
    """benchmarks/bench_digests.measure on a tiny UNet: a walk per timed walk, none for the memo hits and none after
    the edit's restores (its figures are for `make bench`, not asserted here)."""
    from benchmarks.bench_digests import measure

    r = measure(unet, repeats=2)
    assert set(r) >= {"walk_s", "hit_s", "state_s", "edit_restored_s", "hit_over_walk"}
    # the 2 timed walks only: the memo answers the hits, the edit's check and the digests after its restores
    assert walks == [("fingerprint", "identity")] * 2
