"""Runs in parallel on one outputs root: two sweeps started together never share a job folder, a run id or a
metrics.json, and two processes that need the same attribution, concept images or baseline edit compute it
once (cad.claims): one computes, the others wait and reuse it; a dead or silent owner's claim is taken over."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cad.claims import claim_state, compute_once, read_claim, write_claim

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _claim_of(path: Path, pid: int, host: str = socket.gethostname(), age: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host, "token": "someone-else", "time": 0}))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))


# --- the claim mechanism ------------------------------------------------------------------------------------

def test_claim_of_a_dead_pid_is_taken_over_at_once(tmp_path):
    claim, calls = tmp_path / "art" / ".claim", []
    _claim_of(claim, _dead_pid())
    started = time.perf_counter()
    with compute_once(claim, lambda: False, ttl=3600) as mine:
        assert mine and read_claim(claim)["pid"] == os.getpid()
        calls.append(1)
    assert calls == [1] and time.perf_counter() - started < 5
    assert not claim.exists()  # released


def test_claim_of_another_host_is_taken_over_only_when_its_heartbeat_is_stale(tmp_path):
    claim = tmp_path / ".claim"
    _claim_of(claim, 1, host="elsewhere", age=120)  # pid 1 is alive here: only the heartbeat's age can tell
    assert claim_state(claim, "me", ttl=60) is None
    _claim_of(claim, 1, host="elsewhere", age=5)
    assert claim_state(claim, "me", ttl=60) == "other"


def test_a_live_owner_is_waited_for_and_its_result_reused(tmp_path):
    claim, done = tmp_path / ".claim", tmp_path / "result"
    _claim_of(claim, os.getppid() if os.getppid() > 1 else os.getpid())  # a live process on this host

    def owner_finishes():
        time.sleep(1.0)
        done.write_text("x")
        claim.unlink()

    t = threading.Thread(target=owner_finishes)
    t.start()
    started = time.perf_counter()
    with compute_once(claim, done.is_file, poll=0.05) as mine:
        assert not mine  # the owner's result, reused
    t.join()
    assert time.perf_counter() - started >= 0.9


def test_a_long_computation_keeps_its_claim_fresh_and_an_error_hands_it_back(tmp_path):
    claim = tmp_path / ".claim"
    with pytest.raises(RuntimeError), compute_once(claim, lambda: False, ttl=0.4) as mine:
        assert mine
        os.utime(claim, (0, 0))  # as if the claim were decades old ...
        deadline = time.time() + 30
        while claim.stat().st_mtime < 1 and time.time() < deadline:
            time.sleep(0.05)
        assert claim.stat().st_mtime > time.time() - 30  # ... the heartbeat (every ttl / 4) refreshed it
        raise RuntimeError("the computation failed")
    assert not claim.exists()  # a waiter takes the work over at once
    write_claim(claim, "t")
    assert claim_state(claim, "t") == "mine"


# --- run folders and run ids --------------------------------------------------------------------------------

def test_sweep_folders_have_microseconds_like_run_folders():
    from experiments.config import compose_config

    hydra = compose_config([], keep_hydra=True).hydra
    stamp = r"/\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}-\d{6}$"
    assert re.search(stamp, str(hydra.sweep.dir)) and re.search(stamp, str(hydra.run.dir))


def test_two_runs_in_one_folder_get_two_ids_and_keep_both_metrics(tmp_path):
    from experiments.pipeline import claim_run_folder, write_metrics

    outputs = tmp_path / "out"
    job = outputs / "multirun" / "2026-01-01" / "10-00-00" / "0"
    first, second = claim_run_folder(job, outputs), claim_run_folder(job, outputs)
    assert first.run_id == "multirun/2026-01-01/10-00-00/0" and first.metrics == job / "metrics.json"
    assert second.run_id.startswith(first.run_id + "#") and second.run_id != first.run_id
    write_metrics(first, {"run": {"run_id": first.run_id}})
    write_metrics(second, {"run": {"run_id": second.run_id}})
    assert json.loads((job / "metrics.json").read_text())["run"]["run_id"] == first.run_id
    assert json.loads(second.metrics.read_text())["run"]["run_id"] == second.run_id
    # a folder holding a metrics.json from before run folders were claimed is not overwritten either
    old = outputs / "runs" / "old"
    old.mkdir(parents=True)
    (old / "metrics.json").write_text("{}")
    assert claim_run_folder(old, outputs).metrics != old / "metrics.json"


def test_a_second_run_into_a_used_folder_writes_its_own_rows_and_metrics(micro, toy, tmp_path):
    from experiments.config import compose_config
    from experiments.results import read_rows
    from experiments.run import run_from_config

    cfg = compose_config(micro + ["method=none"])
    a = run_from_config(cfg, tmp_path / "run")
    b = run_from_config(cfg, tmp_path / "run")
    assert a["run"]["run_id"] != b["run"]["run_id"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["run"]["run_id"] == a["run"]["run_id"]
    (other,) = (tmp_path / "run").glob("metrics.*.json")
    assert json.loads(other.read_text())["run"]["run_id"] == b["run"]["run_id"]
    assert {r["run_id"] for r in read_rows(toy / "results.jsonl")} <= {a["run"]["run_id"], b["run"]["run_id"]}


# --- two processes, one attribution and one baseline edit ---------------------------------------------------

CHILD = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    outputs, counter, ready, micro = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
    import cad.attribution
    from cad.methods.uce import UCE
    real_attribute, real_build = cad.attribution.attribute, UCE.build

    def count(what):
        with open(counter, "a") as f:
            f.write(f"{what} {os.getpid()}\\n")
        time.sleep(1.0)  # long enough that the other process finds the claim held

    def attribute(*a, **k):
        count("attribution")
        return real_attribute(*a, **k)

    def build(self, ctx):
        count("uce")
        return real_build(self, ctx)

    cad.attribution.attribute, UCE.build = attribute, build
    from cad.backbones import load
    from experiments.config import compose_config
    from experiments.models import LoadedModel
    from experiments.pipeline import attribute_cached, method_edits
    from experiments.validate import plan_run

    cfg = compose_config(micro + ["method=uce"])
    plan = plan_run(cfg)
    bb = load(str(Path(cfg["paths"]["toy_kit"]) / "pipeline"), device="cpu")  # the kit's networks are not needed
    fp = bb.denoiser_fingerprint()
    loaded = LoadedModel(bb, None, "toy", "toy", fp, None, pipeline_fingerprint=bb.fingerprint(fp))
    ready.joinpath(str(os.getpid())).touch()
    while len(list(ready.iterdir())) < 2:  # both processes ask at the same moment
        time.sleep(0.01)
    _, folder, reused = attribute_cached(loaded, plan.concept, cfg["attribution"], cfg["model"], outputs)
    edit, _, info = method_edits(plan.method, loaded, plan.concept, [], cfg, outputs)
    print(json.dumps({"scores": str(folder), "scores_reused": reused, "edit": edit.fingerprint,
                      "edit_reused": bool(info.get("edit_reused"))}))
""")


def test_two_processes_attribute_and_edit_once(micro, toy, micro_kit, tmp_path):
    counter, ready = tmp_path / "computed.txt", tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAD_OUTPUTS": str(toy), "CAD_TOY_KIT": str(micro_kit.path),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(toy), str(counter), str(ready), *micro], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    computed = counter.read_text().split()
    assert computed[0::2].count("attribution") == 1 and computed[0::2].count("uce") == 1  # each computed once
    assert outs[0]["scores"] == outs[1]["scores"] and outs[0]["edit"] == outs[1]["edit"]
    assert sorted(o["scores_reused"] for o in outs) == [False, True]
    assert sorted(o["edit_reused"] for o in outs) == [False, True]
    assert not list(toy.rglob(".claim"))  # every claim released


def test_an_attribution_claimed_by_a_dead_process_is_taken_over(micro, toy, tmp_path, monkeypatch):
    import cad.attribution
    from experiments.config import compose_config
    from experiments.models import load_model
    from experiments.pipeline import CLAIM_FILE, attribute_cached
    from experiments.validate import plan_run

    cfg = compose_config(micro)
    plan = plan_run(cfg)
    loaded = load_model(cfg["model"], device="cpu", toy_kit=cfg["paths"]["toy_kit"])
    _, folder, _ = attribute_cached(loaded, plan.concept, cfg["attribution"], cfg["model"], toy)
    for f in ("scores.safetensors", "meta.json"):
        (folder / f).unlink()
    _claim_of(folder / CLAIM_FILE, _dead_pid())  # killed mid-attribution, its claim left behind
    calls = []
    real = cad.attribution.attribute
    monkeypatch.setattr(cad.attribution, "attribute", lambda *a, **k: calls.append(1) or real(*a, **k))
    started = time.perf_counter()
    _, again, reused = attribute_cached(loaded, plan.concept, cfg["attribution"], cfg["model"], toy)
    assert again == folder and not reused and calls == [1]
    assert time.perf_counter() - started < 120  # not the claim's 30-minute timeout
    assert (folder / "scores.safetensors").is_file() and not (folder / CLAIM_FILE).exists()


@pytest.mark.slow
def test_two_sweeps_started_together_keep_their_own_folders_ids_and_metrics(micro, micro_kit, tmp_path):
    from experiments.results import read_rows

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAD_OUTPUTS": str(out), "CAD_TOY_KIT": str(micro_kit.path)}
    cmd = [sys.executable, "-m", "experiments.run", "-m", "method=none", *micro]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=900) == 0, p.stderr.read()[-3000:]
    jobs = sorted((out / "multirun").glob("*/*/0"))
    assert len(jobs) == 2  # one folder per sweep, even when both started in the same second
    ids = {json.loads((j / "metrics.json").read_text())["run"]["run_id"] for j in jobs}
    # the second run's rows equal the first's (same config): the writer keeps one per row_key, under its own id
    assert len(ids) == 2 and {r["run_id"] for r in read_rows(out / "results.jsonl")} <= ids
