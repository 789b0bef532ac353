"""The runner drives every method through its plugin: a baseline's edit is cached like an attribution, and
experiment=amplify_erased erases with a built-in method, then recalls with CAD-Amplify on the erased model."""

from __future__ import annotations

import pytest

from experiments.config import compose_config
from experiments.run import run_from_config
from experiments.validate import ConfigError


def test_uce_runs_as_a_plugin_and_its_edit_is_cached(micro, toy, tmp_path):
    first = run_from_config(compose_config(micro + ["method=uce"]), tmp_path / "a")
    assert first["run"]["method"] == "uce" and first["run"]["ratio"] is None
    assert set(first["metrics"]) == {"original", "edited"}  # no random control: UCE is not a mask
    assert first["run"]["method_settings"]["lamb"] == 0.5
    second = run_from_config(compose_config(micro + ["method=uce"]), tmp_path / "b")
    assert second["method_info"].get("edit_reused")
    assert second["edits"]["edited"]["fingerprint"] == first["edits"]["edited"]["fingerprint"]


def test_amplify_erased_erases_with_a_builtin_method(micro, toy, tmp_path):
    cfg = compose_config(micro + ["experiment=amplify_erased", "erase_method=uce", "attribution.num_images=4"])
    out = run_from_config(cfg, tmp_path / "run")
    assert set(out["metrics"]) == {"original", "erased", "edited"}
    assert out["run"]["erase_method"]["name"] == "uce"
    # the recall is the erasure followed by the amplify mask made on the erased model
    assert out["edits"]["edited"]["fingerprint"] != out["edits"]["erased"]["fingerprint"]


def test_amplify_erased_needs_an_erased_model(micro, toy, tmp_path):
    with pytest.raises(ConfigError, match="erase_method="):
        run_from_config(compose_config(micro + ["experiment=amplify_erased"]), tmp_path / "run")


def test_a_method_refuses_settings_it_does_not_have(micro, toy, tmp_path):
    with pytest.raises(ConfigError, match="did you mean method.lamb"):
        run_from_config(compose_config(micro + ["method=uce", "+method.lam=0.1"]), tmp_path / "run")
