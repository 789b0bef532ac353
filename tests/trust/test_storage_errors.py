"""Every storage error of cad's writers names the file it hit and the cause: a file over the file size limit
(EFBIG, a bare `File too large` before) included, and errors cad has no advice for still carry the path."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cad.io import ArtifactWriteError, atomic_write_bytes

REPO = Path(__file__).resolve().parents[2]


def test_file_too_large_names_the_path_and_the_limit(tmp_path, monkeypatch):
    target = tmp_path / "scores.safetensors"

    def too_large(fd):
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    monkeypatch.setattr(os, "fsync", too_large)
    with pytest.raises(ArtifactWriteError) as err:
        atomic_write_bytes(target, b"x" * 100)
    msg = str(err.value)
    assert str(target) in msg and "file size limit" in msg and "ulimit -f" in msg, msg
    assert err.value.errno == errno.EFBIG and err.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_an_error_without_advice_still_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    target = tmp_path / "meta.json"
    with pytest.raises(OSError) as err:
        atomic_write_bytes(target, b"{}")
    assert err.value.errno == errno.EIO and str(target) in str(err.value)


_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
# a real `ulimit -f`: the kernel answers a write past it with EFBIG once SIGXFSZ (which kills by default) is ignored
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
from cad.io import ArtifactWriteError, atomic_write_bytes
from experiments.results import append_rows
out = Path(sys.argv[1])
for what, write in (("artifact", lambda: atomic_write_bytes(out / "edit.safetensors", b"x" * (1 << 17))),
                    ("results", lambda: append_rows(out / "results.jsonl", [{"value": "x" * (1 << 17)}]))):
    try:
        write()
    except ArtifactWriteError as err:
        print(what, err.errno, err)
    else:
        print(what, "written")
"""


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="RLIMIT_FSIZE and SIGXFSZ are POSIX")
def test_a_real_file_size_limit(tmp_path):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_UNDER_A_FILE_SIZE_LIMIT), str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    for what, name in (("artifact", "edit.safetensors"), ("results", "results.jsonl")):
        assert lines[what].startswith(f"{errno.EFBIG} "), out.stdout
        assert str(tmp_path / name) in lines[what] and "file size limit" in lines[what], out.stdout
    # nothing half-written: no temp file, and no torn row in the results table
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["results.jsonl"]
    assert (tmp_path / "results.jsonl").read_bytes() == b""
