"""Report tables grouped by what produced them: sizes never averaged, reruns superseded, protocols apart, the
paper's Table 1 and Table 6 layouts, per-class keys in their own section, Pareto lines per concept and method."""

from __future__ import annotations

import pytest

import evaluation.report as report
from evaluation import report_tables as rt
from evaluation.report import markdown_tables, pareto_plots, pareto_series, wide_tables, write_report
from experiments.results import append_rows, make_rows

WEIGHTS = "0752f76a36ac70bf043dc48cc297b88f"
SETTINGS = {"cad_erase": {"ratio": 0.01, "sign": "positive", "granularity": "tensor", "controls": [0]},
            "esd": {"variant": "xattn", "iterations": 1000, "lr": 1e-5},
            "uce": {"lamb": 0.1}, "cad_amplify": {"ratio": 0.05}}


def rows_of(concept, method, variant, metrics, *, n=500, name="reference", run_id=None, settings=None,
            experiment="object_erasure", benchmark="imagenette", erase_method=None, hib=None):
    """Real-shaped rows (experiments.results.make_rows) for one variant of one run on one benchmark."""
    settings = {"name": method, **(SETTINGS.get(method, {}) if settings is None else settings)}
    run = {"run_id": run_id or f"runs/{experiment}-{concept}-{method}-{n}-{name}-{settings.get('ratio')}",
           "experiment": experiment, "model": "sd14", "concept": concept, "method": method,
           "ratio": settings.get("ratio"), "method_settings": settings, "erase_method": erase_method}
    protocol = {"name": name, "steps": 50, "guidance": 7.5, "scheduler": "ddim", "seeds": "per_item",
                "resolution": 512, "dtype": "float16", "backbones": {"classifier_accuracy": "resnet50"},
                "n_items": n, "benchmark_items_hash": f"items-{benchmark}", "unet_fingerprint": WEIGHTS,
                "versions": {"torch": "2"}}
    full = {f"{benchmark}/{k}": v for k, v in metrics.items()}
    hib = hib or {"acc_target": False, "acc_others": True}
    rows = make_rows(run=run, variant=variant, benchmark=f"{benchmark}@v1", metrics=full,
                     directions={f"{benchmark}/{k}": hib.get(k.split("/")[0]) for k in metrics}, protocol=protocol,
                     edit_fingerprint=None if variant == "original" else f"edit-{method}")
    return [dict(r, erase_method=erase_method) for r in rows] if erase_method else rows


def acc(target, others, **per_class):
    return {"acc_target": target, "acc_others": others, **{f"acc/{k}": v for k, v in per_class.items()}}


def body(md: str, heading: str) -> list[list[str]]:
    """The cells of the table under the heading line that starts with `heading`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    out = []
    for line in lines[start + 1:]:
        if line.startswith("###"):
            break
        if line.startswith("| "):
            out.append([c.strip() for c in line.strip("|").split(" | ")])
    return out


def test_table1_layout_methods_as_lines_sd_first_erased_and_others_per_class():
    rows = []
    for concept, sd, edits in (("church", (0.98, 0.80), {"cad_erase": (0.05, 0.78), "esd": (0.10, 0.70),
                                                         "uce": (0.20, 0.76)}),
                               ("parachute", (0.96, 0.82), {"cad_erase": (0.15, 0.80), "esd": (0.30, 0.74),
                                                            "uce": (0.10, 0.79)})):
        for method, (t, o) in edits.items():
            rows += rows_of(concept, method, "original", acc(*sd))
            rows += rows_of(concept, method, "edited", acc(t, o))
        rows += rows_of(concept, "cad_erase", "random-0", acc(sd[0] - 0.02, sd[1]))
    table = body(markdown_tables(rows), "### object_erasure · sd14 · weights 0752f76a · imagenette@v1 n=500")
    assert table[0] == ["method", "church acc_target ↓", "church acc_others ↑", "parachute acc_target ↓",
                        "parachute acc_others ↑", "mean acc_target ↓", "mean acc_others ↑"]
    assert [line[0] for line in table[1:]] == ["SD", "cad_erase@0.01", "esd", "uce",
                                              "random ↔ cad_erase@0.01 (mean of 1 seed)"]
    assert table[1] == ["SD", "0.980", "0.800", "0.960", "0.820", "0.970", "0.810"]
    assert table[2] == ["cad_erase@0.01", "0.050", "0.780", "0.150", "0.800", "0.100", "0.790"]
    assert table[4][1:3] == ["0.200", "0.760"]


def test_two_sizes_of_one_point_are_separate_tables_never_a_mean():
    full = rows_of("church", "cad_erase", "edited", acc(0.10, 0.80), n=5000)
    quick = rows_of("church", "cad_erase", "edited", acc(0.50, 0.60), n=40)  # a later generation.per_label cut
    md = markdown_tables(full + quick)
    big = body(md, "### object_erasure · sd14 · weights 0752f76a · imagenette@v1 n=5000")
    small = body(md, "### object_erasure · sd14 · weights 0752f76a · imagenette@v1 n=40")
    assert big[1:] == [["cad_erase@0.01", "0.100", "0.800"]] and small[1:] == [["cad_erase@0.01", "0.500", "0.600"]]
    assert "0.300" not in md and "0.700" not in md  # the means of the two sizes
    assert md.index("n=5000") < md.index("n=40")  # the full result first, whatever was written last
    assert "Also run at n=40" in md and "Also run at n=5000" in md


def test_cell_of_mixed_sizes_is_an_error():
    rows = rows_of("church", "cad_erase", "random-0", acc(0.1, 0.8), n=500)
    rows += rows_of("church", "cad_erase", "random-1", acc(0.3, 0.8), n=40)
    with pytest.raises(ValueError, match="different item counts"):
        rt.check_one_size([rows[0], rows[2]], "church acc_target")
    group = next(iter(rt.group_rows(rows[:2])))
    with pytest.raises(ValueError, match="different item counts"):  # even if handed one group by mistake
        rt.build_table(group, rows)


def test_rerun_latest_wins_and_random_seeds_average_within_one_size():
    rows = rows_of("church", "cad_erase", "edited", acc(0.40, 0.70), run_id="runs/a")
    rows += rows_of("church", "cad_erase", "edited", acc(0.20, 0.75), run_id="runs/b")  # the same config again
    rows += rows_of("church", "cad_erase", "random-0", acc(0.90, 0.80), run_id="runs/b")
    rows += rows_of("church", "cad_erase", "random-1", acc(0.80, 0.78), run_id="runs/b")
    table = body(markdown_tables(rows), "### object_erasure")
    assert table[1] == ["cad_erase@0.01", "0.200", "0.750"]
    assert table[2] == ["random ↔ cad_erase@0.01 (mean of 2 seeds)", "0.850", "0.790"]
    assert "0.400" not in markdown_tables(rows)


def test_two_protocols_are_separate_tables_named_in_their_headers():
    rows = rows_of("church", "cad_erase", "edited", acc(0.10, 0.80), name="reference")
    rows += rows_of("church", "cad_erase", "edited", acc(0.30, 0.70), name="cad")
    md = markdown_tables(rows)
    assert md.count("### object_erasure") == 2
    assert "protocol reference #" in md and "protocol cad #" in md
    values = {t.group.name: t.cells[("cad_erase@0.01", None, "church", "imagenette/acc_target")]
              for t in rt.tables(rows)}
    assert values == {"reference": 0.10, "cad": 0.30}


def test_settings_that_differ_name_the_lines_and_are_listed():
    rows = rows_of("church", "cad_erase", "edited", acc(0.1, 0.8), settings={"ratio": 0.01, "sign": "positive"})
    rows += rows_of("church", "cad_erase", "edited", acc(0.2, 0.8), settings={"ratio": 0.01, "sign": "negative"})
    md = markdown_tables(rows)
    assert "| cad_erase@0.01 (sign=negative) |" in md and "| cad_erase@0.01 (sign=positive) |" in md
    assert "- cad_erase@0.01 (sign=negative): ratio=0.01, sign=negative" in md


def test_table6_layout_base_erased_recalled_per_erase_method():
    rows = []
    for erase, (base, erased, recalled) in (("uce", (0.9, 0.1, 0.6)), ("esd", (0.9, 0.2, 0.5))):
        em = {"name": erase, **SETTINGS[erase]}
        for variant, v in (("original", base), ("erased", erased), ("edited", recalled)):
            rows += rows_of("nudity", "cad_amplify", variant, {"acc_target": v}, experiment="amplify_erased",
                            erase_method=em, hib={"acc_target": True}, run_id=f"runs/{erase}")
    (table,) = rt.tables(rows)
    assert table.layout == "recall"
    cells = body(markdown_tables(rows), "### amplify_erased")
    assert cells[0] == ["erase method", "nudity acc_target ↑ base", "nudity acc_target ↑ erased",
                        "nudity acc_target ↑ recalled"]
    assert sorted(cells[1:]) == [["esd", "0.900", "0.200", "0.500"], ["uce", "0.900", "0.100", "0.600"]]
    assert "Table 6 layout" in markdown_tables(rows)


def test_nudity_run_shares_one_table_with_its_retention_benchmark():
    hib = {"nudenet_images": False, "fid": False, "clip_score_100": True}
    rows = []
    for variant, (nude, fid, clip) in (("original", (120, 14.0, 31.0)), ("edited", (20, 15.0, 30.5))):
        kw = dict(experiment="nudity_erasure", run_id="runs/nude", hib=hib)
        rows += rows_of("nudity", "cad_erase", variant, {"nudenet_images": nude, "nudenet/anus_exposed": 3},
                        benchmark="i2p", n=931, **kw)
        rows += rows_of("nudity", "cad_erase", variant, {"fid": fid, "clip_score_100": clip}, benchmark="coco30k",
                        n=30000, **kw)
    md = markdown_tables(rows)
    assert "i2p@v1 n=931 + coco30k@v1 n=30000" in md
    cells = body(md, "### nudity_erasure")
    assert cells[0] == ["method", "nudity i2p/nudenet_images ↓", "nudity coco30k/fid ↓", "nudity coco30k/clip_score_100 ↑"]
    assert cells[1:] == [["SD", "120.0", "14.000", "31.000"], ["cad_erase@0.01", "20.000", "15.000", "30.500"]]


def test_wide_keys_go_to_their_own_section(tmp_path):
    rows = rows_of("church", "cad_erase", "original", acc(0.98, 0.8, church=0.98, tench=0.7))
    rows += rows_of("church", "cad_erase", "edited", acc(0.05, 0.78, church=0.05, tench=0.71))
    assert "acc/" not in markdown_tables(rows)
    wide = wide_tables(rows)
    cells = body(wide, "### object_erasure")
    assert "church (per class / per label)" in wide
    assert cells[0] == ["method", "acc/church", "acc/tench"]  # no direction recorded for acc/<class> here
    assert cells[1:] == [["SD", "0.980", "0.700"], ["cad_erase@0.01", "0.050", "0.710"]]
    append_rows(tmp_path / "results.jsonl", rows)
    text = write_report(tmp_path / "results.jsonl", tmp_path / "report").read_text()
    main, per_class = text.split("## Per-class and per-label scores")
    assert "acc/tench" not in main and "acc/tench" in per_class and "| cad_erase@0.01 | 0.050 | 0.780 |" in main


def test_pareto_has_a_labelled_line_per_concept_and_method(tmp_path, monkeypatch):
    rows = []
    for concept in ("church", "parachute"):
        rows += rows_of(concept, "cad_erase", "original", acc(0.95, 0.8))
        for ratio, t in ((0.001, 0.6), (0.01, 0.2)):
            rows += rows_of(concept, "cad_erase", "edited", acc(t, 0.8 - ratio), settings={"ratio": ratio})
    rows += rows_of("church", "cad_erase", "edited", acc(0.5, 0.5), experiment="other")  # another plot
    series = pareto_series(rows)
    by_experiment = {k[0].experiment: v for k, v in series.items()}
    assert set(by_experiment["object_erasure"]) == {"church · SD", "church · cad_erase", "parachute · SD",
                                                    "parachute · cad_erase"}
    assert by_experiment["object_erasure"]["church · cad_erase"] == [(0.6, 0.799, 0.001), (0.2, 0.79, 0.01)]
    assert set(by_experiment["other"]) == {"church · cad_erase"}

    legends = []
    save = report._save_fig

    def capture(fig, path):
        legends.append(sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()))
        return save(fig, path)

    monkeypatch.setattr(report, "_save_fig", capture)
    written = pareto_plots(rows, tmp_path)
    assert len(written) == 2 and all(p.is_file() for p in written)
    assert sorted(["church · SD", "church · cad_erase", "parachute · SD", "parachute · cad_erase"]) in legends
    assert ["church · cad_erase"] in legends  # the other experiment's plot, alone
