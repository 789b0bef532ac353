"""One rank of tests/core/test_distributed.py (run by torchrun): attributes on the tiny pipeline in a gloo
process group and, on rank 0, saves each estimator's scores under argv[1]/<case>."""

from __future__ import annotations

import sys

import torch

from cad import attribute, distributed, tiny


def cases():
    """(name, attribute kwargs): the same calls the test makes in one process."""
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kw = dict(steps=2, seed=0, progress=False)
    return {
        "trajectory": dict(num_samples=3, **kw),
        "restart": dict(num_samples=3, estimator="restart", **kw),
        "amplify": dict(objective="amplify", images=images, num_samples=2, batch_size=2, **kw),
        "more_ranks_than_k": dict(num_samples=1, **kw),
    }


def main(out: str) -> None:
    torch.set_num_threads(1)
    w = distributed.init_from_env()
    assert w.size == 2, w
    pipe = tiny.build_tiny_pipeline(0)
    for name, kw in cases().items():
        scores = attribute(pipe, "a photo of a cat", **kw)
        if w.is_main:
            scores.save(f"{out}/{name}")
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
