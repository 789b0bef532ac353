"""The planner against measured CPU peak memory: one attribution gradient pass of the SD 1.x, SDXL and SD 3.5 Medium
denoisers at their real architectures (random weights), at latent sizes other than the calibration ones (16 and 32,
benchmarks/bench_plan.py), in both memory modes. Each measurement is a subprocess sampling RSS every 1 ms
(bench_plan.measure); the plan must be within +-25% of the peak above the loaded model."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

TOLERANCE = 0.25


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "sd35m"])
def test_plan_within_25_percent_of_measured_peak(arch):
    from benchmarks.bench_plan import run_child
    from cad import plan

    for latent in (24, 40):
        m = run_child(arch, latent, modes=("low", "fast"))
        db = plan.DTYPE_BYTES[m["dtype"]]
        for mode in ("low", "fast"):
            sums, half = plan.fixed_bytes(mode, db, m["space_numel"], m["space_max"])
            est = sums + half + plan.activation_bytes(arch, mode, 1, m["seq"], db, device="cpu")
            measured = m[mode]["delta"]
            assert abs(est - measured) <= TOLERANCE * measured, (
                f"{arch} @{latent}x{latent} {mode}: plan {est / 1e9:.3f} GB, measured {measured / 1e9:.3f} GB")
