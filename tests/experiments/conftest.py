"""Compose configs the way `python -m experiments.run` does (Hydra compose API), as plain dicts."""

from __future__ import annotations

import pytest

from experiments.config import compose_config


@pytest.fixture()
def compose():
    return compose_config


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model fails the test: each bad-input error must come before it."""
    import experiments.erase_eval as erase_eval
    import experiments.models as models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(erase_eval, "load_model", refuse, raising=False)
    monkeypatch.setattr(models, "load_model", refuse)
