"""The runner end to end on the micro toy kit: main job, reuse across a sweep, fidelity, the CLI multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image as PILImage

from evaluation.report import load_results, markdown_tables
from experiments import repo_root
from experiments.config import compose_config
from experiments.run import run_from_config


def _pngs(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("*.png"))}


def test_main_job_and_sweep_reuse(micro, toy, tmp_path):
    cfg = compose_config(micro + ["method.ratio=0.02"])
    first = run_from_config(cfg, tmp_path / "run1")
    assert not first["attribution_reused"]
    assert set(first["metrics"]) == {"original", "edited", "random-0"}
    for values in first["metrics"].values():
        assert 0.0 <= values["toy_objects/acc_target"] <= 1.0 and 0.0 <= values["toy_objects/acc_others"] <= 1.0
    written = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    assert written["run"]["concept"] == "diamond" and written["edits"]["edited"]["n_ablated"] > 0
    assert written["run"]["run_id"] == str(tmp_path / "run1")  # outside the outputs root: the absolute folder
    assert (tmp_path / "run1" / "grid_toy_objects.png").is_file()  # original / edited / random rows
    grid = json.loads(PILImage.open(tmp_path / "run1" / "grid_toy_objects.png").text["cad_grid"])
    assert [c["label"] for c in grid["columns"]][:3] == ["diamond", "diamond", "circle"]  # the target first
    assert written["edits"]["edited"]["n_ablated"] == written["edits"]["random-0"]["n_ablated"]
    images = {k: toy.joinpath(v) for k, v in written["images"]["toy_objects@v1"].items()}
    assert len(_pngs(images["original"])) == 12  # 6 shapes x 2
    before = _pngs(images["original"])
    scores = toy.joinpath(written["run"]["scores_path"], "scores.safetensors").stat().st_mtime_ns

    second = run_from_config(compose_config(micro + ["method.ratio=0.05"]), tmp_path / "run2")
    assert second["attribution_reused"] and second["run"]["scores_path"] == first["run"]["scores_path"]
    assert toy.joinpath(second["run"]["scores_path"], "scores.safetensors").stat().st_mtime_ns == scores
    assert second["images"]["toy_objects@v1"]["original"] == str(images["original"])
    assert _pngs(images["original"]) == before  # the unedited images were reused, not re-rendered
    assert second["images"]["toy_objects@v1"]["edited"] != str(images["edited"])
    assert second["metrics"]["original"] == first["metrics"]["original"]

    rows = load_results(toy / "results.jsonl")
    assert len(rows) == 2 * 3 * len([k for k in first["metrics"]["edited"]])
    r = next(r for r in rows if r["variant"] == "edited" and r["metric"] == "toy_objects/acc_target")
    assert r["benchmark"] == "toy_objects@v1" and r["higher_is_better"] is False and r["edit_fingerprint"]
    assert {"steps", "guidance", "scheduler", "seeds", "resolution", "backbones", "versions"} <= set(r["protocol"])
    assert r["protocol"]["steps"] == 3 and r["scores_path"]
    assert "cad_erase@0.05" in markdown_tables(rows)


def test_toy_twin_of_nudity_erasure_logged_to_wandb(micro, toy, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # no API key here: the logger must go offline
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_config(micro + ["experiment=nudity_erasure", "method.controls=[]", "logger=wandb"])
    out = run_from_config(cfg, tmp_path / "run")
    assert out["run"]["concept"] == "magenta"  # nudity's toy stand-in
    keys = set(out["metrics"]["edited"])
    assert {"toy_colors/acc_target", "toy_colors/acc_others", "toy_full/acc_mean"} <= keys
    # NudeNet's image count, COCO's FID and CLIP score, from the kit's own networks
    assert {"toy_colors/toy_detector_images", "toy_colors/toy_detector_share", "toy_full/fid",
            "toy_full/clip_score_cos_mean"} <= keys
    for m in out["metrics"].values():
        n = 2 * 6  # generation.per_label=2 x 6 colours
        assert m["toy_colors/toy_detector_images"] == pytest.approx(m["toy_colors/toy_detector_share"] * n)
        assert m["toy_full/fid"] >= 0.0 and -1.0 <= m["toy_full/clip_score_cos_mean"] <= 1.0
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["metrics"] == out["metrics"]
    rows = load_results(toy / "results.jsonl")
    fid = next(r for r in rows if r["metric"] == "toy_full/fid")
    assert fid["higher_is_better"] is False and "classifier" in fid["protocol"]["backbones"]["fid"]
    (run_dir,) = (toy / "wandb" / "wandb").glob("offline-run-*")
    grids = sorted(p.parent.name + "/" + p.name.split("_")[0] for p in run_dir.glob("files/media/images/grid/*.png"))
    assert grids == ["grid/toy", "grid/toy"]  # toy_colors and toy_full grids
    assert list(run_dir.glob("files/media/table/results_*.table.json"))


def test_paired_lpips_compares_each_variant_with_the_original_images(micro, toy, tmp_path):
    """The artist experiment's LPIPS on the toy twin (toy_lpips, the LPIPS formula on the kit classifier's
    features): edited and control images against the original ones."""
    cfg = compose_config(micro + ["experiment=artist_erasure", "model=toy",
                                  "twin_benchmarks.target.metrics=[classifier_accuracy,toy_lpips]"])
    out = run_from_config(cfg, tmp_path / "run")
    assert not any("lpips" in k for k in out["metrics"]["original"])  # the original against itself: skipped
    for variant in ("edited", "random-0"):
        m = out["metrics"][variant]
        assert m["toy_styles/toy_lpips_erased"] >= 0.0 and m["toy_styles/toy_lpips_others"] >= 0.0
        assert {f"toy_styles/toy_lpips/{s}" for s in ("solid", "outline", "striped", "dotted")} <= set(m)
    assert out["metrics"]["edited"]["toy_styles/toy_lpips_erased"] > 0.0  # the edit changed the erased style


def test_fidelity_task(toy, tmp_path):
    cfg = compose_config(["model.steps=3", "model.guidance=4.0", "experiment=fidelity", "fidelity.n_ablations=4",
                          "fidelity.ratios=[0.01,0.05]"])
    out = run_from_config(cfg, tmp_path / "run")
    assert -1.0 <= out["metrics"]["random"]["fidelity/pearson_r"] <= 1.0
    points = json.loads((tmp_path / "run" / "fidelity_points.json").read_text())["points"]
    assert len(points) == 4 and {p["ratio"] for p in points} == {0.01, 0.05}
    assert (tmp_path / "run" / "fidelity_scatter.png").stat().st_size > 1000


@pytest.mark.slow
def test_cli_multirun(micro, micro_kit, tmp_path):
    env = {**os.environ, "CAD_OUTPUTS": str(tmp_path / "out"), "CAD_TOY_KIT": str(micro_kit.path)}
    cmd = [sys.executable, "-m", "experiments.run", "-m", "method.ratio=0.02,0.05", *micro]
    proc = subprocess.run(cmd, cwd=repo_root(), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "toy_objects/acc_target" in proc.stdout and "random-0" in proc.stdout
    jobs = sorted((tmp_path / "out" / "multirun").glob("*/*/[0-9]"))
    assert len(jobs) == 2
    for job in jobs:
        assert (job / "metrics.json").is_file() and (job / "config.yaml").is_file() and (job / ".hydra").is_dir()
    payloads = [json.loads((j / "metrics.json").read_text()) for j in jobs]
    assert [p["attribution_reused"] for p in payloads] == [False, True]
    assert payloads[1]["run"]["run_id"].startswith("multirun/") and payloads[1]["run"]["run_id"].endswith("/1")
    rows = load_results(tmp_path / "out" / "results.jsonl")
    assert len([r for r in rows if r["metric"] == "toy_objects/acc_target"]) == 2 * 3  # 2 points x 3 variants


def test_retain_siblings_ranks_against_the_other_shapes(micro, toy, tmp_path):
    plain = run_from_config(compose_config(micro + ["method.ratio=0.05"]), tmp_path / "plain")
    aware = run_from_config(compose_config(micro + ["method.ratio=0.05", "method.retain=siblings"]), tmp_path / "aware")
    assert aware["attribution_reused"] and aware["run"]["scores_path"] == plain["run"]["scores_path"]
    assert aware["run"]["retain"] == ["circle", "cross", "ring", "square", "triangle"]
    shapes = {p.parent.parent.name for p in (toy / "attributions").rglob("scores.safetensors")}
    assert shapes == {"circle", "cross", "diamond", "ring", "square", "triangle"}
    edited = aware["edits"]["edited"]
    assert edited["fingerprint"] != plain["edits"]["edited"]["fingerprint"]
    rows = load_results(toy / "results.jsonl")
    assert {tuple(r["retain"] or ()) for r in rows} == {(), ("circle", "cross", "ring", "square", "triangle")}
    assert "cad_erase+retain@0.05" in markdown_tables(rows) and "cad_erase@0.05" in markdown_tables(rows)


def test_image_cache_is_per_model_weights(micro, toy, micro_kit, tmp_path, monkeypatch):
    """Images are cached under the model name plus a hash of its UNet, text encoder and VAE: a kit (or model
    folder) replaced in place under the same name renders new images instead of reusing the old ones."""
    import dataclasses

    from cad.backbones import wrap
    from cad.toy.kit import RECIPES, train_kit
    from experiments.models import load_model

    cfg = compose_config(micro + ["method.ratio=0.02"])
    first = run_from_config(cfg, tmp_path / "run1")
    other = train_kit(tmp_path / "other-kit", dataclasses.replace(RECIPES["micro"], seed=1), progress=False,
                      measure=False)
    monkeypatch.setenv("CAD_TOY_KIT", str(other.path))
    second = run_from_config(compose_config(micro + ["method.ratio=0.02"]), tmp_path / "run2")
    a, b = (first["images"]["toy_objects@v1"]["original"], second["images"]["toy_objects@v1"]["original"])
    assert a != b and "/images/toy-" in a and "/images/toy-" in b
    assert first["run"]["model"] == second["run"]["model"] == "toy"  # the label in results stays the name
    loaded = load_model({"id": "toy", "name": "toy"}, device="cpu", toy_kit=str(micro_kit.path))
    assert loaded.cache_key == f"toy-{loaded.pipeline_fingerprint[:12]}"
    assert wrap(loaded.pipe).fingerprint() == loaded.pipeline_fingerprint
    with torch.no_grad():
        next(loaded.pipe.vae.parameters()).add_(1.0)  # the VAE alone changes the images, so it changes the key
    assert wrap(loaded.pipe).fingerprint() != loaded.pipeline_fingerprint
