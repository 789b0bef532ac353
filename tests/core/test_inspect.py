"""`python -m cad.inspect`: a saved scores folder read without code, compared, plotted, and a tampered one refused."""

from __future__ import annotations

import json
import shutil

import pytest

from cad import attribute
from cad.inspect import main

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def folders(small_pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    a = attribute(small_pipe, PROMPT, steps=3, num_samples=1, seed=0, progress=False).save(root / "cat")
    b = attribute(small_pipe, "a photo of a dog", steps=3, num_samples=1, seed=0, progress=False).save(root / "dog")
    return a, b


def test_inspect_prints_record_counts_top_and_mass(folders, capsys):
    assert main([str(folders[0]), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "identity: ok" in out
    assert f"concept: {PROMPT}" in out and "objective: erase" in out and "steps: 3" in out
    assert "tensors: " in out and "weights: " in out
    top = out.split("top 3 positive components:")[1].split("top 3 negative")[0].strip().splitlines()
    assert len(top) == 3 and all(".ff.net." in line and "[" in line for line in top)
    # the block table in forward order: the mid block between the down and up blocks
    table = out.split("mass per block")[1]
    assert table.index("down.") < table.index("mid") < table.index("up.")


def test_inspect_compare_and_plot(folders, tmp_path, capsys):
    png = tmp_path / "where.png"
    assert main([str(folders[0]), "--compare", str(folders[0]), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "Spearman rho of alpha: 1.0000" in out and "Jaccard positive 1.0000" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main([str(folders[0]), "--compare", str(folders[1])]) == 0
    assert "Spearman rho of alpha: 1.0000" not in capsys.readouterr().out


def test_inspect_refuses_a_tampered_folder(folders, tmp_path, capsys):
    edited = tmp_path / "edited"
    shutil.copytree(folders[0], edited)
    meta = json.loads((edited / "meta.json").read_text())
    meta["concept"] = "a photo of a dog"   # a hand-edited sidecar
    (edited / "meta.json").write_text(json.dumps(meta))
    assert main([str(edited)]) == 2
    out = capsys.readouterr().out
    assert "identity: FAILED" in out and "disagrees with the identity embedded" in out

    flipped = tmp_path / "flipped"
    shutil.copytree(folders[0], flipped)
    blob = bytearray((flipped / "scores.safetensors").read_bytes())
    blob[-5] ^= 0xFF                          # one byte of a tensor
    (flipped / "scores.safetensors").write_bytes(bytes(blob))
    assert main([str(flipped)]) == 2
    assert "content sha256" in capsys.readouterr().out
