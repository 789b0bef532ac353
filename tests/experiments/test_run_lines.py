"""A run says, before its first image, how many images each variant renders and how many the cache holds."""

from __future__ import annotations

import logging
import re

from experiments.config import compose_config
from experiments.run import run_from_config


def _counts(caplog) -> dict[str, tuple[int, int]]:
    out = {}
    for r in caplog.records:
        m = re.match(r"images (\S+) \[(\S+)\]: (\d+) to render, (\d+) already cached", r.getMessage())
        if m:
            out[m.group(2)] = (int(m.group(3)), int(m.group(4)))
    return out


def test_first_lines_count_images_to_render_and_cached(micro, toy, tmp_path, caplog):
    cfg = compose_config(micro)
    with caplog.at_level(logging.INFO, logger="cad.experiments"):
        run_from_config(cfg, tmp_path / "first")
    first = _counts(caplog)
    assert set(first) == {"original", "edited", "random-0"}
    n = first["original"][0]
    assert n > 0 and all(v == (n, 0) for v in first.values())  # nothing cached yet
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cad.experiments"):
        run_from_config(cfg, tmp_path / "again")
    assert _counts(caplog) == {v: (0, n) for v in first}  # a rerun renders nothing
