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


@pytest.fixture(params=[0o022, 0o002])
def umask(request):
    """The process umask set for one test (022: the usual default; 002: a group-shared cluster folder)."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_atomic_writes_honour_the_umask(tmp_path, umask):
    """mkstemp's private 0600 must not survive os.replace: every artifact gets 0666 & ~umask, as open() gives."""
    import stat

    import torch
    from PIL import Image

    from cad import Edit
    from cad.io import atomic_save_image, atomic_write_json, current_umask
    from cad.scores import AttributionScores

    assert current_umask() == umask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what the OS gives a new file under this umask
    atomic_write_bytes(tmp_path / "blob.bin", b"1")
    atomic_write_json(tmp_path / "meta.json", {"a": 1})
    atomic_save_image(tmp_path / "item.png", Image.new("RGB", (2, 2)))
    scores = AttributionScores({"w": torch.ones(2, 3)}, {"model_id": "toy"}).save(tmp_path / "scores")
    edit = Edit({"w": torch.tensor([[True, False, False], [False, False, True]])}, {})
    edit.save(tmp_path / "edit")
    written = [tmp_path / "blob.bin", tmp_path / "meta.json", tmp_path / "item.png",
               *sorted(scores.iterdir()), *sorted((tmp_path / "edit").iterdir())]
    want = 0o666 & ~umask
    assert stat.S_IMODE(plain.stat().st_mode) == want
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_exported_pipeline_folder_honours_the_umask(tmp_path, tiny_pipe, umask):
    """export_edited_pipeline builds its folder with mkdtemp (0700) and renames it: it gets 0777 & ~umask."""
    import stat

    import torch

    from cad import Edit
    from cad.edits import export_edited_pipeline

    name = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight"
    w = dict(tiny_pipe.unet.named_parameters())[name]
    edit = Edit({name: torch.zeros(w.shape, dtype=torch.bool)}, {})
    folder = export_edited_pipeline(tiny_pipe, edit, tmp_path / "exported")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((folder / "cad_edit.json").stat().st_mode) == 0o666 & ~umask
