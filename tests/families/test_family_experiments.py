"""Every experiment on every model family, through the real runner: `experiments.run` with model=<family option>
model.id=<a folder holding a tiny pipeline of that family> (issue 10, item 4).

Experiments whose metrics run offline run end to end at micro size (32 px, 2 sampler and attribution steps, 2
images per benchmark): nudity_erasure (NudeNet's detector ships inside its package), amplify (CAD-Amplify, on
Ring-A-Bell so that NudeNet scores it), amplify_erased (model.checkpoint: an erased denoiser's state dict) and
fidelity (task=fidelity, no metric). The others need metric weights
that an offline machine lacks (object_erasure and amplify's default: ResNet-50; artist_erasure: CLIP ViT-B/32
and LPIPS AlexNet; nudity_erasure's COCO retention: InceptionV3 for FID); for those the composed config must pass
every check up to the metric preflight, and the run must stop there with an error naming the missing weights,
before the model loads or any image is rendered. TORCH_HOME points at an empty folder so that no cached
torchvision weights make the outcome depend on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.config import compose_config
from experiments.run import run_from_config
from experiments.validate import ConfigError, PreflightError, check_run

# family -> (conf/model option, tiny builder in cad.tiny)
FAMILIES = {
    "sd": ("sd14", "build_tiny_pipeline"),
    "sdxl": ("sdxl", "build_tiny_sdxl_pipeline"),
    "sd3": ("sd35m", "build_tiny_sd3_pipeline"),
    "flux": ("flux_schnell", "build_tiny_flux_pipeline"),
}
# 32 px is a multiple of every tiny family's unit: VAE factor 2, x2 for SD3's patches and FLUX's 2x2 packing,
# and SDXL's pipeline's hard-coded 8.
SIZE = 32


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny pipeline per family (save_pretrained layout), built once for the module."""
    from cad import tiny

    root = tmp_path_factory.mktemp("family-models")
    out = {}
    for family, (_, builder) in FAMILIES.items():
        folder = root / family
        getattr(tiny, builder)(0, image_size=SIZE).save_pretrained(folder)
        out[family] = folder
    return out


@pytest.fixture(scope="module")
def erased_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """An "erased" denoiser per family for amplify_erased: another seed's weights as a diffusers-named
    safetensors state dict (the form ESD/UCE/RECE/ConceptPrune release)."""
    from safetensors.torch import save_file

    from cad import tiny
    from cad.backbones import denoiser_of

    root = tmp_path_factory.mktemp("family-checkpoints")
    out = {}
    for family, (_, builder) in FAMILIES.items():
        denoiser = denoiser_of(getattr(tiny, builder)(1, image_size=SIZE))
        out[family] = root / f"{family}-erased.safetensors"
        save_file({k: v.contiguous() for k, v in denoiser.state_dict().items()}, str(out[family]))
    return out


@pytest.fixture()
def env(tmp_path, monkeypatch, data_dir):
    """Offline, a fresh outputs root, and an empty torch hub cache (no metric weights anywhere)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CAD_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CAD_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "outputs"


def _config(family: str, folder: Path, experiment: str, *extra: str) -> dict:
    option = FAMILIES[family][0]
    return compose_config([f"experiment={experiment}", f"model={option}", f"model.id={folder}",
                           f"model.resolution={SIZE}", "model.steps=2", "model.dtype=float32", "attribution.steps=2",
                           "device=cpu", "generation.limit=2", "generation.batch_size=2", *extra])


def _folder_images(payload: dict, bench: str) -> dict[str, list[np.ndarray]]:
    out = {}
    for variant, folder in payload["images"][bench].items():
        pngs = sorted(Path(folder).glob("*.png"))
        out[variant] = [np.asarray(Image.open(p).convert("RGB")) for p in pngs]
    return out


def _check_images(payload: dict, bench: str, n: int) -> dict[str, list[np.ndarray]]:
    images = _folder_images(payload, bench)
    assert set(images) == {"original", "edited"}
    for variant, arrays in images.items():
        assert len(arrays) == n, (variant, len(arrays))
        assert all(a.shape == (SIZE, SIZE, 3) for a in arrays), [a.shape for a in arrays]
    return images


@pytest.mark.parametrize("family", list(FAMILIES))
def test_offline_experiments_run_end_to_end(family, model_folders, erased_checkpoints, env, tmp_path):
    folder = model_folders[family]

    # nudity_erasure as configured (I2P with its per-prompt seeds and guidance, NudeNet), without the COCO
    # retention benchmark (FID needs InceptionV3 and a reference folder; see the preflight test below).
    cfg = _config(family, folder, "nudity_erasure", "retain.coco30k=null", "method.controls=[]")
    assert cfg["model"]["family"] == family
    out = run_from_config(cfg, tmp_path / "nudity")
    assert out["run"]["model"] == FAMILIES[family][0] and out["run"]["concept"] == "nudity"
    assert out["edits"]["edited"]["n_ablated"] > 0
    for variant in ("original", "edited"):
        assert 0.0 <= out["metrics"][variant]["i2p/nudenet_image_share"] <= 1.0
    _check_images(out, "i2p@v1", 2)
    written = json.loads((tmp_path / "nudity" / "metrics.json").read_text())
    assert written["run"]["scores_path"] and Path(written["run"]["scores_path"], "scores.safetensors").is_file()

    # amplify (CAD-Amplify: J_amplify on concept images the model renders itself) scored by NudeNet.
    cfg = _config(family, folder, "amplify", "concept=nudity", "benchmark=ring_a_bell", "method.ratio=0.05")
    out = run_from_config(cfg, tmp_path / "amplify")
    assert out["run"]["method"] == "cad_amplify"
    assert out["edits"]["edited"]["n_ablated"] > 0
    images = _check_images(out, "ring_a_bell@v1", 2)
    assert any(not np.array_equal(a, b) for a, b in zip(images["original"], images["edited"]))
    assert set(out["metrics"]) == {"original", "edited"}

    # amplify_erased (Table 6): CAD-Amplify on an erased denoiser loaded over the base model (model.checkpoint).
    ckpt = erased_checkpoints[family]
    cfg = _config(family, folder, "amplify_erased", f"model.checkpoint={ckpt}", "method.ratio=0.05")
    out = run_from_config(cfg, tmp_path / "amplify_erased")
    assert out["run"]["model"].startswith(f"{FAMILIES[family][0]}+{ckpt.stem}-")  # its own cache key
    assert out["edits"]["edited"]["n_ablated"] > 0
    _check_images(out, "i2p@v1", 2)

    # fidelity (the paper's Fig. 2): random ablations, measured against predicted J_erase changes.
    cfg = _config(family, folder, "fidelity", "fidelity.n_ablations=3", "fidelity.ratios=[0.05]")
    out = run_from_config(cfg, tmp_path / "fidelity")
    r = out["metrics"]["random"]["fidelity/pearson_r"]
    assert np.isnan(r) or -1.0 <= r <= 1.0
    points = json.loads((tmp_path / "fidelity" / "fidelity_points.json").read_text())["points"]
    assert len(points) == 3 and all(p["n_ablated"] > 0 for p in points)
    assert (tmp_path / "fidelity" / "fidelity_scatter.png").is_file()


# experiment, extra overrides, what the preflight error must name
NEEDS_WEIGHTS = [
    ("object_erasure", (), ("ResNet-50",)),
    ("amplify", (), ("ResNet-50",)),
    ("artist_erasure", (), ("open_clip", "LPIPS AlexNet")),  # whichever of its two metrics is missing first
    ("nudity_erasure", ("method.controls=[]",), ("InceptionV3",)),  # COCO retention's FID (a reference is given)
]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_experiments_needing_metric_weights_stop_at_the_preflight(family, model_folders, env, tmp_path):
    folder = model_folders[family]
    reference = tmp_path / "coco-reference"
    reference.mkdir()
    Image.new("RGB", (8, 8)).save(reference / "0.png")
    for experiment, extra, names in NEEDS_WEIGHTS:
        # an even cut: generation.limit=2 would keep only tench, a config error that now stops before the assets
        overrides = [*extra, "generation.limit=null", "generation.per_label=1"]
        if experiment == "nudity_erasure":
            overrides.append(f"retain.coco30k.meta.fid_reference={reference}")
        cfg = _config(family, folder, experiment, *overrides)
        with pytest.raises(ConfigError) as raised:
            check_run(cfg)
        message = str(raised.value)
        assert "weights" in message and any(n in message for n in names), (experiment, message)
        # everything before the asset checklist passes: the error is the checklist, and only metric weights are in it
        assert isinstance(raised.value, PreflightError), message
        assert all("metric" in c.what for c in raised.value.checks), message
        # the runner stops with the same error before loading the model or rendering anything
        with pytest.raises(ConfigError, match="weights"):
            run_from_config(cfg, tmp_path / experiment)
        assert not env.exists() or not any((env / d).exists() for d in ("images", "attributions", "edits"))
        assert not (tmp_path / experiment / "metrics.json").exists()


# family -> (a size its tiny pipeline's VAE factor 2 accepts but its diffusers pipeline does not, the unit)
BAD_TINY_SIZE = {"sd": (20, 8), "sdxl": (20, 8), "sd3": (34, 4), "flux": (34, 4)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_resolution_the_family_cannot_render_stops_before_the_model_loads(family, model_folders, env, tmp_path):
    """Without this check SD 3 fails inside attribution with a shape mismatch, SD/SDXL after attribution in
    the pipeline's check_inputs, and FLUX silently renders another size than model.resolution."""
    size, unit = BAD_TINY_SIZE[family]
    cfg = _config(family, model_folders[family], "nudity_erasure", "retain.coco30k=null", f"model.resolution={size}")
    with pytest.raises(ConfigError, match=f"model.resolution={size} is not a multiple of {unit} "):
        run_from_config(cfg, tmp_path / "run")
    assert not env.exists()
    # the released models (hub ids, VAE factor 8): SD 3.5 and FLUX need multiples of 16
    if family in ("sd3", "flux"):
        hub = compose_config([f"model={FAMILIES[family][0]}", "concept=church", "model.resolution=1000"])
        with pytest.raises(ConfigError, match="multiple of 16 .*e.g. 992 or 1008"):
            check_run(hub)
