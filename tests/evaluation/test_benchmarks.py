"""Benchmark specs against the real prompt files, toy benchmarks, and errors for malformed files."""

from __future__ import annotations

import re

import pytest

from cad.toy.world import COLORS, SHAPES, STYLES
from evaluation.benchmarks import available_benchmarks, load_benchmark, load_spec
from evaluation.data import PromptDataError

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("CAD_DATA_DIR", raising=False)
    monkeypatch.setenv("CAD_CACHE_DIR", str(tmp_path / "cache"))


def test_every_config_loads_with_stable_safe_ids(data_dir):
    names = available_benchmarks()
    assert {"imagenette", "i2p", "ring_a_bell", "coco30k", "artists", "toy_objects", "toy_styles", "toy_colors",
            "toy_full"} <= set(names)
    for name in names:
        b = load_benchmark(name, data_dir)
        assert b.key == f"{b.name}@v{b.version}"
        ids = [i.id for i in b]
        assert len(set(ids)) == len(ids) and all(SAFE.match(i) for i in ids), name
        assert all(isinstance(i.seed, int) and i.seed >= 0 for i in b), name
        assert load_benchmark(name, data_dir).items == b.items  # deterministic


def test_imagenette(data_dir):
    b = load_benchmark("imagenette", data_dir)
    assert len(b) == 5000 and len(b.labels) == 10
    assert all(sum(i.label == c for i in b) == 500 for c in b.labels)
    first = b.items[0]
    assert (first.id, first.prompt, first.seed, first.label, first.guidance) == (
        "0000", "an image of a tench", 1174, "tench", None)
    small = load_benchmark("imagenette", data_dir, subset="small")
    assert len(small) == 500 and all(sum(i.label == c for i in small) == 50 for c in b.labels)
    # a subset selects items; it never changes them (images are shared with the full benchmark)
    assert set(small.items) <= set(b.items)
    assert load_benchmark("imagenette", data_dir, limit=7).items == b.items[:7]


def test_i2p_seeds_guidance_and_sexual_subset(data_dir):
    b = load_benchmark("i2p", data_dir)
    assert len(b) == 4703
    assert b.items[0].seed == 4261553411 and b.items[0].guidance == 13.0  # large int seeds survive
    assert all(i.guidance is not None for i in b)
    sexual = load_benchmark("i2p", data_dir, subset="sexual")
    assert len(sexual) == 931
    assert all("sexual" in [c.strip() for c in i.label.split(",")] for i in sexual)
    assert load_benchmark({**load_spec("i2p"), "subset": "sexual"}, data_dir).items == sexual.items


def test_ring_a_bell_headerless_with_quoted_multiline_prompt(data_dir):
    b = load_benchmark("ring_a_bell", data_dir)
    # 108 physical lines, 107 prompts: one quoted prompt spans two lines; quoted prompts keep their commas
    assert len(b) == 107
    assert b.items[0].prompt.startswith("nsfw desire")
    assert any("\n" in i.prompt for i in b)
    assert any(i.prompt.startswith("darylsculpt,)") for i in b)
    assert [i.seed for i in b] == list(range(107)) and {i.label for i in b} == {"nudity"}


def test_coco_artists(data_dir):
    coco = load_benchmark("coco30k", data_dir)
    assert len(coco) == 30000 and coco.items[0].id == "000000203564"
    assert [len(load_benchmark("coco30k", data_dir, subset=s)) for s in ("1k", "5k", "10k")] == [1000, 5000, 10000]
    art = load_benchmark("artists", data_dir)
    assert art.labels == ["Pablo Picasso", "Van Gogh", "Rembrandt", "Andy Warhol", "Caravaggio"]
    assert len(art) == 100


def test_toy_benchmarks_follow_world_vocabulary():
    objects = load_benchmark("toy_objects")
    n = load_spec("toy_objects")["source"]["seeds_per_prompt"]
    assert len(objects) == len(SHAPES) * n and objects.labels == list(SHAPES)
    assert objects.items[0].prompt == "a circle" and objects.items[0].id == "circle-000"
    assert len(load_benchmark("toy_styles")) == len(STYLES) * load_spec("toy_styles")["source"]["seeds_per_prompt"]
    colors = load_benchmark("toy_colors")
    assert colors.labels == list(COLORS) and colors.items[0].prompt == "a red shape"
    full = load_benchmark("toy_full")
    assert full.items[0].prompt == "a red solid circle"  # the renderer's caption order
    spec = load_spec("toy_objects")
    spec["source"] = {**spec["source"], "seeds_per_prompt": 3, "seed_base": 100}
    three = load_benchmark(spec)
    assert len(three) == 3 * len(SHAPES) and [i.seed for i in three.items[:3]] == [100, 101, 102]


def test_spec_from_omegaconf():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(load_spec("toy_colors"))
    assert load_benchmark(cfg, limit=5).items == load_benchmark("toy_colors").items[:5]


def _spec(file="p.csv", **kw):
    return {"name": "custom", "version": 1, "source": {"file": file},
            "columns": {"id": "case_number", "prompt": "prompt", "seed": "evaluation_seed"}, **kw}


@pytest.mark.parametrize("text, match", [
    ("", "is empty"),
    ("case_number,prompt,evaluation_seed\n", "no prompt rows"),
    ("case_number,prompt\n0,a cat\n", r"missing column\(s\) \['evaluation_seed'\]"),
    ("case_number,prompt,evaluation_seed\n0,a cat,1\n1,a dog,abc\n", r"p\.csv, row 2, column 'evaluation_seed': seed 'abc'"),
    ("case_number,prompt,evaluation_seed\n0,a cat,1.5\n", r"row 1, column 'evaluation_seed': seed '1.5' is not an integer"),
    ("case_number,prompt,evaluation_seed\n0,a cat,-3\n", "negative"),
    ("case_number,prompt,evaluation_seed\n0,a cat,1\n0,a dog,2\n", "occurs more than once"),
    ("case_number,prompt,evaluation_seed\na/b,a cat,1\n", "not filename-safe"),
    # a cell of spaces is refused; an empty cell is a deliberate empty prompt (I2P's row 2261)
    ("case_number,prompt,evaluation_seed\n0,a cat,1\n1,   ,2\n", r"row 2, column 'prompt': the prompt '   ' is whitespace"),
])
def test_malformed_prompt_files_give_clear_errors(tmp_path, text, match):
    (tmp_path / "p.csv").write_text(text)
    with pytest.raises(PromptDataError, match=match):
        load_benchmark(_spec(), tmp_path)


def test_empty_prompt_cell_is_kept_as_a_deliberate_empty_prompt(tmp_path):
    (tmp_path / "p.csv").write_text("case_number,prompt,evaluation_seed\n0,a cat,1\n1,,2\n")
    assert [i.prompt for i in load_benchmark(_spec(), tmp_path)] == ["a cat", ""]


def test_custom_file_float_seed_and_bad_guidance(tmp_path):
    (tmp_path / "p.csv").write_text("case_number,prompt,evaluation_seed,g\n3,a cat,12.0,7\n10,a dog,5,\n")
    b = load_benchmark(_spec(columns={"id": "case_number", "prompt": "prompt", "seed": "evaluation_seed",
                                      "guidance": "g"}), tmp_path)
    assert [(i.id, i.seed, i.guidance) for i in b] == [("0003", 12, 7.0), ("0010", 5, None)]
    (tmp_path / "p.csv").write_text("case_number,prompt,evaluation_seed,g\n3,a cat,12,high\n")
    with pytest.raises(PromptDataError, match="column 'g': guidance 'high'"):
        load_benchmark(_spec(columns={"prompt": "prompt", "guidance": "g"}), tmp_path)


def test_bad_specs(data_dir):
    with pytest.raises(ValueError, match="unknown benchmark 'nope'.*imagenette"):
        load_benchmark("nope", data_dir)
    with pytest.raises(ValueError, match="no subset 'x'.*sexual"):
        load_benchmark("i2p", data_dir, subset="x")
    with pytest.raises(ValueError, match="unknown keys"):
        load_benchmark({**load_spec("artists"), "colums": {}}, data_dir)
    with pytest.raises(ValueError, match="limit must be a positive"):
        load_benchmark("artists", data_dir, limit=0)
    with pytest.raises(ValueError, match="toy template"):
        load_benchmark({"name": "t", "version": 1, "source": {"generator": "toy", "template": "a {size}"}})
    with pytest.raises(ValueError, match="whitespace only"):
        load_benchmark({"name": "t", "version": 1, "source": {"generator": "toy", "template": "   "}})
