"""Compose a run's config outside `@hydra.main` (tests, notebooks): the same files and overrides as the CLI."""

from __future__ import annotations

from omegaconf import OmegaConf, open_dict

from . import CONF_DIR


def compose_config(overrides: list[str] | tuple[str, ...] = (), *, keep_hydra: bool = False):
    """The composed config: a plain resolved dict, or (keep_hydra=True) the DictConfig with its `hydra` node."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a running app (a sweep's callback): its own config dir
        cfg = compose("config", overrides=list(overrides), return_hydra_config=keep_hydra)
    else:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=keep_hydra)
    if keep_hydra:
        return cfg
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=True)
