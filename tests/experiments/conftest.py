"""Compose configs the way `python -m experiments.run` does (Hydra compose API), as plain dicts."""

from __future__ import annotations

import pytest

from experiments.config import compose_config


@pytest.fixture()
def compose():
    return compose_config
