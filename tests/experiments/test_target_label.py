"""A target concept its benchmark has no label for is an error before the run starts, naming the benchmark
to choose; retention benchmarks of another kind are fine."""

from __future__ import annotations

import time

import pytest

from experiments.config import compose_config
from experiments.run import run_from_config
from experiments.validate import ConfigError, benchmark_labels, check_run, check_target_label


def test_toy_concept_of_another_kind_than_the_target_benchmark(outputs, tmp_path):
    cfg = compose_config(["concept=red"])  # a colour on the default toy_objects (shapes) benchmark
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        run_from_config(cfg, tmp_path / "run")
    assert time.perf_counter() - started < 5 and not (outputs / "attributions").exists()
    msg = str(err.value)
    assert "'red'" in msg and "toy_objects" in msg and "circle, square" in msg
    assert "choose benchmark=toy_colors" in msg
    # the same concept on its own benchmark passes
    assert check_run(compose_config(["concept=red", "benchmark=toy_colors"]))["name"] == "red"


def test_retention_benchmark_of_another_kind_is_fine():
    # nudity's toy twin: magenta on toy_colors (target), a shape-labelled benchmark scored for retention
    cfg = compose_config(["experiment=nudity_erasure"])
    assert "magenta" not in benchmark_labels(cfg["retain"]["coco30k"])
    assert check_run(cfg)["name"] == "magenta"


def test_real_concept_on_a_benchmark_without_its_class(data_dir):
    artists = compose_config(["benchmark=artists"])["benchmark"]
    assert benchmark_labels(artists, str(data_dir)) == ["Pablo Picasso", "Van Gogh", "Rembrandt", "Andy Warhol",
                                                         "Caravaggio"]
    church = {"name": "church", "kind": "object", "label": "church"}
    with pytest.raises(ConfigError, match="labels are: Pablo Picasso, Van Gogh.*choose benchmark=imagenette"):
        check_target_label(artists, church, str(data_dir))
    check_target_label(artists, {"name": "van_gogh", "label": "Van Gogh"}, str(data_dir))
    # a benchmark whose metrics do not split by label (NudeNet on I2P) needs no such class
    check_target_label(compose_config(["benchmark=i2p"])["benchmark"], church, str(data_dir))
