"""benchmarks/bench_gpu.py off a GPU: refused with the fix named (exit 2), skipped inside `make bench`, and its whole
code path run by --cpu-smoke on the toy UNet (measurements, the planner beside them, the coefficients it feeds,
the JSON and markdown it writes)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_without_cuda(capsys):
    assert bench_gpu.main([]) == 2
    err = capsys.readouterr().err
    assert "needs CUDA" in err and "make bench-gpu" in err and "--cpu-smoke" in err
    assert bench_gpu.main(None) == 0  # under benchmarks.run (make bench): skipped, not a failure


@pytest.mark.slow
def test_cpu_smoke_writes_the_table_and_feeds_the_planner(tmp_path):
    coef = tmp_path / "coefficients.json"
    assert bench_gpu.main(["--cpu-smoke", "--out", str(tmp_path), "--coefficients", str(coef)]) == 0
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    toy = report["archs"][0]
    assert toy["arch"] == "toy" and set(toy["sizes"]) == {"8", "4"}
    for mode in ("infer", "low", "fast"):
        assert toy["sizes"]["8"][mode]["seconds"] > 0
        assert "seconds" in toy["plan"][mode]  # the planner's estimate beside the measurement
    assert {"cad_erase", "esd", "uce", "conceptprune"} <= set(toy["edits"])
    gen = report["generation"]["toy"]
    for row in ("contiguous", "channels_last"):
        assert gen["rows"][row]["same_images"] and gen["rows"][row]["ratio"] > 0
        assert 0 < gen["rows"][row]["cad_in_pipeline_s"] <= gen["rows"][row]["cad_s"]
    md = (tmp_path / "bench_gpu.md").read_text()
    assert "| toy | 64 | float32 | low |" in md and "images/s cad.generate / plain diffusers" in md
    smoke = json.loads(coef.read_text())["devices"]["cpu-smoke"]
    assert smoke["archs"]["toy"]["sizes"] == [16, 64] and smoke["efficiency"]["toy"]["fast"] > 0


def test_coefficients_keep_what_a_partial_run_did_not_measure():
    """A run of only some parts (--parts api,methods) updates the hashing rate and the edit factors and keeps the
    activation fits and efficiencies the planner had."""
    previous = {"device": "H", "date": "d0", "archs": {"sd1": {"fast": [1, 2]}}, "efficiency": {"sd1": {"fast": 0.3}},
                "native": {"sd1": 512}, "edit_factors": {"esd": 2.0}}
    report = {"device": "NVIDIA H200", "date": "d1", "archs": [],
              "api": {"flux": {"dtype": "bfloat16", "weights_bytes": 10e9, "fingerprint_s": 10.0},
                      "sd1": {"dtype": "float16", "weights_bytes": 1e9, "fingerprint_s": 0.5}},
              "methods": {"sd1": {"esd": {"full_1000": 120.0, "plan_full_1000": 100.0},
                                  "conceptprune": {"error": "boom"}}},
              "generation": {"sdxl": {"rows": {"contiguous": {"plain_s": 3.0}}, "plan": {"seconds": 2.0}},
                             "sd1": {"error": "boom"}}}
    out = bench_gpu.coefficients_from(report, previous)
    assert out["archs"] == previous["archs"] and out["efficiency"] == previous["efficiency"] and out["date"] == "d0"
    assert out["fingerprint_bytes_per_s"] == 2e9  # the largest model: bfloat16 hashed twice, 20 GB in 10 s
    assert out["edit_factors"] == {"esd": 1.2}  # measured this time; nothing for the failed one
    assert out["generation_factors"] == {"sdxl": 1.5}
