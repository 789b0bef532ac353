"""The W&B logger writes an offline run (config, metrics, image, table) when no API key is set."""

from __future__ import annotations

import json
import time

import pytest
from PIL import Image

from evaluation.wandb_log import NullLogger, make_logger, resolve_mode


def test_mode_choice(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert resolve_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(None) == "online"
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment wins (make and tests set it)
    assert resolve_mode("online") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="online"):
        resolve_mode(None)


def test_none_logger():
    assert isinstance(make_logger({"name": "none"}), NullLogger)
    with pytest.raises(ValueError, match="logger=wandb"):
        make_logger({"name": "tensorboard"})


def test_offline_run_writes_files(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    logger = make_logger({"name": "wandb", "project": "cad-test", "dir": str(tmp_path / "wb"), "tags": ["t"]},
                         config={"model": {"name": "toy"}, "method": {"ratio": 0.01}}, run_name="unit")
    assert logger.mode == "offline"
    logger.log_metrics({"edited/toy_objects/acc_target": 0.25})
    logger.log_image("grid/toy_objects", Image.new("RGB", (24, 24), "red"), caption="original / edited")
    logger.log_table("results", [{"metric": "toy_objects/acc_target", "value": 0.25, "protocol": {"steps": 3}}])
    run_dir = logger.run_dir
    logger.finish()
    assert run_dir.parent == tmp_path / "wb" / "wandb" and run_dir.name.startswith("offline-run-")
    files = run_dir / "files"
    assert list(run_dir.glob("run-*.wandb")), "the offline run's event log (what `wandb sync` uploads)"
    assert list((files / "media" / "images" / "grid").glob("toy_objects_*.png"))
    table = json.loads(next((files / "media" / "table").glob("results_*.table.json")).read_text())
    assert "metric" in table["columns"] and table["data"][0][table["columns"].index("value")] == 0.25
    # offline, config and metrics live in the run's event log until `wandb sync` uploads it
    log_file = next(run_dir.glob("run-*.wandb"))
    deadline = time.monotonic() + 20  # wandb's service process flushes the log just after finish() returns
    while b"cad-test" not in log_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = log_file.read_bytes()
    assert b"edited/toy_objects/acc_target" in log and b"ratio" in log and b"cad-test" in log
