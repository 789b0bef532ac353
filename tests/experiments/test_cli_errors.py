"""Errors that are the user's to fix end the process with their message alone and exit status 2; bugs keep their
traceback (status 1); a run's missing files are reported all at once, as one checklist."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException

from cad.errors import USER_ERROR_STATUS, UserError
from experiments import repo_root
from experiments.cli import job_errors, run_app, typo_error
from experiments.config import compose_config
from experiments.validate import AssetCheck, ConfigError, PreflightError, check_run


def _cli(tmp_path: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "CAD_OUTPUTS": str(tmp_path / "out"), "HF_HUB_OFFLINE": "1",
               # empty caches: the metric weights are missing on every machine, whatever this one has cached
               "HF_HOME": str(tmp_path / "hf-home"), "TORCH_HOME": str(tmp_path / "torch-home"), **env}
    environ.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "experiments.run", *overrides], cwd=repo_root(), env=environ,
                          capture_output=True, text=True, timeout=300)


def _three_missing(tmp_path: Path) -> tuple[list[str], dict[str, Path]]:
    """A nudity-erasure run on SD 1.4 with three files missing: the model folder is not a pipeline folder (no
    model_index.json), the FID reference folder does not exist, nor does model.checkpoint."""
    folder = tmp_path / "not-a-pipeline"
    folder.mkdir()
    (folder / "README.md").write_text("weights go here\n")
    missing = {"model": folder, "fid": tmp_path / "no-coco", "checkpoint": tmp_path / "esd-unet.safetensors"}
    return ["experiment=nudity_erasure", "model=sd14", f"model.id={folder}", f"model.checkpoint={missing['checkpoint']}",
            f"retain.coco30k.meta.fid_reference={missing['fid']}"], missing


def test_every_missing_asset_is_in_one_checklist(tmp_path, outputs, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    overrides, missing = _three_missing(tmp_path)
    with pytest.raises(PreflightError) as raised:
        check_run(compose_config(overrides))
    checks = raised.value.checks
    assert all(isinstance(c, AssetCheck) for c in checks)
    by_where = {c.where: c for c in checks}
    assert "model_index.json" in by_where[str(missing["model"])].fix
    assert "does not exist" in by_where[str(missing["checkpoint"])].fix
    assert "does not exist" in by_where[str(missing["fid"])].fix
    # the metric weights are looked for too, not only up to the first missing one
    assert any("InceptionV3" in c.fix for c in checks)
    text = str(raised.value)
    assert text.startswith(f"this run cannot start: {len(checks)} of its assets are missing")
    assert text.count("[ ] ") == len(checks)
    # a config error still stops first, alone
    with pytest.raises(ConfigError) as alone:
        check_run(compose_config([*overrides, "model.guidance=-1"]))
    assert not isinstance(alone.value, PreflightError) and "model.guidance=-1" in str(alone.value)


def test_checklist_pickles_with_its_checks():
    import pickle

    err = PreflightError([AssetCheck("model snapshot", "/x", "fix it"), AssetCheck("fid reference", None, "set it")])
    again = pickle.loads(pickle.dumps(err))
    assert again.checks == err.checks and str(again) == str(err) and isinstance(again, UserError)


def test_cli_prints_the_checklist_alone_and_exits_2(tmp_path):
    overrides, missing = _three_missing(tmp_path)
    proc = _cli(tmp_path, *overrides)
    assert proc.returncode == USER_ERROR_STATUS, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    assert proc.stderr.startswith("error: this run cannot start:")
    for path in missing.values():
        assert str(path) in proc.stderr
    assert "model_index.json" in proc.stderr and "InceptionV3" in proc.stderr and "open_clip" in proc.stderr
    assert "debug=true" in proc.stderr


def test_cli_typo_without_plus_gets_did_you_mean(tmp_path):
    proc = _cli(tmp_path, "method.spce=ff", "seed=1")
    assert proc.returncode == USER_ERROR_STATUS, proc.stderr[-3000:]
    assert "did you mean method.space?" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "runs").exists()  # refused while composing: no run folder


@pytest.mark.parametrize(("override", "expect"), [
    ("model.guidence=3", "did you mean model.guidance?"),
    ("sed=1", "did you mean seed?"),
    ("erase_method.ratio=0.1", None),  # erase_method is null: Hydra's own message stands
])
def test_typo_error_names_the_closest_key(override, expect):
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config([override])
    found = typo_error(raised.value, [override, "model=toy"])
    if expect is None:
        assert found is None
    else:
        assert isinstance(found, ConfigError) and expect in str(found)


# --- the entry point's reporting, on a small Hydra app of its own --------------------------------------------


@pytest.fixture()
def app(tmp_path, monkeypatch):
    """A @hydra.main app that fails as `fail=` says (user: a ConfigError; bug: a KeyError), run through run_app
    with Hydra's logging off and its folders under tmp_path; returns run(*overrides) -> (status, stderr)."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text("fail: none\ndebug: false\nx: 0\n")
    done = tmp_path / "done"
    done.mkdir()

    @hydra.main(config_path=str(conf), config_name="config", version_base="1.3")
    def main(cfg):
        with job_errors(cfg.debug):
            if cfg.fail == "user" or (cfg.fail == "user_if_x1" and cfg.x == 1):
                raise ConfigError("x cannot be used here; set x=2")
            if cfg.fail == "bug":
                {}["missing"]  # noqa: B018 - a bug: its traceback must survive
            (done / str(cfg.x)).write_text("ok")

    def run(*overrides):
        flags = [o for o in overrides if o.startswith("-")]
        argv = ["app", *flags, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
                *(o for o in overrides if not o.startswith("-"))]
        monkeypatch.setattr(sys, "argv", argv)
        GlobalHydra.instance().clear()
        try:
            run_app(main, explain_typos=False)  # cad's schema is not this app's
            return 0
        except SystemExit as end:
            return end.code
        finally:
            GlobalHydra.instance().clear()

    run.done = done
    # Hydra's logging configs (even `disabled`) apply dictConfig with disable_existing_loggers: every logger made
    # before (cad.experiments, cad.generate, ...) would stay disabled for the rest of the session, and later tests
    # that read their records (caplog) would see nothing. Put the logging state back as it was.
    loggers = {name: (lg.disabled, lg.level, list(lg.handlers), lg.propagate)
               for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    root = (logging.root.level, list(logging.root.handlers))
    yield run
    for name, (disabled, level, handlers, propagate) in loggers.items():
        lg = logging.getLogger(name)
        lg.disabled, lg.level, lg.handlers, lg.propagate = disabled, level, handlers, propagate
    logging.root.level, logging.root.handlers = root


def test_app_user_error_alone_with_status_2(app, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert app("fail=user") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: x cannot be used here; set x=2") and "Traceback" not in err
    assert "HYDRA_FULL_ERROR" not in os.environ  # run_app's own setting does not outlive it


def test_app_user_error_traceback_with_debug_or_full_error(app, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert app("fail=user", "debug=true") == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert app("fail=user") == 2
    assert "Traceback" in capsys.readouterr().err
    assert os.environ["HYDRA_FULL_ERROR"] == "1"


def test_app_bug_keeps_its_traceback_with_status_1(app, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert app("fail=bug") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'missing'" in err and "test_cli_errors.py" in err
    assert "hydra/_internal" not in err  # Hydra's frames are stripped, as Hydra itself does


def test_app_sweep_finishes_its_other_jobs_then_exits_2(app, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert app("-m", "fail=user_if_x1", "x=1,2,3") == 2
    assert sorted(p.name for p in app.done.iterdir()) == ["2", "3"]
    err = capsys.readouterr().err
    assert "error: x cannot be used here" in err and "Traceback" not in err


def test_app_hydra_command_line_error_is_a_user_error(app, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert app("y=1") == 2  # not in the config, no `+`: Hydra's message (no cad schema for this app's keys)
    err = capsys.readouterr().err
    assert "Could not override 'y'" in err and "Traceback" not in err
    assert app() == 0 and (app.done / "0").is_file()


# --- the other entry points ----------------------------------------------------------------------------------


def test_claims_without_rows_or_with_a_bad_override_exits_2(outputs, capsys, monkeypatch):
    from cad.errors import run_main
    from experiments.claims import main as claims_main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for argv, expect in (([], "run the claims sweep first"), (["bars.targt=0.05"], "Could not override 'bars.targt'")):
        with pytest.raises(SystemExit) as end:
            run_main(claims_main, argv)
        assert end.value.code == USER_ERROR_STATUS
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expect in err and "Traceback" not in err


def test_toy_kit_missing_folder_exits_2(tmp_path, capsys, monkeypatch):
    from cad.errors import run_main
    from experiments.toy_kit import main as kit_main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as end:
        run_main(kit_main, ["--quality", "--out", str(tmp_path / "no-kit")])
    assert end.value.code == USER_ERROR_STATUS
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "no-kit") in err and "Traceback" not in err
