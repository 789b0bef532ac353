"""The image cache is verified: every record carries the PNG's sha256. Generation and resume regenerate an
unverified file with a warning naming it; scoring refuses it with an error naming it and the fix. Claims keep
two processes from rendering one item."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time

import pytest

from cad.generate import CLAIMS_DIR, ImageCacheError, generate, read_manifest
from cad.io import sha256_file
from evaluation.metrics.base import Metric
from evaluation.score import score

STEPS = 2


class Count(Metric):
    name = "count"

    def reset(self):
        super().reset()
        self.n = 0

    def update(self, images, items):
        self.n += len(items)

    def compute(self):
        return {"n": self.n}


def _gen(pipe, items, out, **kw):
    return generate(pipe, items, out, steps=STEPS, guidance=3.0, batch_size=4, progress=False, **kw)


def _stamp(paths):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


@pytest.fixture()
def folder(pipe, items, tmp_path):
    its = items(4)
    out = tmp_path / "imgs"
    _gen(pipe, its, out)
    return its, out


def test_every_record_carries_the_sha256_of_its_png(folder):
    its, out = folder
    records = read_manifest(out)
    assert all(records[i.id]["sha256"] == sha256_file(out / f"{i.id}.png") for i in its)
    assert score(out, its, [Count()], prefix="b") == {"b/n": 4.0}


def test_swapped_image_is_refused_by_scoring_and_regenerated_by_resume(folder, pipe, caplog):
    its, out = folder
    shutil.copy(out / "0001.png", out / "0002.png")  # a valid PNG of another item, copied over
    with pytest.raises(ImageCacheError) as err:
        score(out, its, [Count()], prefix="b")
    assert "0002.png" in str(err.value) and "rerun the generation" in str(err.value)
    before = _stamp([out / f"{i.id}.png" for i in its])
    with caplog.at_level(logging.WARNING, logger="cad.generate"):
        _gen(pipe, its, out)
    assert "0002.png" in caplog.text and "sha256" in caplog.text
    after = _stamp([out / f"{i.id}.png" for i in its])
    assert {k for k in before if before[k] != after[k]} == {"0002.png"}  # only the swapped file is redone
    assert score(out, its, [Count()], prefix="b") == {"b/n": 4.0}


def test_cached_image_of_another_prompt_or_seed_is_not_this_items(folder, pipe, caplog):
    """Items changed under the same ids (a new template, an edited file with the same name and version): the
    records' prompt and seed are checked against the items, so old images are neither scored nor reused."""
    from dataclasses import replace

    its, out = folder
    changed = [replace(its[0], prompt="a square 0"), replace(its[1], seed=7), *its[2:]]
    with pytest.raises(ImageCacheError) as err:
        score(out, changed, [Count()], prefix="b")
    assert "0000.png" in str(err.value) and "prompt" in str(err.value)
    before = _stamp([out / f"{i.id}.png" for i in its])
    with caplog.at_level(logging.WARNING, logger="cad.generate"):
        _gen(pipe, changed, out)
    assert "0000.png" in caplog.text and "'a circle 0' is not the item's 'a square 0'" in caplog.text
    assert "0001.png" in caplog.text and "seed 1001" in caplog.text
    after = _stamp([out / f"{i.id}.png" for i in its])
    assert {k for k in before if before[k] != after[k]} == {"0000.png", "0001.png"}
    records = read_manifest(out)
    assert records["0000"]["prompt"] == "a square 0" and records["0001"]["seed"] == 7
    assert score(out, changed, [Count()], prefix="b") == {"b/n": 4.0}


@pytest.mark.parametrize("damage", ["garbage", "truncated", "unrecorded"])
def test_corrupt_or_unrecorded_png_is_detected(folder, pipe, damage, caplog):
    its, out = folder
    path = out / "0003.png"
    if damage == "garbage":
        path.write_bytes(b"\x89PNG not really")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    else:  # a run killed between writing the PNG and recording it, or a file copied in
        lines = [ln for ln in (out / "manifest.jsonl").read_text().splitlines() if '"0003"' not in ln]
        (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ImageCacheError, match="0003.png"):
        score(out, its, [Count()], prefix="b")
    with caplog.at_level(logging.WARNING, logger="cad.generate"):
        _gen(pipe, its, out)
    assert "0003.png" in caplog.text
    assert score(out, its, [Count()], prefix="b") == {"b/n": 4.0}


def test_undecodable_png_in_a_plain_folder_names_the_file(tmp_path, items):
    its = items(1)
    (tmp_path / "0000.png").write_bytes(b"not an image")
    with pytest.raises(ImageCacheError, match=r"0000.png is not a decodable image.*delete it"):
        score(tmp_path, its, [Count()], prefix="b")


def test_hand_edited_image_meta_is_refused(folder):
    its, out = folder
    meta = json.loads((out / "meta.json").read_text())
    meta["identity"]["guidance"] = 7.5  # claims other settings than the images were made with
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ImageCacheError, match="meta.json was edited"):
        score(out, its, [Count()], prefix="b")


def test_claim_of_a_dead_process_is_taken_over(pipe, items, tmp_path):
    its = items(2)
    out = tmp_path / "imgs"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / CLAIMS_DIR).mkdir(parents=True)
    import socket

    (out / CLAIMS_DIR / "0000.claim").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                              "token": "x", "time": 0}))
    started = time.perf_counter()
    _gen(pipe, its, out)
    assert time.perf_counter() - started < 30 and sorted(read_manifest(out)) == ["0000", "0001"]
    assert not list((out / CLAIMS_DIR).glob("*.claim"))  # every claim released


def test_item_claimed_by_a_live_process_is_not_rendered_until_released(pipe, items, tmp_path):
    import os
    import socket

    its = items(2)
    out = tmp_path / "imgs"
    (out / CLAIMS_DIR).mkdir(parents=True)
    claim = out / CLAIMS_DIR / "0001.claim"
    # another live process (our parent) holds 0001; it gives up after a moment without rendering it
    claim.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "token": "other", "time": 0}))
    released = {}

    def release_later():
        time.sleep(1.5)
        released["at"] = time.time()
        claim.unlink()

    t = threading.Thread(target=release_later)
    t.start()
    _gen(pipe, its, out)
    t.join()
    assert sorted(read_manifest(out)) == ["0000", "0001"]
    assert (out / "0001.png").stat().st_mtime >= released["at"]  # rendered only after the claim was released
    assert (out / "0000.png").stat().st_mtime < released["at"]  # the free item did not wait
