"""A whole sweep checked before its first job: `-m concept=diamond,striped method.ratio=0.01,0.05` composes every
job and runs the same checks a job runs before it loads a model (`validate.plan_run`), then refuses the sweep,
naming each failing job and its reason, if any job would fail. A SLURM array must not burn its first jobs before
learning that the third cannot work.

Hydra swallows an exception raised by a callback (it only warns), so the refusal is a SystemExit(2), which Hydra
lets through; nothing has been launched and no sweep folder exists yet at `on_multirun_start`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .config import compose_config

log = logging.getLogger("cad.experiments")

# Each check takes ~0.1-1 s; past this many jobs only the first are checked here (the rest check themselves).
MAX_JOBS = 2000


def sweep_jobs(overrides: Sequence[str], params: dict | None = None) -> list[list[str]]:
    """Each job's overrides, in Hydra's job order, exactly as the basic sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{k}={v}" for k, v in (params or {}).items()] + list(overrides)
    parsed = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def swept_keys(overrides: Sequence[str]) -> set[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {o.get_key_element() for o in OverridesParser.create().parse_overrides(list(overrides))
            if o.is_sweep_override()}


def check_jobs(jobs: Sequence[Sequence[str]]) -> list[tuple[int, list[str], str]]:
    """(job number, overrides, reason) of every job that would fail its checks."""
    from hydra.errors import HydraException

    from .validate import ConfigError, plan_run

    failures = []
    for num, job in enumerate(jobs):
        try:
            plan_run(compose_config(job))
        except (ConfigError, HydraException, ValueError) as err:
            failures.append((num, list(job), str(err).strip()))
    return failures


def refusal(failures: Sequence[tuple[int, list[str], str]], n_jobs: int, swept: set[str]) -> str:
    lines = [f"the sweep was not started: {len(failures)} of its {n_jobs} jobs would fail their checks; fix or "
             "drop them (no job has run, nothing was written):"]
    for num, job, reason in failures:
        shown = " ".join(o for o in job if o.split("=", 1)[0] in swept) or " ".join(job)
        lines.append(f"  job {num} ({shown}): {reason}")
    return "\n".join(lines)


class ValidateSweep(Callback):
    """conf/config.yaml registers it under hydra.callbacks; it checks every job of a multirun, and of a single
    run only what Hydra needs before the run's own checks (its run folder goes under paths.outputs)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        # Hydra makes the run folder before the task function runs; a paths.outputs that is a file would fail
        # that mkdir with a bare NotADirectoryError. Raised as SystemExit: Hydra only warns about a callback's error.
        from cad.errors import report_user_error

        from .validate import ConfigError, check_outputs

        try:
            check_outputs(OmegaConf.select(config, "paths.outputs"))
        except ConfigError as err:
            raise SystemExit(report_user_error(err)) from None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        overrides = list(config.hydra.overrides.task)
        params = config.hydra.sweeper.get("params") or {}
        params = OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params)
        jobs = sweep_jobs(overrides, params)
        if len(jobs) > MAX_JOBS:
            log.warning("sweep of %d jobs: checking the first %d before launching", len(jobs), MAX_JOBS)
            jobs = jobs[:MAX_JOBS]
        failures = check_jobs(jobs)
        if OmegaConf.select(config, "plan_only"):  # the sweep's plan, shared work counted once; no job launches
            from .planning import run_plan, sum_plans

            swept = swept_keys(overrides) | set(params or {})
            plans, unplanned = [], []
            for num, job in enumerate(jobs):
                label = " ".join(o for o in job if o.split("=", 1)[0] in swept) or f"job {num}"
                try:
                    plans.append((label, run_plan(compose_config(job))))
                except Exception as err:  # noqa: BLE001 - Hydra would swallow it and launch the jobs
                    unplanned.append(f"  {label}: no plan ({type(err).__name__}: {err})")
            lines = sum_plans(plans) + unplanned
            if failures:  # a plan is for deciding what to fetch or fix: say so, plan all the same
                lines.append("before running: " + refusal(failures, len(jobs), swept))
            print("\n".join(lines + ["plan_only=true: stopped before any job ran"]))
            raise SystemExit(0)
        if failures:
            swept = swept_keys(overrides) | set(params or {})
            print(refusal(failures, len(jobs), swept), file=sys.stderr)
            raise SystemExit(2)
        log.info("sweep checked: all %d jobs pass their checks", len(jobs))
