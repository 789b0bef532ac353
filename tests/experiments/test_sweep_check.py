"""A sweep is checked whole before its first job: one bad job refuses it, naming the job and the reason, and
nothing is written."""

from __future__ import annotations

import os
import subprocess
import sys

from experiments.sweep_check import check_jobs, sweep_jobs, swept_keys


def test_jobs_expand_like_the_basic_sweeper():
    jobs = sweep_jobs(["concept=diamond,striped", "method.ratio=0.01,0.05", "seed=3"])
    assert jobs == [["concept=diamond", "method.ratio=0.01", "seed=3"],
                    ["concept=diamond", "method.ratio=0.05", "seed=3"],
                    ["concept=striped", "method.ratio=0.01", "seed=3"],
                    ["concept=striped", "method.ratio=0.05", "seed=3"]]
    assert swept_keys(["concept=diamond,striped", "method.retain=[green,blue]", "seed=3"]) == {"concept"}


def test_check_jobs_names_each_failing_job(data_dir):
    jobs = sweep_jobs(["concept=diamond,striped", "method.ratio=0.01,1.5", f"paths.data={data_dir}"])
    failures = {num: reason for num, _, reason in check_jobs(jobs)}
    assert sorted(failures) == [1, 2, 3]  # diamond@0.01 is the one good job
    assert "[0, 1]" in failures[1]  # ratio out of range
    assert "not a class of the target benchmark" in failures[2] and "benchmark=toy_styles" in failures[2]


def test_a_sweep_with_a_bad_job_is_refused_before_any_job_runs(tmp_path, data_dir):
    out = tmp_path / "outputs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "CAD_DATA_DIR": str(data_dir)}
    proc = subprocess.run([sys.executable, "-m", "experiments.run", "-m", "concept=diamond,striped",
                           "method.ratio=0.01,0.05", f"paths.outputs={out}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "2 of its 4 jobs would fail" in proc.stderr
    assert "job 2 (concept=striped method.ratio=0.01)" in proc.stderr
    assert "job 3 (concept=striped method.ratio=0.05)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Launching" not in proc.stdout + proc.stderr  # no job started
    assert not out.exists()  # no run folder, no image, no row

