"""Shared fixtures: offline environment, tiny real pipelines, the shared prompt data directory."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never reach a hub or W&B: set before any library reads them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_PROMPTS = REPO.parent / "shared" / "data" / "prompts"


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Single-threaded torch for the whole session.

    On a small shared CPU, torch's intra-op thread pool oversubscribes the cores and tiny UNet calls slow
    down by tens of times; one thread is both faster and deterministic here.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local prompt-file folder: $CAD_DATA_DIR, else ../shared/data/prompts (CI), else the cad cache,
    filled by sha256-checked downloads (a developer's clone with internet and no shared/ folder)."""
    path = Path(os.environ.get("CAD_DATA_DIR", SHARED_PROMPTS)).expanduser().resolve()
    if path.is_dir():
        return path
    from evaluation.data import PROMPT_FILES, PromptDataError, cache_dir, resolve_prompt_file

    try:
        for name in PROMPT_FILES:
            resolve_prompt_file(name)
    except PromptDataError as err:
        pytest.fail(f"prompt data folder {path} not found and the files could not be fetched ({err}); "
                    "set CAD_DATA_DIR to the folder holding imagenette.csv etc.")
    return cache_dir()


@pytest.fixture(scope="session")
def tiny_pipe_factory():
    """Build fresh tiny pipelines (seeded) so a test may mutate its own copy."""
    from cad.tiny import build_tiny_pipeline

    def make(seed: int = 0, **kw):
        return build_tiny_pipeline(seed, **kw)

    return make


@pytest.fixture()
def tiny_pipe(tiny_pipe_factory):
    """A fresh randomly initialised tiny StableDiffusionPipeline (fp32, CPU)."""
    torch.manual_seed(0)
    return tiny_pipe_factory(0)


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory, tiny_pipe_factory) -> Path:
    """A tiny pipeline saved with save_pretrained: the same folder layout as an SD hub snapshot."""
    out = tmp_path_factory.mktemp("tiny-sd")
    tiny_pipe_factory(0).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def micro_kit(tmp_path_factory):
    """A toy kit trained with the "micro" recipe (seconds) into a tmp dir: real pipeline folder, classifier,
    open_clip CLIP and FID features, with the same API as the committed kit (cad.toy.kit.load_kit)."""
    from cad.toy.kit import train_kit

    return train_kit(tmp_path_factory.mktemp("toy-kit") / "kit", "micro", progress=False, measure=False)


# Runner overrides at micro size, for tests of the runner's mechanics on the micro kit: the kit samples with 3
# steps, 2 items per class keep every variant a few seconds, and attribution.steps=3 (the first 3 of
# protocol=reference's 50-step schedule) keeps the attribution cheap.
MICRO_RUN = ("model.steps=3", "model.guidance=4.0", "attribution.steps=3", "generation.per_label=2",
             "generation.batch_size=12")


@pytest.fixture()
def micro():
    """The micro-size runner overrides (MICRO_RUN) as a fresh list to extend."""
    return list(MICRO_RUN)


@pytest.fixture()
def outputs(tmp_path, monkeypatch):
    """A temporary outputs root for everything a run writes."""
    out = tmp_path / "outputs"
    monkeypatch.setenv("CAD_OUTPUTS", str(out))
    return out


@pytest.fixture()
def toy(micro_kit, outputs, monkeypatch):
    """Runs on the micro kit (model=toy loads it through $CAD_TOY_KIT), writing under `outputs`."""
    monkeypatch.setenv("CAD_TOY_KIT", str(micro_kit.path))
    return outputs
