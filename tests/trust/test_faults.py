"""Fault injection: real `kill -9` of a process mid-generation and mid-sweep (attribution included), then a
rerun that must regenerate nothing finished and write exactly one row per result; two processes on one
image folder never render the same item. (Corrupted PNGs, truncated safetensors and swapped images are
detected in test_image_cache.py and test_scores_identity.py, in the fast tier.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cad.generate import CLAIMS_DIR, read_manifest, verify_images

REPO = Path(__file__).resolve().parents[2]
GEN = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from cad.tiny import build_tiny_pipeline
    from cad.generate import generate
    from evaluation.benchmarks import Item
    items = [Item(f"{k:04d}", f"a circle {k}", 1000 + k, "x", None) for k in range(int(sys.argv[2]))]
    generate(build_tiny_pipeline(0), items, sys.argv[1], steps=2, guidance=3.0, batch_size=2, progress=False)
""")


def _env(**extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wait_for(cond, proc, timeout=240):
    start = time.time()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) before the fault could be injected")
        if time.time() - start > timeout:
            proc.kill()
            pytest.fail("timed out waiting to inject the fault")
        time.sleep(0.05)


def _stamps(folder: Path, ids) -> dict:
    return {i: ((folder / f"{i}.png").stat().st_ino, (folder / f"{i}.png").stat().st_mtime_ns) for i in ids}


@pytest.mark.slow
def test_kill_9_mid_generation_then_resume(tmp_path):
    out, n = tmp_path / "imgs", 40
    proc = subprocess.Popen([sys.executable, "-c", GEN, str(out), str(n)], env=_env(), cwd=REPO)
    _wait_for(lambda: len(read_manifest(out)) >= 6 if out.is_dir() else False, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(read_manifest(out))
    assert 6 <= len(finished) < n
    before = _stamps(out, finished)
    subprocess.run([sys.executable, "-c", GEN, str(out), str(n)], env=_env(), cwd=REPO, check=True)
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [f"{k:04d}" for k in range(n)]  # each item recorded once
    assert {k: v for k, v in _stamps(out, finished).items()} == before  # nothing finished was redone
    assert not list(out.glob(".*.tmp")) and not list((out / CLAIMS_DIR).glob("*.claim"))
    from evaluation.benchmarks import Item

    # the GEN script's items: records are checked against each item's prompt and seed too
    assert verify_images(out, [Item(f"{k:04d}", f"a circle {k}", 1000 + k, "x", None) for k in range(n)]) == []


@pytest.mark.slow
def test_two_processes_on_one_folder_never_render_the_same_item(tmp_path):
    out, n = tmp_path / "imgs", 24
    procs = [subprocess.Popen([sys.executable, "-c", GEN, str(out), str(n)], env=_env(), cwd=REPO)
             for _ in range(2)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [f"{k:04d}" for k in range(n)]  # nobody rendered an item twice
    pids = {r["pid"] for r in records}
    assert pids <= {p.pid for p in procs}


SWEEP = ["-m", "method.ratio=0.05,0.07", "method.controls=[]", "model.steps=2", "attribution.num_samples=1",
         "generation.per_label=2", "generation.batch_size=4"]


def _sweep(outputs: Path, kit: Path, stdout=None):
    return subprocess.Popen([sys.executable, "-m", "experiments.run", *SWEEP], cwd=REPO, stdout=stdout,
                            stderr=subprocess.STDOUT, text=True,
                            env=_env(CAD_OUTPUTS=str(outputs), CAD_TOY_KIT=str(kit),
                                     CAD_DATA_DIR=os.environ.get("CAD_DATA_DIR", "")))


@pytest.mark.slow
def test_kill_9_mid_attribution_and_mid_sweep_then_rerun(tmp_path, micro_kit):
    from experiments.results import key_of, read_rows

    kit = Path(micro_kit.pipeline_path).parent
    outputs = tmp_path / "outputs"
    # 1. killed while the first point computes its attribution (right after the model has loaded)
    proc = _sweep(outputs, kit, stdout=subprocess.PIPE)
    seen = threading.Event()

    def watch():
        for line in proc.stdout:
            if "load model" in line:
                seen.set()

    threading.Thread(target=watch, daemon=True).start()
    _wait_for(seen.is_set, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for folder in (outputs / "attributions").rglob("*") if (outputs / "attributions").exists() else []:
        assert not folder.name.endswith(".tmp"), f"a half-written file {folder} was left"
    # 2. killed mid-sweep: after the first point's rows are written
    results = outputs / "results.jsonl"
    proc = _sweep(outputs, kit, stdout=subprocess.DEVNULL)
    _wait_for(lambda: results.is_file() and len(read_rows(results)) > 0, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first_rows = read_rows(results)
    images = sorted(p for p in (outputs / "images").rglob("*.png"))
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in images}
    # 3. the rerun of the whole sweep
    assert _sweep(outputs, kit, stdout=subprocess.DEVNULL).wait(timeout=900) == 0
    rows = read_rows(results)
    keys = [key_of(r) for r in rows]
    assert len(keys) == len(set(keys)), "a result row was written twice"
    assert {key_of(r) for r in first_rows} <= set(keys)
    assert {r["ratio"] for r in rows} == {0.05, 0.07}
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in images} == before  # no finished image redone
