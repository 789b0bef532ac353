"""Several processes, one run: rank, world size, all-reduce, barrier and "only rank 0 writes", over torch.distributed.

Launching belongs to the engines: `torchrun --nproc-per-node=N` sets RANK / WORLD_SIZE / MASTER_ADDR for each
process, and a SLURM job started by submitit with N tasks gets them from submitit's
`TorchDistributedEnvironment`. `init_from_env()` joins the process group those describe (nccl on CUDA, gloo on
a CPU; each process on its local GPU). In one process every function here is a no-op, so the code that calls
them reads as single-process code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> World:
    """This process's place: (rank, size, local_rank); (0, 1, 0) without a process group."""
    if not active():
        return World(0, 1, 0)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _submitit_tasks() -> int:
    """The number of tasks of a SLURM job submitit started (1 elsewhere)."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return 1
    return int(os.environ.get("SLURM_NTASKS", "1") or 1)


def init_from_env() -> World:
    """Join the process group the environment describes: torchrun's variables (WORLD_SIZE > 1), or a submitit
    SLURM job of several tasks (hydra.launcher.tasks_per_node=N), whose variables submitit exports. Nothing to
    do in one process. Each process takes the GPU of its local rank (all GPUs stay visible, so that
    model.device_map can still spread one model)."""
    if active():
        return world()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and _submitit_tasks() > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World(0, 1, 0)
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible): start at most "
                               "as many processes per node as GPUs (torchrun --nproc-per-node, tasks_per_node)")
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, init_method="env://")
    return world()


def local_device(device: str) -> str:
    """`device` as this process should use it: plain "cuda" becomes this rank's GPU in a process group."""
    if device == "cuda" and active():
        return f"cuda:{world().local_rank}"
    return device


def shard(n: int) -> tuple[int, int]:
    """This rank's contiguous slice [lo, hi) of n items (a rank may get none when n < world size)."""
    w = world()
    return w.rank * n // w.size, (w.rank + 1) * n // w.size


def _reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensors: Iterable[torch.Tensor]) -> None:
    """Sum each tensor over all ranks, in place (float32 gradient sums; every rank then holds the total)."""
    if not active():
        return
    for t in tensors:
        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            moved = t.to(_reduce_device())
            dist.all_reduce(moved)
            t.copy_(moved)
        else:
            dist.all_reduce(t)


def sum_floats(values: list[float]) -> list[float]:
    """Each float summed over all ranks (e.g. each timestep's objective term), in float64."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    return t.tolist()


def max_int(value: int) -> int:
    """The largest of the ranks' values (e.g. the denoiser calls of the busiest rank)."""
    if not active():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj):
    """Rank 0's `obj` on every rank (any picklable value)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (computes and writes a cached artifact); the other ranks run it after it is
    done, so they find the artifact and read it instead of writing it too."""
    if not world().is_main:
        barrier()
    try:
        yield
    finally:
        if world().is_main:
            barrier()


def shutdown() -> None:
    if active():
        dist.destroy_process_group()
