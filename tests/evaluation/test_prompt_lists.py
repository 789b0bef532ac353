"""Your own prompt list by path: CSV (columns found by name), plain text, a yaml anywhere; the file's sha256 in
the benchmark's meta; clear errors for a missing, empty or unreadable file."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from cad.generate import image_dir
from evaluation.benchmarks import CONF_DIR, load_benchmark
from evaluation.data import PromptDataError, PromptFileNotFound

SPEC = yaml.safe_load((CONF_DIR / "file.yaml").read_text())  # the `file` option, before benchmark.path=...


def _by_path(path, **kw):
    return load_benchmark({**SPEC, "path": str(path), **kw})


def test_csv_columns_found_by_name_and_missing_seeds_from_the_row(tmp_path):
    path = tmp_path / "Pikachu prompts!.csv"
    path.write_text("case_number,text,class,evaluation_seed\n7,pikachu in a field,pikachu,42\n9,\"pikachu, "
                    "smiling\",pikachu,\n")
    b = _by_path(path, seed_base=100)
    assert b.name == "Pikachu_prompts" and b.key == "Pikachu_prompts@v1"
    assert [(i.id, i.prompt, i.seed, i.label) for i in b] == [
        ("0007", "pikachu in a field", 42, "pikachu"), ("0009", "pikachu, smiling", 101, "pikachu")]
    assert b.meta["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert b.meta["source"]["path"] == str(path.resolve()) and b.meta["metrics"] == SPEC["metrics"]
    assert _by_path(path, name="mine").name == "mine"
    # explicit columns win over the names found
    other = tmp_path / "o.csv"
    other.write_text("q,s\na cat,3\n")
    assert [(i.prompt, i.seed) for i in _by_path(other, columns={"prompt": "q", "seed": "s"})] == [("a cat", 3)]


def test_plain_text_one_prompt_per_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat, sleeping\n\n  a dog  \n")
    b = _by_path(path, seed_base=5)
    assert [(i.id, i.prompt, i.seed, i.label) for i in b] == [("0000", "a cat, sleeping", 5, None),
                                                               ("0001", "a dog", 6, None)]


def test_a_yaml_anywhere_finds_its_file_beside_it_and_shipped_files_by_name(tmp_path, data_dir, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "list.txt").write_text("a cat\n")
    spec = tmp_path / "mine.yaml"
    spec.write_text("name: mine\nversion: 3\nsource: {file: sub/list.txt, format: lines}\nmetrics: [clip_score]\n")
    b = _by_path(spec)
    assert (b.key, [i.prompt for i in b], b.meta["metrics"]) == ("mine@v3", ["a cat"], ["clip_score"])
    assert load_benchmark(spec).key == "mine@v3"  # the yaml path itself, as before
    shipped = tmp_path / "nette.yaml"
    shipped.write_text("name: nette\nversion: 1\nsource: {file: imagenette.csv}\n"
                       "columns: {id: case_number, prompt: prompt, seed: evaluation_seed, label: class}\n")
    monkeypatch.setenv("CAD_DATA_DIR", str(data_dir))
    nette = _by_path(shipped, limit=3)
    assert len(nette) == 3 and "path" not in nette.meta["source"]  # found by name, pinned by PROMPT_FILES
    assert nette.items == load_benchmark("imagenette", data_dir, limit=3).items


def test_an_edited_file_never_reuses_the_old_images(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n")
    sampler = {"steps": 3, "guidance": 4.0}
    before = image_dir(tmp_path, "toy", None, sampler, _by_path(path))
    path.write_text("a dog\n")
    after = _by_path(path)
    assert image_dir(tmp_path, "toy", None, sampler, after) != before and after.key == "p@v1"


@pytest.mark.parametrize("make, error, message", [
    (lambda p: None, PromptFileNotFound, "no such file"),
    (lambda p: p.write_text(""), PromptDataError, "is empty"),
    (lambda p: p.mkdir(), PromptDataError, "is not a file"),
    (lambda p: p.write_text("\n \n"), PromptDataError, "no prompts"),
])
def test_missing_empty_or_unreadable_lists_say_what_to_do(tmp_path, make, error, message):
    path = tmp_path / "p.txt"
    make(path)
    with pytest.raises(error, match=message):
        _by_path(path)


def test_wrong_kinds_of_file(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("words,seed\na cat,1\n")
    with pytest.raises(PromptDataError, match="no prompt column"):
        _by_path(csv)
    other = tmp_path / "p.json"
    other.write_text("[]")
    with pytest.raises(PromptDataError, match="unknown kind of file"):
        _by_path(other)
    with pytest.raises(ValueError, match="benchmark.path="):
        load_benchmark(SPEC)
