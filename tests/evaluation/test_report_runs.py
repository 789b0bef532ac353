"""The report over rows a real (micro toy) run wrote: amplify_erased rows record their erase method, and
the report lays them out as the paper's Table 6."""

from __future__ import annotations

from evaluation.report import load_results, markdown_tables
from experiments.config import compose_config
from experiments.run import run_from_config


def test_amplify_erased_rows_make_table6(micro, toy, tmp_path):
    cfg = compose_config(micro + ["experiment=amplify_erased", "erase_method=uce", "attribution.num_images=4",
                                  "method.controls=[]"])
    run_from_config(cfg, tmp_path / "run")
    rows = load_results(toy / "results.jsonl")
    assert {r["variant"] for r in rows} == {"original", "erased", "edited"}
    assert {r["erase_method"]["name"] for r in rows} == {"uce"}
    md = markdown_tables(rows)
    header = next(line for line in md.splitlines() if line.startswith("| erase method"))
    assert "magenta acc_target ↑ base | magenta acc_target ↑ erased | magenta acc_target ↑ recalled" in header
    assert "n=12" in md and "| uce |" in md  # 6 colours x generation.per_label=2
