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


# Kernel settings of the session, for `make test-portable` (a test must not pass only on the machine it was
# written on):
#   CAD_TEST_THREADS=<n>            torch intra-op threads (default 1, see _torch_kernels)
#   CAD_TEST_MKLDNN=1 | 0 | mixed   oneDNN on (default), off, or chosen per module instance (MixedKernels)
MKLDNN_MODES = ("1", "0", "mixed")


def kernel_settings() -> tuple[int, str]:
    """(threads, oneDNN mode) from the environment; bad values stop the session before any test runs."""
    threads, mkldnn = os.environ.get("CAD_TEST_THREADS", "1"), os.environ.get("CAD_TEST_MKLDNN", "1")
    if not threads.isdigit() or int(threads) < 1:
        raise pytest.UsageError(f"CAD_TEST_THREADS={threads!r}: give a positive integer, e.g. CAD_TEST_THREADS=2")
    if mkldnn not in MKLDNN_MODES:
        raise pytest.UsageError(f"CAD_TEST_MKLDNN={mkldnn!r}: give one of {', '.join(MKLDNN_MODES)}")
    return int(threads), mkldnn


class MixedKernels:
    """Global module hooks giving every nn.Module instance its own fixed, seeded choice of oneDNN on or off.

    One object always runs the same kernels, so the same computation twice stays bit-identical (as an edit's
    restore must be); two separately built, loaded or copied models run different kernels, as they may on
    another machine (another SIMD path, another memory alignment of loaded weights), so an exact comparison of
    what they compute fails here on any machine instead of only on some CI host. Code outside any module's
    forward (and every backward) runs with oneDNN on, and so does everything while `paused` (tests marked
    same_kernels).
    """

    active: MixedKernels | None = None  # the session's, for the same_kernels fixture

    def __init__(self, seed: int = 0) -> None:
        import random
        import weakref

        self._rng, self._choice, self._stack = random.Random(seed), weakref.WeakKeyDictionary(), []
        self._handles, self.paused = [], False

    def __enter__(self) -> MixedKernels:
        from torch.nn.modules import module

        self._handles = [module.register_module_forward_pre_hook(self._enter_module),
                         module.register_module_forward_hook(self._leave_module, always_call=True)]
        self._outer, MixedKernels.active = MixedKernels.active, self
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._stack.clear()
        torch.backends.mkldnn.enabled, MixedKernels.active = True, self._outer

    def _enter_module(self, mod, args) -> None:
        choice = self._choice.get(mod)
        if choice is None:
            choice = self._choice[mod] = self._rng.random() < 0.5
        self._stack.append(torch.backends.mkldnn.enabled)
        torch.backends.mkldnn.enabled = choice or self.paused

    def _leave_module(self, mod, args, output) -> None:
        torch.backends.mkldnn.enabled = self._stack.pop() if self._stack else True


def pytest_configure(config) -> None:
    kernel_settings()  # a mistyped CAD_TEST_* fails here, not after minutes of tests
    config.addinivalue_line(
        "markers", "same_kernels(reason): the contract is run-to-run determinism on one machine (two separately "
        "built models compute bit for bit alike); CAD_TEST_MKLDNN=mixed runs the test with one kernel choice")


def pytest_report_header(config) -> str:
    threads, mkldnn = kernel_settings()
    return f"cad kernels: torch threads {threads}, oneDNN {dict(zip(MKLDNN_MODES, ('on', 'off', 'mixed')))[mkldnn]}"


@pytest.fixture(scope="session", autouse=True)
def _torch_kernels():
    """Single-threaded torch for the whole session, unless CAD_TEST_THREADS / CAD_TEST_MKLDNN say otherwise.

    On a small shared CPU, torch's intra-op thread pool oversubscribes the cores and tiny UNet calls slow
    down by tens of times; one thread is both faster and deterministic here.
    """
    threads, mkldnn = kernel_settings()
    before = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(threads)
    if mkldnn == "mixed":
        with MixedKernels():
            yield
    else:
        torch.backends.mkldnn.enabled = mkldnn == "1"
        yield
    torch.set_num_threads(before[0])
    torch.backends.mkldnn.enabled = before[1]


@pytest.fixture()
def kernel_mixer() -> type[MixedKernels]:
    """The MixedKernels class (its `active` instance is the session's under CAD_TEST_MKLDNN=mixed)."""
    return MixedKernels


@pytest.fixture(autouse=True)
def _same_kernels(request, _torch_kernels):
    """Tests marked same_kernels run with one kernel choice for every module, even under mixed kernels."""
    mixed = MixedKernels.active
    if mixed is None or request.node.get_closest_marker("same_kernels") is None:
        yield
        return
    mixed.paused = True
    try:
        yield
    finally:
        mixed.paused = False


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
