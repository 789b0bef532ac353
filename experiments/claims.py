"""`python -m experiments.claims [key=value ...]`: the toy claims' verdicts from <outputs>/results.jsonl.

`make claims` runs the claims experiments with the runner, then this:

    python -m experiments.run -m experiment=claims_erase      # every toy concept x ratio x rule (cad, retain)
    python -m experiments.run -m experiment=claims_amplify    # weaken circle by a small erase, amplify it
    python -m experiments.run -m experiment=claims_fidelity   # Fig. 2: 200 random ablations
    python -m experiments.claims                              # bars of conf/claims.yaml -> the tables
    python -m experiments.claims bars.target=0.05 out=docs/toy_claims.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import CONF_DIR, repo_root


def claims_config(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """conf/claims.yaml with command-line style overrides, as a plain resolved dict."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    from .validate import ConfigError

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("claims", overrides=list(overrides))
    except ConfigCompositionException as err:  # a bad override: the user's to fix (conf/claims.yaml has the keys)
        raise ConfigError(f"{err} (the keys are those of conf/claims.yaml)") from err
    return OmegaConf.to_container(cfg, resolve=True)


def main(argv: list[str] | None = None) -> int:
    from cad.io import atomic_write_text
    from evaluation.claims import claims_markdown, summarize

    from .results import read_latest

    cfg = claims_config(sys.argv[1:] if argv is None else argv)
    results = Path(cfg["paths"]["outputs"]) / "results.jsonl"
    summary = summarize(read_latest(results), cfg)
    header = None
    if cfg.get("note"):
        where = results.relative_to(repo_root()) if results.is_relative_to(repo_root()) else results
        header = f"<!-- made by `make claims` ({cfg['note']}) at commit <commit>; rows from {where} -->\n"
    text = claims_markdown(summary, header)
    print(text, end="")
    if cfg.get("out"):
        atomic_write_text(Path(cfg["out"]), text)
        print(f"wrote {cfg['out']}")
    return 0 if summary["passes"] else 1


if __name__ == "__main__":
    from cad.errors import run_main

    # an input error (no claims rows yet, a bad override) prints alone with exit status 2
    sys.exit(run_main(main, hint="set HYDRA_FULL_ERROR=1 to see the traceback"))
