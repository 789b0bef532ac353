"""generation.batch_size=auto, generation.compile and generation.channels_last (cad.speed): accepted by the schema
and the number checks, passed to cad.generate as the values cad.speed takes; bad values are refused in
tests/experiments/test_bad_input.py."""

from __future__ import annotations

import pytest

from experiments.config import compose_config
from experiments.pipeline import _batch_size
from experiments.validate import check_numbers, check_schema


@pytest.mark.parametrize("overrides", [
    [],
    ["generation.batch_size=auto", "generation.compile=true", "generation.channels_last=false"],
    ["generation.batch_size=16", "generation.channels_last=true"],
])
def test_speed_settings_are_accepted(overrides):
    cfg = compose_config(overrides)
    check_schema(cfg)
    check_numbers(cfg)
    gen = cfg["generation"]
    assert gen["compile"] in (True, False) and gen["channels_last"] in ("auto", True, False)
    assert _batch_size(gen) in ("auto", 8, 16)


def test_defaults_are_the_plain_pipeline_on_a_cpu():
    gen = compose_config([])["generation"]
    assert gen["batch_size"] == 8 and gen["compile"] is False and gen["channels_last"] == "auto"
