"""What a model is, as hashes of its weights: the exact fingerprint and the dtype-independent identity, each walk
over the weights made once per state of the module.

- `module_fingerprint`: blake2b of every state-dict tensor (name, shape, dtype, bytes); any weight change gives a
  new one. Cache keys of attributions, runs and edits rest on it.
- `module_identity`: the same over the tensors cast to float16, so a float32 model and its float16 copy share it
  (edits record it as `made_for`).

A walk hashes every byte of the weights: 31 s of a one-step FLUX attribution on an H200 (23.8 GB of bfloat16
hashed twice; benchmarks/results/bench_gpu_h200.md). A run asks for the same model's digests many times (at load,
in every attribution, for every edit's check), so each module keeps the digests of its current state: per tensor,
its storage pointer, version counter, dtype, shape and the integer sum of its elements' bit patterns. torch bumps
a tensor's version on every in-place write through the parameter or `p.detach()`; a write through `p.data` does
not, which the bit sum catches unless several changed elements cancel exactly. Reading the state costs one
integer reduction per tensor, not a hash. An edit restored bit for bit re-registers the digests it found
(`remember_digests`), so generating under several edits of one model hashes it once.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

import torch

# Elements cast to float16 at a time for the identity digest (2 MB buffers).
HALF_CHUNK = 1 << 20

# module -> (its weights_state, {"fingerprint": ..., "identity": ...} of that state); weak, so a freed model leaves.
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tensor_digest(item: tuple[str, torch.Tensor]) -> bytes:
    name, t = item
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
    # Hash the raw bytes (a uint8 view works for every dtype, bf16 included); hashlib releases the GIL.
    h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data)
    return h.digest()


def _half_digest(item: tuple[str, torch.Tensor]) -> bytes:
    """_tensor_digest of the tensor cast to float16, cast a chunk at a time into one small buffer: blake2b
    is incremental, so the digest is the whole cast's. Whole-tensor copies, made in the hashing threads,
    were freed into those threads' malloc arenas, which the main thread never reuses: about 0.1 GB of
    resident memory left behind on SD 1.4, part of an attribution's peak."""
    name, t = item
    t = t.detach()
    if not t.is_floating_point() or t.dtype == torch.float16:
        return _tensor_digest((name, t))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{name}|{tuple(t.shape)}|{torch.float16}|".encode())
    flat = t.contiguous().reshape(-1)
    buf = torch.empty(min(flat.numel(), HALF_CHUNK), dtype=torch.float16, device=t.device)
    for s in range(0, flat.numel(), HALF_CHUNK):
        part = buf[:min(HALF_CHUNK, flat.numel() - s)]
        part.copy_(flat[s:s + HALF_CHUNK])  # the same cast (and device) as t.to(torch.float16)
        h.update(part.cpu().view(torch.uint8).numpy().data)
    return h.digest()


def _both(item: tuple[str, torch.Tensor]) -> tuple[bytes, bytes]:
    exact = _tensor_digest(item)
    t = item[1]
    # A float16 (or integer) tensor already is its own float16 view: its identity digest is the exact one.
    same = not t.is_floating_point() or t.dtype == torch.float16
    return exact, exact if same else _half_digest(item)


_WALKS = {("fingerprint",): lambda item: (_tensor_digest(item),), ("identity",): lambda item: (_half_digest(item),),
          ("fingerprint", "identity"): _both}


def _combined_digests(module: torch.nn.Module, digest) -> list[str]:
    """`digest(name, tensor)` -> a tuple of byte digests, for every tensor of the module's state dict, in
    parallel threads (blake2b releases the GIL); returns each position's digests combined in name order."""
    items = sorted(module.state_dict().items())
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        per_tensor = list(pool.map(digest, items))
    out = []
    for k in range(len(per_tensor[0]) if per_tensor else 1):
        h = hashlib.blake2b(digest_size=16)
        for ds in per_tensor:
            h.update(ds[k])
        out.append(h.hexdigest())
    return out


# The integer type of each element size: a tensor's bits summed as integers (exact, wrapping at 2**64).
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bit_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor's bytes read as int64 words (8 bytes at a time: no conversion, ~25 GB/s on one CPU core),
    or as integers of its element size when its bytes do not split into words."""
    flat = t.reshape(-1)
    if t.numel() and (t.numel() * t.element_size()) % 8 == 0:
        try:
            return flat.view(torch.int64).sum()
        except RuntimeError:  # a view whose storage offset does not fall on a word: by elements below
            pass
    if t.element_size() in _BITS and not t.is_complex():
        return flat.view(_BITS[t.element_size()]).sum(dtype=torch.int64)
    return flat.sum().to(torch.int64) if t.numel() else torch.zeros((), dtype=torch.int64, device=t.device)


@torch.no_grad()
def weights_state(module: torch.nn.Module) -> tuple:
    """What the digests of `module` depend on, read without hashing: per state-dict tensor its name, storage
    pointer, version counter, dtype, shape and the sum of its bytes as integers (any one changed element changes
    it; one transfer per device for the sums). An integer sum needs no conversion, so it runs at memory speed,
    where a float64 sum of float16 weights took longer on a CPU than hashing them."""
    items = sorted(module.state_dict(keep_vars=True).items())
    sums: list = [None] * len(items)
    by_device: dict[torch.device, list[tuple[int, torch.Tensor]]] = {}
    for i, (_, t) in enumerate(items):
        by_device.setdefault(t.device, []).append((i, _bit_sum(t.detach())))
    for parts in by_device.values():
        for (i, _), value in zip(parts, torch.stack([s for _, s in parts]).tolist(), strict=True):
            sums[i] = value
    return tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape), total)
                 for (name, t), total in zip(items, sums, strict=True))


def digests(module: torch.nn.Module, *kinds: str) -> dict[str, str]:
    """{kind: digest} for kinds "fingerprint" and/or "identity", from the module's memo when its weights are in
    the state they were hashed in, else from one walk over the weights (both kinds in the same walk)."""
    want = tuple(k for k in ("fingerprint", "identity") if k in kinds)
    if not want or len(want) != len(set(kinds)):
        raise ValueError(f"kinds must be 'fingerprint' and/or 'identity', got {kinds!r}")
    state = weights_state(module)
    entry = _DIGESTS.get(module)
    known = dict(entry[1]) if entry is not None and entry[0] == state else {}
    missing = tuple(k for k in want if k not in known)
    if missing:
        known.update(zip(missing, _combined_digests(module, _WALKS[missing]), strict=True))
        _DIGESTS[module] = (state, known)
    return {k: known[k] for k in want}


def known_digests(module: torch.nn.Module) -> dict[str, str] | None:
    """The digests the memo holds for `module` if its weights are still in that state (None otherwise)."""
    entry = _DIGESTS.get(module)
    return dict(entry[1]) if entry is not None and entry[0] == weights_state(module) else None


def remember_digests(module: torch.nn.Module, known: dict[str, str]) -> None:
    """Record `known` as the digests of the module's current state: for weights restored bit for bit to a state
    whose digests were known (an edit's restore), whose version counters moved on."""
    _DIGESTS[module] = (weights_state(module), dict(known))


def module_fingerprint(module: torch.nn.Module) -> str:
    """A hash of every tensor of a module (names, shapes, dtypes, bytes): any weight change gives a new one.
    About a second per 1.5 GB of weights on a fresh state; memoised per state (module docstring)."""
    return digests(module, "fingerprint")["fingerprint"]


def module_identity(module: torch.nn.Module) -> str:
    """Which model a module is, whatever dtype it runs in: the fingerprint of its tensors cast to float16.

    A float32 model and its float16 copy share an identity (an edit made on one applies to the other); two
    models that differ in any weight by more than float16 rounding do not. Edits record it as `made_for`.
    (A bfloat16 copy rounds differently from a float32 one, so those two do not share an identity.)
    """
    return digests(module, "identity")["identity"]


def module_fingerprint_and_identity(module: torch.nn.Module) -> tuple[str, str]:
    """module_fingerprint and module_identity in one walk over the weights (what an attribution records)."""
    d = digests(module, "fingerprint", "identity")
    return d["fingerprint"], d["identity"]
