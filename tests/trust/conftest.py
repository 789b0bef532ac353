"""Fixtures of the trust tests: an outputs root, a module-wide tiny pipeline, items."""

from __future__ import annotations

import pytest


@pytest.fixture()
def outputs(tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    monkeypatch.setenv("CAD_OUTPUTS", str(out))
    return out


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(0)


@pytest.fixture()
def items():
    from evaluation.benchmarks import Item

    def make(n, prompt="a circle"):
        return [Item(f"{k:04d}", f"{prompt} {k}", 1000 + k, "x", None) for k in range(n)]

    return make
