"""`python -m experiments.run [group=option ...] [-m sweeps]`: the Hydra entry point (config in conf/).

    python -m experiments.run                                   # toy world main job (make run)
    python -m experiments.run experiment=object_erasure model=sd14 concept=church
    python -m experiments.run -m experiment=object_erasure method.ratio=0.001,0.003,0.01 concept=church,parachute model=sd14
    torchrun --nproc-per-node=4 -m experiments.run experiment=object_erasure model=sd14 concept=church   # 4 GPUs
    python -m experiments.run experiment=object_erasure model=sd14 concept=church plan_only=true   # the plan, then stop

Exit status 2: the input is wrong (a setting, a missing file or download; the message alone says what to fix,
debug=true adds the traceback); 1: a bug (with its traceback). See experiments/cli.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from . import CONF_DIR
from .cli import job_errors, run_app

log = logging.getLogger("cad.experiments")


def run_from_config(cfg: dict, run_dir: str | Path) -> dict:
    """Dispatch on `task` with a plain dict config; the logger wraps the run if one is configured."""
    from cad import distributed
    from evaluation.wandb_log import make_logger

    from .validate import ConfigError

    run_dir = Path(run_dir)
    task = cfg.get("task", "erase_eval")
    if task not in ("erase_eval", "fidelity", "analysis"):
        raise ConfigError(f"unknown task {task!r}; use task=erase_eval, task=fidelity or task=analysis")
    if cfg.get("plan_only"):  # the plan, then stop: no model, no logger, no cache or rows written
        from .planning import plan_only

        return plan_only(cfg)
    logger = make_logger(cfg.get("logger") if distributed.world().is_main else None,  # W&B: rank 0's run alone
                         config=cfg, run_name=f"{cfg.get('experiment_name')}/{run_dir.name}")
    try:
        if task == "fidelity":
            from .fidelity import run_fidelity

            payload = run_fidelity(cfg, run_dir, logger=logger)
        elif task == "analysis":
            from .analysis import run_analysis

            payload = run_analysis(cfg, run_dir, logger=logger)
        else:
            from .erase_eval import run_erase_eval

            payload = run_erase_eval(cfg, run_dir, logger=logger)
            if (cfg.get("export") or cfg.get("push_to_hub")) and distributed.world().is_main:
                from .export import export_run

                # the same function as `python -m experiments.export <run folder>`, on this run's config
                payload["export"] = str(export_run(run_dir, cfg=cfg, payload=payload, overwrite=True,
                                                   push_to_hub=cfg.get("push_to_hub")))
    finally:
        logger.finish()
    return payload


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from cad import distributed

    from .erase_eval import summary_lines

    # a SLURM job of several tasks (launcher=submitit_slurm hydra.launcher.tasks_per_node=N) joins its group here
    main_rank = distributed.init_from_env().is_main
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    plain = OmegaConf.to_container(cfg, resolve=True)
    if main_rank:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # the resolved config
    with job_errors(bool(cfg.get("debug", False))):
        payload = run_from_config(plain, run_dir)
    distributed.barrier()  # the ranks end together, after rank 0 wrote the results
    if main_rank:
        lines = payload.get("summary") or summary_lines(payload)
        print("\n".join(lines + [f"run folder: {run_dir}"]))
    return None


def join_process_group() -> None:
    """Under torchrun (WORLD_SIZE > 1): join the process group before Hydra makes the run folder, and give every
    rank rank 0's start time, so that all ranks make the one run folder (the `cad.now` resolver)."""
    import os
    from datetime import datetime

    from cad import distributed

    from . import STARTED_ENV

    if distributed.init_from_env().size > 1:
        os.environ[STARTED_ENV] = distributed.broadcast(datetime.now().isoformat())


if __name__ == "__main__":
    join_process_group()
    run_app(main)
