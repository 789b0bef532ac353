"""Prompt-file resolution: local folders, env, cache, sha256-checked download, and clear errors."""

from __future__ import annotations

import shutil

import pytest

from evaluation.data import (
    PROMPT_FILES,
    PromptDataError,
    PromptFileNotFound,
    read_rows,
    resolve_prompt_file,
    sha256_of,
)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test reads the user's cache or env data dir."""
    monkeypatch.delenv("CAD_DATA_DIR", raising=False)
    monkeypatch.setenv("CAD_CACHE_DIR", str(tmp_path / "cache"))


def test_pinned_checksums_match_shared_data(data_dir):
    for name, digest in PROMPT_FILES.items():
        assert sha256_of(data_dir / name) == digest, name


def test_resolution_order_data_dir_env_cache(data_dir, tmp_path, monkeypatch):
    assert resolve_prompt_file("imagenette.csv", data_dir) == data_dir / "imagenette.csv"
    monkeypatch.setenv("CAD_DATA_DIR", str(data_dir))
    assert resolve_prompt_file("imagenette.csv") == data_dir / "imagenette.csv"
    # explicit data_dir beats the env
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(data_dir / "imagenette.csv", other)
    assert resolve_prompt_file("imagenette.csv", other) == other / "imagenette.csv"
    monkeypatch.delenv("CAD_DATA_DIR")
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(data_dir / "big_artist_prompts.csv", cache)
    assert resolve_prompt_file("big_artist_prompts.csv") == cache / "big_artist_prompts.csv"


def test_download_verifies_and_caches_atomically(data_dir, tmp_path):
    url = (data_dir / "small_imagenet_prompts.csv").as_uri()
    got = resolve_prompt_file("small_imagenet_prompts.csv", url=url)
    assert got == tmp_path / "cache" / "small_imagenet_prompts.csv"
    assert got.read_bytes() == (data_dir / "small_imagenet_prompts.csv").read_bytes()
    assert [p.name for p in got.parent.iterdir()] == ["small_imagenet_prompts.csv"]  # no temp files left
    # second call is served by the cache even with a dead URL
    assert resolve_prompt_file("small_imagenet_prompts.csv", url="file:///nonexistent/x.csv") == got


def test_download_with_wrong_bytes_caches_nothing(data_dir, tmp_path):
    url = (data_dir / "kelly_prompts.csv").as_uri()
    with pytest.raises(PromptDataError, match="sha256"):
        resolve_prompt_file("vangogh_prompts.csv", url=url)
    assert not (tmp_path / "cache" / "vangogh_prompts.csv").exists()


def test_local_checksum_mismatch_is_a_clear_error(data_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "imagenette.csv").write_text("case_number,prompt,class,evaluation_seed\n0,x,tench,1\n")
    with pytest.raises(PromptDataError, match=r"pinned to 45ea8e7e.*raw\.githubusercontent"):
        resolve_prompt_file("imagenette.csv", bad)


def test_missing_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(PromptFileNotFound, match=r"CAD_DATA_DIR.*cache"):
        resolve_prompt_file("coco_30k.csv", tmp_path, download=False)
    with pytest.raises(PromptFileNotFound, match=r"download from file:///nonexistent.*CAD_DATA_DIR"):
        resolve_prompt_file("coco_30k.csv", tmp_path, url="file:///nonexistent/coco_30k.csv")
    with pytest.raises(PromptFileNotFound, match="no pinned URL"):
        resolve_prompt_file("my_prompts.csv", tmp_path)
    with pytest.raises(PromptDataError, match="bare file name"):
        resolve_prompt_file("../imagenette.csv", tmp_path)


def test_read_rows_keeps_quoted_commas_and_newlines(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(',case_number,prompt,evaluation_seed\n0,0,"a, b",1\n1,1,"two\nlines",2\n')
    rows = read_rows(path)
    assert [r["prompt"] for r in rows] == ["a, b", "two\nlines"]
    assert rows[0][""] == "0"  # the unnamed index column
    nohead = tmp_path / "n.csv"
    nohead.write_text('plain prompt\n"quoted, with comma"\n\n')
    assert read_rows(nohead, header=False) == [{"prompt": "plain prompt"}, {"prompt": "quoted, with comma"}]


@pytest.mark.parametrize("text, match", [
    ("", "is empty"),
    ("case_number,prompt\n", "no prompt rows"),
    ("case_number,prompt\n0,a,extra\n", r"row 1: 3 fields"),
])
def test_read_rows_malformed(tmp_path, text, match):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(PromptDataError, match=match):
        read_rows(path)
