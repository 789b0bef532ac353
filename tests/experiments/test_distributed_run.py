"""`torchrun --nproc-per-node=2 -m experiments.run` on the micro toy world (two gloo ranks on the CPU) is one run:
the scores of one process with the same K, each benchmark item rendered once into the one image cache, one run
folder, and one set of result rows (rank 0's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from cad.generate import read_manifest
from cad.scores import AttributionScores
from experiments.results import read_rows

REPO = Path(__file__).resolve().parents[2]
# Two ranks' batches of 1 and 2 trajectories against one batch of 3: only kernel and summation order differ, but
# on the trained toy model J_erase's gap is a small difference of two predictions, so they show more than on the
# random tiny pipeline (tests/core/test_distributed.py, 1e-5): |2 ranks - 1 process| <= 1e-4 * max|alpha| per
# weight (seen: 2e-5 to 5e-5 on this CPU; a wrong weighting of a rank's share would be O(1)).
RTOL = 1e-4


def _run(out: Path, kit: Path, micro: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAD_OUTPUTS": str(out), "CAD_TOY_KIT": str(kit),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
              if nproc > 1 else [sys.executable])
    res = subprocess.run([*launch, "-m", "experiments.run", "device=cpu", *micro], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _scores(out: Path) -> AttributionScores:
    (folder,) = {p.parent for p in out.glob("attributions/**/scores.safetensors")}
    return AttributionScores.load(folder)


def test_torchrun_two_ranks_is_one_run(micro, micro_kit, tmp_path):
    micro = [*micro, "attribution.num_samples=3"]  # K split 1 + 2 over the ranks
    one, two = tmp_path / "one", tmp_path / "two"
    _run(one, micro_kit.path, micro, nproc=1)
    res = _run(two, micro_kit.path, micro, nproc=2)
    assert res.stdout.count("run folder:") == 1  # rank 0 reports

    runs = [p for p in (two / "runs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # rank 0's folder is every rank's
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert not list(runs[0].glob("metrics.*.json"))  # no second claim on the folder

    a, b = _scores(one), _scores(two)
    assert (a.meta["world_size"], b.meta["world_size"]) == (1, 2) and a.key == b.key
    for n in a.scores:
        scale = float(a.scores[n].abs().max())
        torch.testing.assert_close(b.scores[n], a.scores[n], rtol=0, atol=RTOL * scale + 1e-12, msg=n)

    rows_one, rows_two = read_rows(one / "results.jsonl"), read_rows(two / "results.jsonl")
    assert len(rows_two) == len(rows_one) > 0  # one set of rows, not one per rank
    assert {r["run_id"] for r in rows_two} == {metrics["run"]["run_id"]}
    key = lambda r: (r["variant"], r["metric"])  # noqa: E731
    assert sorted(map(key, rows_two)) == sorted(map(key, rows_one))

    folders = [Path(f) for f in metrics["images"][next(iter(metrics["images"]))].values()]
    for folder in folders:
        manifests = list(folder.glob("manifest*.jsonl"))
        assert len(manifests) == 2  # one per rank, side by side in the one folder
        ids = [json.loads(line)["id"] for m in manifests for line in m.read_text().splitlines() if line.strip()]
        assert len(ids) == len(set(ids)) == len(read_manifest(folder))  # each item rendered once
        assert len(list(folder.glob("*.png"))) == len(ids)
