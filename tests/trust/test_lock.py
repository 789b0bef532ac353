"""The locked dependency set: the repo's lock file is a valid pip constraints file of the tested versions, leaves
torch to the user, and every artifact's package_versions() records its hash and any drift from it."""

from __future__ import annotations

import re
from importlib import metadata

from cad.io import LOCK_FILE, lock_record, package_versions


def _pins(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[a-z0-9-]+", name) and version, f"not a pin: {line!r}"
            out[name] = version
    return out


def test_repo_lock_pins_the_projects_dependencies_but_not_torch():
    pins = _pins(LOCK_FILE.read_text())
    for needed in ("diffusers", "transformers", "hydra-core", "open-clip-torch", "torchmetrics", "nudenet",
                   "safetensors", "numpy", "pytest"):
        assert needed in pins, needed
    # the user's CUDA build of torch decides these
    assert not {n for n in pins if n in ("torch", "torchvision", "triton") or n.startswith(("nvidia-", "cuda-"))}
    assert "cad-attribution" not in pins


def test_lock_record_names_hash_and_drift(tmp_path):
    installed = metadata.version("numpy")
    lock = tmp_path / "lock.txt"
    lock.write_text(f"# header\nnumpy=={installed}\nsafetensors==0.0.1  # a stale pin\nno-such-package-xyz==1.0\n")
    record = lock_record(lock)
    assert re.fullmatch(r"[0-9a-f]{16}", record["lock"])
    drift = record["lock_drift"].split("; ")
    assert drift == [f"safetensors {metadata.version('safetensors')} (lock 0.0.1)",
                     "no-such-package-xyz absent (lock 1.0)"]
    lock.write_text(f"numpy=={installed}\n")
    assert lock_record(lock)["lock_drift"] == "none"
    assert lock_record(tmp_path / "absent.txt") == {}  # installed without the repo: nothing to compare with


def test_package_versions_record_the_lock():
    versions = package_versions()
    assert versions["lock"] == lock_record()["lock"]
    assert "lock_drift" in versions
