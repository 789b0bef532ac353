"""A half-precision model on a CPU runs in float32 with one cad warning, and its rows record the dtype that ran."""

from __future__ import annotations

import logging

import torch

from experiments.models import load_model, run_dtype


def test_run_dtype_upcasts_half_on_cpu_only(caplog):
    with caplog.at_level(logging.WARNING, logger="cad.experiments"):
        assert run_dtype("float16", "cpu") == "float32"
        assert run_dtype("bfloat16", "cpu") == "float32"
    assert sum("model.dtype=float16 on the CPU" in r.getMessage() for r in caplog.records) == 1
    assert all("model.dtype=float32" in r.getMessage() for r in caplog.records)  # the message names the fix
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cad.experiments"):
        assert run_dtype("float16", "cuda") == "float16"
        assert run_dtype("float32", "cpu") == "float32"
    assert not caplog.records


def test_half_model_loads_in_float32_on_cpu(micro_kit, caplog):
    with caplog.at_level(logging.WARNING):
        loaded = load_model({"id": "toy", "name": "toy", "dtype": "float16"}, device="cpu",
                            toy_kit=str(micro_kit.path))
    assert loaded.dtype == "float32"
    assert loaded.backbone.denoiser.dtype == torch.float32
    cad_warnings = [r for r in caplog.records if "on the CPU: running in float32" in r.getMessage()]
    assert len(cad_warnings) == 1
