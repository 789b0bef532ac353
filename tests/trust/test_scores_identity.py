"""Scores carry their identity inside the safetensors file; a hand-edited or broken sidecar, a truncated file
and another model's UNet are each reported with the path and the fix."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from cad.loading import unet_fingerprint
from cad.scores import AttributionScores, ScoresCorruptError, ScoresMismatchError, read_scores_meta


@pytest.fixture()
def saved(pipe, tmp_path):
    params = dict(pipe.unet.named_parameters())
    names = [n for n in params if n.endswith("ff.net.2.weight")][:2]
    g = torch.Generator().manual_seed(0)
    scores = AttributionScores({n: torch.randn(params[n].shape, generator=g) for n in names},
                               {"model": "tiny", "unet_fingerprint": unet_fingerprint(pipe.unet), "concept": "c"})
    return scores, scores.save(tmp_path / "s")


def test_identity_is_embedded_and_the_sidecar_is_only_a_copy(saved, pipe):
    scores, folder = saved
    (folder / "meta.json").unlink()
    loaded = AttributionScores.load(folder, unet=pipe)
    assert loaded.meta == json.loads(json.dumps(scores.meta)) and loaded.key == scores.key


def test_hand_edited_sidecar_is_an_error(saved, pipe):
    _, folder = saved
    meta = json.loads((folder / "meta.json").read_text())
    meta["model"] = "CompVis/stable-diffusion-v1-4"
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ScoresMismatchError, match=r"disagrees with the identity embedded.*\['model'\].*delete"):
        AttributionScores.load(folder, unet=pipe)


def test_truncated_sidecar_names_the_file(saved):
    _, folder = saved
    (folder / "meta.json").write_text('{"model": "ti')
    with pytest.raises(ScoresCorruptError) as err:
        read_scores_meta(folder)
    assert str(folder / "meta.json") in str(err.value) and "delete it" in str(err.value)


@pytest.mark.parametrize("cut", [5, 200, -16])
def test_truncated_safetensors_names_the_file_and_fix(saved, cut):
    _, folder = saved
    path = folder / "scores.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(ScoresCorruptError) as err:
        AttributionScores.load(folder)
    assert str(path) in str(err.value) and "rerun" in str(err.value)


def test_flipped_bytes_in_the_tensors_are_caught_by_the_content_hash(saved):
    _, folder = saved
    path = folder / "scores.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor: the header stays valid
    path.write_bytes(bytes(data))
    with pytest.raises(ScoresCorruptError, match="content sha256"):
        AttributionScores.load(folder)


def test_other_model_is_refused_unless_forced(saved, tiny_pipe_factory):
    _, folder = saved
    other = tiny_pipe_factory(1)  # same architecture, other weights
    with pytest.raises(ScoresMismatchError, match="allow_other_model"):
        AttributionScores.load(folder, unet=other)
    forced = AttributionScores.load(folder, unet=other, force=True)  # an intended transfer
    assert forced.meta["unet_fingerprint"] != unet_fingerprint(other.unet)


def test_scores_without_embedded_identity_are_refused_unless_forced(tmp_path, pipe):
    folder = tmp_path / "foreign"
    folder.mkdir()
    save_file({"w": torch.zeros(2)}, str(folder / "scores.safetensors"))
    (folder / "meta.json").write_text(json.dumps({"unet_fingerprint": unet_fingerprint(pipe.unet)}))
    with pytest.raises(ScoresMismatchError, match="no embedded cad identity"):
        AttributionScores.load(folder)
    assert AttributionScores.load(folder, force=True).names == ["w"]
