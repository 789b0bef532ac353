"""Two processes in a gloo group (torchrun, world size 2, CPU) give the scores of one process with the same K:
each rank runs its slice of the trajectories (amplify: images) with the x_T and noise one process draws for them,
and the float32 gradient sums are all-reduced. In one process cad.distributed is a no-op."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cad import attribute, distributed, tiny
from cad.scores import AttributionScores

HERE = Path(__file__).resolve().parent
# Two batches of K/2 instead of one of K, and a sum over ranks: only float32 summation order differs.
# |2 ranks - 1 process| <= 1e-5 * max|alpha| per weight (seen: ~1e-7 relative on this CPU).
RTOL = 1e-5


def torchrun(script: Path, *args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(script), *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return res


def test_one_process_is_a_world_of_one():
    w = distributed.world()
    assert (w.rank, w.size, w.is_main) == (0, 1, True)
    assert distributed.shard(5) == (0, 5)
    t = torch.ones(3)
    distributed.all_reduce_sum([t])
    distributed.barrier()
    assert t.tolist() == [1.0, 1.0, 1.0] and distributed.sum_floats([1.5]) == [1.5]
    assert distributed.broadcast({"a": 1}) == {"a": 1}


@pytest.mark.same_kernels("the torchrun workers run outside pytest on the machine's default kernels; the "
                          "contract is a split of the same computation, compared on one machine")
def test_two_gloo_ranks_give_one_process_scores(tmp_path):
    sys.path.insert(0, str(HERE))
    try:
        from distributed_worker import cases
    finally:
        sys.path.remove(str(HERE))
    torchrun(HERE / "distributed_worker.py", str(tmp_path))
    pipe = tiny.build_tiny_pipeline(0)
    # the workers run one intra-op thread (distributed_worker.py): so does the one-process reference, whatever the
    # session's count (make test-portable runs two), so only the split over ranks differs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ones = {name: attribute(pipe, "a photo of a cat", **kw) for name, kw in cases().items()}
    finally:
        torch.set_num_threads(threads)
    for name, one in ones.items():
        two = AttributionScores.load(tmp_path / name)
        assert two.meta["world_size"] == 2 and one.meta["world_size"] == 1, name
        assert two.key == one.key, name  # the world size is a record, not a setting
        assert abs(two.meta["objective_value"] - one.meta["objective_value"]) <= 1e-5 * abs(one.meta["objective_value"])
        if name != "amplify":  # a rank's batched calls: per step, as many as one process makes
            assert two.meta["unet_calls"] == one.meta["unet_calls"], name
        for n in one.scores:
            scale = float(one.scores[n].abs().max())
            torch.testing.assert_close(two.scores[n], one.scores[n], rtol=0, atol=RTOL * scale + 1e-12,
                                       msg=f"{name}: {n}")


SUBMITIT_CHILD = """
import torch
from cad import distributed
w = distributed.init_from_env()
t = torch.tensor([float(w.rank + 1)])
distributed.all_reduce_sum([t])
print(w.rank, w.size, w.local_rank, float(t))
distributed.shutdown()
"""


def test_a_submitit_slurm_job_of_two_tasks_joins_one_group():
    """hydra.launcher.tasks_per_node=2: submitit starts both tasks with SLURM's variables only; init_from_env
    exports submitit's TorchDistributedEnvironment and joins the group (gloo here)."""
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    base.update(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID=str(20000 + os.getpid() % 20000), SLURM_NTASKS="2",
                SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost", OMP_NUM_THREADS="1",
                CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(HERE.parents[1]))
    procs = [subprocess.Popen([sys.executable, "-c", SUBMITIT_CHILD], text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)})
             for r in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(out.split())
    assert sorted(outs) == [["0", "2", "0", "3.0"], ["1", "2", "1", "3.0"]]
