"""`python -m experiments.run [group=option ...] [-m sweeps]`: the Hydra entry point (config in conf/).

    python -m experiments.run                                   # toy world main job (make run)
    python -m experiments.run experiment=object_erasure model=sd14 concept=church
    python -m experiments.run -m experiment=object_erasure method.ratio=0.001,0.003,0.01 concept=church,parachute model=sd14
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from . import CONF_DIR

log = logging.getLogger("cad.experiments")


def run_from_config(cfg: dict, run_dir: str | Path) -> dict:
    """Dispatch on `task` with a plain dict config; the logger wraps the run if one is configured."""
    from evaluation.wandb_log import make_logger

    from .validate import ConfigError

    run_dir = Path(run_dir)
    task = cfg.get("task", "erase_eval")
    if task not in ("erase_eval", "fidelity"):
        raise ConfigError(f"unknown task {task!r}; use task=erase_eval or task=fidelity")
    logger = make_logger(cfg.get("logger"), config=cfg, run_name=f"{cfg.get('experiment_name')}/{run_dir.name}")
    try:
        if task == "fidelity":
            from .fidelity import run_fidelity

            payload = run_fidelity(cfg, run_dir, logger=logger)
        else:
            from .erase_eval import run_erase_eval

            payload = run_erase_eval(cfg, run_dir, logger=logger)
    finally:
        logger.finish()
    return payload


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from .erase_eval import summary_lines

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    plain = OmegaConf.to_container(cfg, resolve=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # the resolved config
    payload = run_from_config(plain, run_dir)
    lines = payload.get("summary") or summary_lines(payload)
    print("\n".join(lines + [f"run folder: {run_dir}"]))
    return None


if __name__ == "__main__":
    main()
