"""Run every benchmarks/bench_*.py module's main() in name order: `python -m benchmarks.run [name ...]`.

CAD_BENCH_THREADS sets torch's thread count for all of them. Names given on the command line (e.g. `core`) restrict the run to modules whose name contains one of them.
A failing benchmark is reported and the others still run; the exit status says whether all succeeded.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from pathlib import Path


def discover() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(p.stem for p in here.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    wanted = sys.argv[1:] if argv is None else argv
    names = [n for n in discover() if not wanted or any(w in n for w in wanted)]
    if not names:
        print(f"no benchmark matches {wanted}; available: {discover()}")
        return 1
    threads = os.environ.get("CAD_BENCH_THREADS")
    if threads:  # one setting for every benchmark, so their timings are comparable (the Makefile sets 1)
        import torch

        torch.set_num_threads(int(threads))
    failed, timings = [], []
    for name in names:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(f"benchmarks.{name}").main()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        timings.append((name, time.perf_counter() - start))
    print("\n=== benchmarks run ===")
    for name, secs in timings:
        print(f"{name:<28} {secs:8.1f} s  {'FAILED' if name in failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
