"""Storage faults: a full disk, a read-only folder or no permission give the path and the fix, never a half file;
names that reach the file system are never paths."""

from __future__ import annotations

import errno
import os

import pytest

from cad.io import ArtifactWriteError, UnsafeNameError, atomic_write_bytes, safe_name


@pytest.mark.parametrize(("code", "fix"), [(errno.ENOSPC, "free space"), (errno.EROFS, "read-only"),
                                            (errno.EACCES, "writable")])
def test_storage_errors_name_the_path_and_fix_and_leave_no_half_file(tmp_path, monkeypatch, code, fix):
    target = tmp_path / "scores.safetensors"
    target.write_bytes(b"old complete content")

    def failing_fsync(fd):  # the data was partly written into the temp file when the disk fills
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(ArtifactWriteError) as err:
        atomic_write_bytes(target, b"new content " * 1000)
    assert str(target) in str(err.value) and fix in str(err.value)
    assert err.value.errno == code and isinstance(err.value, OSError)
    assert target.read_bytes() == b"old complete content"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.safetensors"]  # no temp file left


def test_other_os_errors_pass_through(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError) as err:
        atomic_write_bytes(tmp_path / "x", b"1")
    assert not isinstance(err.value, ArtifactWriteError) and err.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["../../../x", "..", "a/b", "a\\b", "/etc", "x/../y", "", ".hidden", "-rf",
                                 "a..b", "nul\x00"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(UnsafeNameError, match="concept.name"):
        safe_name(bad, "concept.name")


@pytest.mark.parametrize("good", ["church", "sd14", "toy+ckpt-1a2b", "imagenette@v1", "van_gogh", "a.b"])
def test_plain_names_pass(good):
    assert safe_name(good, "x") == good
