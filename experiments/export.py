"""`python -m experiments.export <run folder> [--out DIR] [--push-to-hub REPO]`: a run's edited model as a
diffusers folder with a model card, for evaluation outside cad or for the Hub.

    python -m experiments.export outputs/runs/2026-01-01/12-00-00-000000
    python -m experiments.run concept=circle export=true                      # the same, at the end of the run
    python -m experiments.run concept=circle push_to_hub=me/toy-no-circle     # ... and uploaded (huggingface_hub)

The folder is `export_edited_pipeline`'s (plain `DiffusionPipeline.from_pretrained` loads it, cad_edit.json
holds the edit's record) plus README.md: the Hub's YAML front matter (base_model where the model is a hub id,
library_name, license where known, tags) and what made it (base model, method and settings, concept and
prompts, the edit's fingerprint, the run's metrics with their benchmarks and protocol), read from the run
folder's config.yaml and metrics.json and the run's rows in results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("cad.experiments")

# Licenses of the models conf/model names, for the card's front matter (a local folder's is unknown).
LICENSES = {
    "CompVis/stable-diffusion-v1-4": "creativeml-openrail-m",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stabilityai/stable-diffusion-2-1": "openrail++",
    "stabilityai/stable-diffusion-2-1-base": "openrail++",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
    "stabilityai/stable-diffusion-3.5-medium": "other",
    "stabilityai/stable-diffusion-3.5-large": "other",
    "black-forest-labs/FLUX.1-dev": "other",
    "black-forest-labs/FLUX.1-schnell": "apache-2.0",
}


class ExportError(ValueError):
    """The run folder cannot be exported; the message says why and what to do."""


def check_export(cfg: dict) -> None:
    """export=true / push_to_hub=<repo> on a run: refused before anything loads when there will be nothing to
    export or no way to upload it (the run would otherwise fail after hours of generation)."""
    from .validate import ConfigError

    repo = cfg.get("push_to_hub")
    if not (cfg.get("export") or repo):
        return
    if cfg.get("task", "erase_eval") != "erase_eval":
        raise ConfigError(f"export / push_to_hub apply to task=erase_eval, whose edit they export; task="
                          f"{cfg.get('task')} edits nothing to keep: drop export=true and push_to_hub")
    if (cfg.get("method") or {}).get("name") == "none":
        raise ConfigError("method=none leaves the model unedited, so there is nothing to export; drop export=true "
                          "and push_to_hub, or choose a method that edits")
    if repo:
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", str(repo)):
            raise ConfigError(f"push_to_hub={repo!r} is not a Hub repo id; use <user or org>/<name>, e.g. "
                              "push_to_hub=me/sd14-no-church")
        from huggingface_hub import constants, get_token

        if constants.HF_HUB_OFFLINE:
            raise ConfigError(f"push_to_hub={repo} but HF_HUB_OFFLINE=1: nothing can be uploaded; run with export=true "
                              "and upload later with `python -m experiments.export <run folder> --push-to-hub "
                              f"{repo}` where the Hub can be reached")
        if get_token() is None:
            raise ConfigError(f"push_to_hub={repo} but no Hub token: log in with `hf auth login` or set HF_TOKEN")


def read_run(run_dir: str | Path) -> tuple[dict, dict]:
    """(resolved config, metrics payload) of a finished run folder."""
    import yaml

    run_dir = Path(run_dir)
    cfg_file, metrics_file = run_dir / "config.yaml", run_dir / "metrics.json"
    if not cfg_file.is_file():
        raise ExportError(f"{run_dir} is not a run folder: no config.yaml (runs write it to "
                          "outputs/runs/<date>/<time>/ or outputs/multirun/<date>/<time>/<job>/)")
    if not metrics_file.is_file():
        raise ExportError(f"{run_dir} has no metrics.json: the run did not finish; rerun it (its caches make that "
                          "quick) and export then")
    return yaml.safe_load(cfg_file.read_text()), json.loads(metrics_file.read_text())


def find_edit(cfg: dict, payload: dict, variant: str = "edited"):
    """The run's saved edit of `variant`, loaded and checked against the fingerprint metrics.json records."""
    from cad.edits import load_edit

    info = (payload.get("edits") or {}).get(variant)
    if info is None:
        raise ExportError(f"the run has no {variant!r} edit (its edits: {sorted(payload.get('edits') or {})}); "
                          "method=none runs leave the model as it is, so there is nothing to export")
    outputs = Path(cfg["paths"]["outputs"])
    model_key = payload["run"]["model"]
    candidates = [outputs / "edits" / model_key / info["fingerprint"]]
    if variant == "edited" and (payload.get("method_info") or {}).get("edit_path"):
        candidates.insert(0, Path(payload["method_info"]["edit_path"]))  # a trained edit lives in its method's cache
    for folder in candidates:
        if (folder / "edit.safetensors").is_file():
            edit = load_edit(folder)
            if edit.fingerprint == info["fingerprint"]:
                return edit
    raise ExportError(f"edit {info['fingerprint']} ({info.get('kind')}) of the run is not saved under "
                      f"{' or '.join(map(str, candidates))}" + (" (an erase-then-amplify composition is saved as its "
                      "parts)" if info.get("kind") == "composed" else "") + "; rerun the run to recreate it")


def _run_rows(cfg: dict, run_id: str | None) -> list[dict]:
    from evaluation.report import load_results

    path = Path(cfg["paths"]["outputs"]) / "results.jsonl"
    if not run_id or not path.is_file():
        return []
    return [r for r in load_results(path) if r.get("run_id") == run_id]


def _is_hub_id(model_id: str) -> bool:
    return model_id.count("/") == 1 and not Path(model_id).expanduser().exists() and not model_id.startswith((".", "/", "~"))


def card_metadata(cfg: dict, payload: dict, edit) -> dict:
    """The Hub's YAML front matter of the exported model."""
    model, run = cfg["model"], payload["run"]
    goal = "concept-amplification" if run["method"] == "cad_amplify" else "concept-erasure"
    meta: dict[str, Any] = {}
    mid = str(model["id"])
    if _is_hub_id(mid):
        meta["base_model"] = mid
    if LICENSES.get(mid):
        meta["license"] = LICENSES[mid]
    meta.update(library_name="diffusers", pipeline_tag="text-to-image",
                tags=["diffusers", "text-to-image", "cad", goal, str(run["method"])],
                cad={"method": run["method"], "concept": run["concept"], "edit_fingerprint": edit.fingerprint,
                     "edit_kind": edit.kind, "ratio": run.get("ratio"), "model": run["model"]})
    return meta


def model_card(cfg: dict, payload: dict, edit, rows: list[dict] | None = None) -> str:
    """README.md of the exported folder: front matter, then what made the model and how it scored."""
    import yaml

    from .validate import effective_concept

    model, run = cfg["model"], payload["run"]
    concept = effective_concept(cfg["concept"], str(model["name"]))
    prompts = {k: concept.get(k) for k in ("prompt", "base_prompt", "anchors", "image_prompt", "amplify_prompt")
               if concept.get(k) not in (None, [])}
    front = yaml.safe_dump(card_metadata(cfg, payload, edit), sort_keys=False, allow_unicode=True)
    action = "amplified in" if run["method"] == "cad_amplify" else "erased from"
    setting = ", ".join(f"{k} {run[k]}" for k in ("ratio", "sign", "granularity") if run.get(k) is not None)
    lines = [f"---\n{front}---", "",
             f"# {run['concept']} {action} {model['id']} ({run['method']})", "",
             "Made with [cad](https://arxiv.org/abs/2412.02542) (component attribution for diffusion models). "
             "Load it with plain diffusers: `DiffusionPipeline.from_pretrained(<this folder or repo>)`.", "",
             "## What made it", "",
             f"- base model: `{model['id']}` (cad model `{run['model']}`, dtype {model.get('dtype')})"
             + (f", checkpoint `{model['checkpoint']}`" if model.get("checkpoint") else ""),
             f"- method: `{run['method']}`" + (f" ({setting})" if setting else ""),
             f"- method settings: `{json.dumps(run.get('method_settings'), sort_keys=True, default=str)}`",
             f"- concept: `{run['concept']}`, prompts: `{json.dumps(prompts, default=str)}`",
             f"- protocol: {(cfg.get('protocol') or {}).get('name')}; seed {cfg.get('seed')}",
             f"- edit: {edit.kind}, fingerprint `{edit.fingerprint}`" + _edit_size(payload),
             f"- run: `{run.get('run_id')}`", ""]
    metrics = payload.get("metrics") or {}
    if metrics:
        variants = list(metrics)
        keys = list(dict.fromkeys(k for v in variants for k in metrics[v]))
        lines += ["## Metrics", "", "| metric | " + " | ".join(variants) + " |",
                  "|---|" + "---|" * len(variants)]
        for k in keys:
            lines.append(f"| {k} | " + " | ".join(_fmt(metrics[v].get(k)) for v in variants) + " |")
        lines.append("")
    protocols = {}
    for r in rows or []:
        protocols.setdefault(r["benchmark"], {k: v for k, v in (r.get("protocol") or {}).items() if k != "versions"})
    if protocols:
        lines += ["## Benchmarks and protocol", ""]
        for bench, proto in protocols.items():
            lines += [f"- `{bench}`: `{json.dumps(proto, sort_keys=True, default=str)}`"]
        lines.append("")
    elif payload.get("images"):
        lines += ["## Benchmarks", "", *[f"- `{b}`" for b in payload["images"]], ""]
    return "\n".join(lines)


def _edit_size(payload: dict) -> str:
    info = (payload.get("edits") or {}).get("edited") or {}
    if "n_ablated" in info:
        return f", {info['n_ablated']} weights zeroed ({100 * info['fraction']:.3g}% of the component space)"
    if "n_weights" in info:
        return f", {info['n_weights']} weights rewritten"
    return ""


def _fmt(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def export_run(run_dir: str | Path, out: str | Path | None = None, *, cfg: dict | None = None,
               payload: dict | None = None, variant: str = "edited", overwrite: bool = False,
               push_to_hub: str | None = None, device: str | None = None) -> Path:
    """Write the run's edited model and its card to `out` (default `<run folder>/model`); the folder appears
    whole or not at all. With `push_to_hub` (a repo id) it is uploaded too. Returns the folder."""
    from cad.edits import export_edited_pipeline

    from .models import load_model

    run_dir = Path(run_dir)
    if cfg is None or payload is None:
        read_cfg, read_payload = read_run(run_dir)
        cfg, payload = cfg or read_cfg, payload or read_payload
    out = Path(out) if out is not None else run_dir / "model"
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass --overwrite (export_run(..., overwrite=True)) or another --out")
    edit = find_edit(cfg, payload, variant)
    loaded = load_model(cfg["model"], device=device or cfg.get("device", "auto"),
                        toy_kit=(cfg.get("paths") or {}).get("toy_kit"))
    card = model_card(cfg, payload, edit, _run_rows(cfg, payload["run"].get("run_id")))
    export_edited_pipeline(loaded.pipe, edit, out, overwrite=True, extra_files={"README.md": card})
    log.info("exported %s edit %s to %s", payload["run"]["method"], edit.fingerprint, out)
    if push_to_hub:
        push_folder(out, push_to_hub)
    return out


def push_folder(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None) -> str:
    """Upload an exported folder to the Hub (huggingface_hub's create_repo + upload_folder); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="cad: edited model export")
    except Exception as err:
        raise ExportError(f"upload of {folder} to the Hub repo {repo_id!r} failed ({err}); log in with `hf auth "
                          "login` (or set HF_TOKEN) and check the repo name, or upload the folder later with "
                          f"`python -m experiments.export <run folder> --push-to-hub {repo_id}`") from err
    url = f"https://huggingface.co/{repo_id}"
    log.info("uploaded %s to %s", folder, url)
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder (holding config.yaml and metrics.json)")
    parser.add_argument("--out", help="the diffusers folder to write (default: <run folder>/model)")
    parser.add_argument("--variant", default="edited", help="which of the run's edits (default: edited)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub repo")
    parser.add_argument("--device", help="where to load the model (default: the run's device)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = export_run(args.run_dir, args.out, variant=args.variant, overwrite=args.overwrite,
                         push_to_hub=args.push_to_hub, device=args.device)
    except ExportError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
