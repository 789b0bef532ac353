"""FID: identical sets give ~0, agreement with plain torchmetrics, reference statistics cached per folder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.metrics import FID


@pytest.fixture()
def ref_dir(tmp_path, mk):
    folder = tmp_path / "reference"
    folder.mkdir()
    for i, im in enumerate(mk.render_shapes(24, size=32, seed=3)):
        im.save(folder / f"{i:03d}.png")
    return folder


def _u8(images):
    return torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in images])


def _load(folder):
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]


def test_identical_sets_give_zero(ref_dir, tmp_path, mk):
    m = FID(ref_dir, features=mk.TinyFeatures(), cache_dir=tmp_path / "cache", batch_size=10)
    images = _load(ref_dir)
    m.update(images[:10], None)
    m.update(images[10:], None)
    out = m.compute()
    assert abs(out["fid"]) < 1e-4
    assert m.higher_is_better == {"fid": False}


def test_matches_torchmetrics_and_grows_with_shift(ref_dir, tmp_path, mk):
    from torchmetrics.image.fid import FrechetInceptionDistance

    feats = mk.TinyFeatures(seed=1)
    fake = mk.render_shapes(16, size=32, seed=9)
    m = FID(ref_dir, features=feats, cache_dir=tmp_path / "cache")
    m.update(fake, None)
    ours = m.compute()["fid"]

    plain = FrechetInceptionDistance(feature=feats, normalize=False)
    plain.update(_u8(_load(ref_dir)), real=True)
    plain.update(_u8(fake), real=False)
    assert ours == pytest.approx(float(plain.compute()), rel=1e-4, abs=1e-6)
    assert ours > 1e-3

    # the reference darkened: the further the shift, the larger the distance
    fids = []
    for k in (1, 2, 4):
        m.reset()
        m.update([Image.eval(im, lambda v, k=k: v // k) for im in _load(ref_dir)], None)
        fids.append(m.compute()["fid"])
    assert abs(fids[0]) < 1e-4 and fids[0] < fids[1] < fids[2]


def test_reference_stats_are_cached_and_invalidated(ref_dir, tmp_path, mk):
    cache = tmp_path / "cache"
    first = FID(ref_dir, features=mk.TinyFeatures(), cache_dir=cache)
    stats = first.reference_stats()
    assert stats["cached"] is False and stats["n"] == 24
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1 and not list(cache.glob(".*.tmp"))  # written atomically, no leftovers

    again = FID(ref_dir, features=mk.TinyFeatures(), cache_dir=cache).reference_stats()
    assert again["cached"] is True and torch.equal(again["mu"], stats["mu"]) and torch.equal(again["sigma"], stats["sigma"])

    # other weights -> other statistics; a changed folder -> recomputed
    other = FID(ref_dir, features=mk.TinyFeatures(seed=5), cache_dir=cache).reference_stats()
    assert other["cached"] is False
    mk.solid((1, 2, 3)).save(ref_dir / "zzz.png")
    grown = FID(ref_dir, features=mk.TinyFeatures(), cache_dir=cache).reference_stats()
    assert grown["cached"] is False and grown["n"] == 25 and len(list(cache.glob("*.safetensors"))) == 3


def test_image_size_resizes_both_sides_and_mixed_native_sizes(tmp_path, mk):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, im in enumerate(mk.render_shapes(6, size=40, seed=4) + mk.render_shapes(6, size=24, seed=5)):
        im.save(folder / f"{i:02d}.png")
    native = FID(folder, features=mk.TinyFeatures(), cache_dir=tmp_path / "c")
    assert native.reference_stats()["n"] == 12  # sizes batched separately
    sized = FID(folder, features=mk.TinyFeatures(), cache_dir=tmp_path / "c", image_size=16)
    sized.update(mk.render_shapes(4, size=64, seed=6), None)
    assert math.isfinite(sized.compute()["fid"])
    assert sized.protocol()["image_size"] == 16 and sized.protocol()["reference_n"] == 12


def test_bad_reference_folder_and_too_few_images(tmp_path, mk, ref_dir):
    with pytest.raises(FileNotFoundError, match="reference_dir"):
        FID(tmp_path / "nope", features=mk.TinyFeatures()).reference_stats()
    m = FID(ref_dir, features=mk.TinyFeatures(), cache_dir=tmp_path / "c")
    m.update([mk.solid((0, 0, 0))], None)
    with pytest.warns(UserWarning, match="at least 2"):
        assert math.isnan(m.compute()["fid"])
