"""experiment=analysis: where a concept's components sit, how concentrated, shared, stable and timed they are.

The runner only unpacks the config, gets scores from the attribution cache (experiments/pipeline.py
`attribute_cached`: a second run computes no gradient the first one computed; timestep buckets are cached
beside the scores they refine) and calls cad.analysis. It writes figures/*.png, analysis.json (every number)
and summary.md into the run folder, and logs them to W&B when logger=wandb.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from cad.io import atomic_write_bytes, atomic_write_json

from .models import load_model
from .pipeline import (
    attribute_cached,
    attribute_kwargs,
    timed,
    write_metrics,
)
from .planning import resolve_memory
from .validate import ConfigError, check_run, effective_concept, load_concept

log = logging.getLogger("cad.experiments")
PARTS = ("where", "concentration", "overlap", "stability", "time", "spaces")
SCHEMA = 1


def analysis_plan(cfg: dict) -> dict:
    """The analysis section checked before any model loads; every refusal names the fix."""
    check_run(cfg)
    a = dict(cfg.get("analysis") or {})
    parts = list(a.get("parts") or PARTS)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ConfigError(f"analysis.parts has {bad}; choose from {list(PARTS)}")
    protocol = (cfg.get("protocol") or {}).get("name")
    names = list(a.get("concepts") or [cfg["concept"]["name"]])
    concepts = [effective_concept(load_concept(str(n), protocol), cfg["model"]["name"]) for n in names]
    if "overlap" in parts and len(concepts) < 2:
        raise ConfigError("analysis part 'overlap' compares concepts: give analysis.concepts=[a,b,...] (>= 2)")
    fraction = float(a.get("fraction", 0.01))
    fractions = [float(x) for x in a.get("fractions") or []]
    for what, x in [("analysis.fraction", fraction)] + [(f"analysis.fractions[{i}]", x) for i, x in enumerate(fractions)]:
        if not 0 < x <= 1:
            raise ConfigError(f"{what}={x} must be a share of components in (0, 1], e.g. 0.01")
    if "concentration" in parts and not fractions:
        raise ConfigError("analysis part 'concentration' zeroes the top components over analysis.fractions: "
                          "give a grid, e.g. [0.001, 0.003, 0.01, 0.03]")
    st = dict(a.get("stability") or {})
    ks = sorted(int(k) for k in st.get("ks") or [1, 2, 4, 8])
    if "stability" in parts and (not ks or ks[0] < 1 or not st.get("seeds")):
        raise ConfigError("analysis.stability needs seeds (e.g. [0, 1, 2]) and ks >= 1 (e.g. [1, 2, 4, 8])")
    steps = int(cfg["attribution"]["steps"])
    buckets = int(a.get("time_buckets") or 0)
    if "time" in parts and not 1 <= buckets <= steps:
        raise ConfigError(f"analysis.time_buckets={buckets} must lie in 1..attribution.steps ({steps})")
    sp = dict(a.get("spaces") or {})
    space_names = list(sp.get("names") or ["ff", "attn", "cross_attn", "conv"])
    space_concepts = list(sp.get("concepts") or names)
    unknown = [c for c in space_concepts if c not in names]
    if "spaces" in parts and unknown:
        raise ConfigError(f"analysis.spaces.concepts {unknown} are not in analysis.concepts {names}")
    stab_concept = str(st.get("concept") or names[0])
    if "stability" in parts and stab_concept not in names:
        raise ConfigError(f"analysis.stability.concept={stab_concept!r} is not in analysis.concepts {names}")
    return {"parts": parts, "concepts": concepts, "fraction": fraction, "fractions": fractions,
            "space": str(a.get("space", (cfg.get("method") or {}).get("space", "ff"))),
            "level": str(a.get("level", "module")), "amplify": bool(a.get("amplify", True)),
            "amplify_num_samples": a.get("amplify_num_samples"),
            "seed": int(a.get("seed", 0)), "time_buckets": buckets,
            "stability": {"concept": stab_concept, "seeds": [int(s) for s in st.get("seeds") or [0, 1, 2]], "ks": ks,
                          "reference_seed": int(st.get("reference_seed", 1000)),
                          "restart_ks": sorted(int(k) for k in st.get("restart_ks") or []),
                          "threshold": float(st.get("threshold", 0.9))},
            "spaces": {"names": space_names, "concepts": space_concepts}}


class _Figures:
    """Writes PNGs under run_dir/figures and remembers them for the JSON, the summary and W&B."""

    def __init__(self, run_dir: Path):
        self.dir, self.paths = run_dir / "figures", {}

    def add(self, key: str, png: bytes) -> str:
        path = atomic_write_bytes(self.dir / f"{key}.png", png)
        self.paths[key] = str(path)
        return str(path)


def run_analysis(cfg: dict, run_dir: str | Path, *, logger=None) -> dict:
    from cad.analysis import plots

    run_dir = Path(run_dir)
    plan = analysis_plan(cfg)
    resolve_memory(cfg)  # attribution.memory=auto against the visible GPU, before the model loads
    outputs = Path(cfg["paths"]["outputs"])
    model, attribution = cfg["model"], cfg["attribution"]
    protocol = (cfg.get("protocol") or {}).get("name")
    with timed("load model"):
        loaded = load_model(model, device=cfg.get("device", "auto"), toy_kit=cfg["paths"].get("toy_kit"))
    bb = loaded.backbone
    started, timings, computed = time.perf_counter(), {}, []

    def scores_of(concept, *, objective="erase", space=None, att=None, time_buckets=None):
        s, folder, reused = attribute_cached(loaded, concept, att or attribution, model, outputs, objective=objective,
                                             space=space or plan["space"], protocol=protocol)
        if not reused:
            computed.append(str(folder))
        if time_buckets:
            s.partials = _buckets_cached(loaded, concept, att or attribution, model, folder, s, objective,
                                         space or plan["space"], time_buckets, computed)
        return s

    figs = _Figures(run_dir)
    out = {"schema": SCHEMA, "model": loaded.key, "space": plan["space"], "level": plan["level"],
           "fraction": plan["fraction"], "concepts": [c["name"] for c in plan["concepts"]], "protocol": protocol,
           "attribution": {k: attribution.get(k) for k in ("steps", "guidance", "num_samples", "seed", "estimator",
                                                            "schedule_steps", "num_images")},
           "parts": plan["parts"]}
    summary = [f"# Attribution analysis: {loaded.key}, space {plan['space']}",
               "", f"Concepts: {', '.join(out['concepts'])}. Top set: the top {plan['fraction']:.2%} of components "
               f"by α. Attribution: {out['attribution']}.", ""]
    t0 = time.perf_counter()
    erase = {c["name"]: scores_of(c) for c in plan["concepts"]}
    timings["attribution_erase"] = time.perf_counter() - t0
    names = next(iter(erase.values())).names
    groups = bb.group_names(names, plan["level"])
    from cad.analysis import group_mass

    if "where" in plan["parts"]:
        t0 = time.perf_counter()
        out["where"] = _where(erase, groups, plan, figs, summary, plots, group_mass)
        timings["where"] = time.perf_counter() - t0
    if "concentration" in plan["parts"]:
        t0 = time.perf_counter()
        out["concentration"] = _concentration(bb, erase, plan, figs, summary, plots, scores_of, attribution, model)
        timings["concentration"] = time.perf_counter() - t0
    if "overlap" in plan["parts"]:
        t0 = time.perf_counter()
        out["overlap"] = _overlap(erase, plan, figs, summary, plots)
        timings["overlap"] = time.perf_counter() - t0
    if "stability" in plan["parts"]:
        t0 = time.perf_counter()
        out["stability"] = _stability(plan, figs, summary, plots, scores_of, attribution)
        timings["stability"] = time.perf_counter() - t0
    if "time" in plan["parts"]:
        t0 = time.perf_counter()
        out["time"] = _time(plan, groups, erase, figs, summary, plots, scores_of, bb)
        timings["time"] = time.perf_counter() - t0
    if "spaces" in plan["parts"]:
        t0 = time.perf_counter()
        out["spaces"] = _spaces(bb, plan, figs, summary, scores_of, attribution, model)
        timings["spaces"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    out.update(figures=figs.paths, timings_s={k: round(v, 1) for k, v in timings.items()},
               attributions_computed=len(computed))
    summary += ["", f"Run time: {timings['total']:.0f} s ({len(computed)} attributions computed, the rest from "
                    "the cache)."]
    json_path = atomic_write_json(run_dir / "analysis.json", out)
    md_path = atomic_write_bytes(run_dir / "summary.md", ("\n".join(summary) + "\n").encode())
    payload = {"analysis": str(json_path), "summary_md": str(md_path), "figures": figs.paths,
               "timings_s": out["timings_s"], "attributions_computed": len(computed)}
    write_metrics(run_dir, payload)
    if logger is not None:
        for key, path in figs.paths.items():
            logger.log_image(f"analysis/{key}", path)
        for part in ("where", "stability", "spaces"):
            rows = out.get(part, {}).get("rows") if isinstance(out.get(part), dict) else None
            if rows:
                logger.log_table(f"analysis/{part}", rows)
        if "concentration" in out:
            logger.log_table("analysis/concentration", out["concentration"]["rows"])
    payload["summary"] = [f"analysis of {len(plan['concepts'])} concepts on {loaded.key} in {timings['total']:.0f} s",
                          f"summary: {md_path}", f"numbers: {json_path}"]
    return payload


def _buckets_cached(loaded, concept, attribution, model, folder: Path, full, objective, space, buckets: int,
                    computed: list) -> list:
    """The timestep buckets of the scores in `folder`, cached in folder/time_buckets<B>/<b>; computing them
    recomputes the attribution with buckets and checks its full alpha is the cached one, bit for bit."""
    import torch

    from cad.attribution import attribute
    from cad.scores import AttributionScores

    parts = folder / f"time_buckets{buckets}"
    if (parts / "done.json").is_file():
        return [AttributionScores.load(parts / str(b), unet=loaded.pipe) for b in range(buckets)]
    kw = attribute_kwargs(concept, attribution, model, objective, space, progress=False)
    s = attribute(loaded.backbone, kw.pop("prompt"), time_buckets=buckets, **kw)
    same = all(torch.equal(s.scores[n], full.scores[n]) for n in full.scores)
    if not same:  # another process, device or torch version: the buckets still refine these scores' settings
        log.warning("the bucketed attribution's full alpha differs from the cached scores in %s", folder)
    for b, part in enumerate(s.partials):
        part.meta.update(model_key=loaded.key, full_scores=str(folder), full_bit_identical=same)
        part.save(parts / str(b))
    atomic_write_json(parts / "done.json", {"time_buckets": s.meta["time_buckets"], "full_bit_identical": same})
    computed.append(str(parts))
    return s.partials


def _where(erase, groups, plan, figs, summary, plots, group_mass) -> dict:
    per = {}
    for name, s in erase.items():
        rows = group_mass(s, groups, plan["fraction"], plan["seed"])
        per[name] = rows
        figs.add(f"where_{name}", plots.where_png(rows, f"{name}: α along depth ({plan['space']}, "
                                                          f"top {plan['fraction']:.1%})"))
    labels = list(groups)
    concepts = list(per)
    for key, what in (("top_pos_share", "share of top positive"), ("top_neg_share", "share of top negative")):
        figs.add(f"where_heatmap_{key}", plots.heatmap_png([[r[key] for r in per[c]] for c in concepts], concepts,
                                                           labels, f"{what} components per group", vmin=0, vmax=1,
                                                           label=what))
    summary += ["## Where", "", "| concept | group holding most top-positive | its share | its weight share | "
                "top-negative mostly in | its share |", "|---|---|---|---|---|---|"]
    flat = []
    for c in concepts:
        rows = per[c]
        p = max(rows, key=lambda r: r["top_pos_share"])
        n = max(rows, key=lambda r: r["top_neg_share"])
        summary.append(f"| {c} | {p['group']} | {p['top_pos_share']:.2f} | {p['weight_share']:.2f} | {n['group']} | "
                       f"{n['top_neg_share']:.2f} |")
        flat += [{"concept": c, **r} for r in rows]
    summary.append("")
    return {"groups": labels, "per_concept": per, "rows": flat}


def _concentration(bb, erase, plan, figs, summary, plots, scores_of, attribution, model) -> dict:
    from cad.analysis import ablation_curve, gini, lorenz
    from cad.objectives import (
        concept_latents,
        erase_reference,
        measure_amplify_objective,
        measure_erase_objective,
    )

    res = int(model["resolution"])
    curves, neg_curves, per, rows = {}, {}, {}, []
    for c in plan["concepts"]:
        name, s = c["name"], erase[c["name"]]
        kw = attribute_kwargs(c, attribution, model, "erase", plan["space"], progress=False)
        mkw = dict(base_prompt=kw["base_prompt"], steps=kw["steps"], guidance=kw["guidance"],
                   num_samples=kw["num_samples"], seed=kw["seed"], height=res, width=res,
                   schedule_steps=kw["schedule_steps"])
        ref = erase_reference(bb, kw["prompt"], **mkw)

        def measure_erase(edit, ref=ref, kw=kw, mkw=mkw, target="fixed"):
            if edit is None:
                return ref.value
            return measure_erase_objective(bb, kw["prompt"], edit=edit, reference=ref, base_target=target, **mkw)

        def measure_gap(edit, measure_erase=measure_erase):
            return measure_erase(edit, target="edited")

        g_pos, g_neg = gini(s, "positive"), gini(s, "negative")
        x, y = lorenz(s, "positive")
        curves[name] = (x, y, g_pos)
        xn, yn = lorenz(s, "negative")
        neg_curves[name] = (xn, yn, g_neg)
        ec = ablation_curve(s, plan["fractions"], measure_erase, sign="positive", seed=plan["seed"],
                            also={"gap": measure_gap})
        figs.add(f"ablation_erase_{name}", plots.ablation_png(ec, f"{name}: zero top positive α of J_erase",
                                                               "ΔJ_erase (fixed trajectory)"))
        entry = {"gini_pos": g_pos, "gini_neg": g_neg, "lorenz_pos": [x, y], "lorenz_neg": [xn, yn], "erase": ec,
                 "h1_points": sum(p["measured"] < p["random_measured"] for p in ec["points"]),
                 "h1_gap_points": sum(p["gap"] < p["random_gap"] for p in ec["points"])}
        if plan["amplify"]:
            att = attribution if plan["amplify_num_samples"] is None else \
                {**attribution, "num_samples": int(plan["amplify_num_samples"])}
            a = scores_of(c, objective="amplify", att=att)
            akw = attribute_kwargs(c, att, model, "amplify", plan["space"], progress=False)
            latents = concept_latents(bb, akw["images"], prompt=akw["image_prompt"], num_images=akw["num_images"],
                                      seed=akw["seed"], steps=akw["steps"], guidance=akw["image_guidance"],
                                      batch_size=8, height=res, width=res)

            def measure_amplify(edit, akw=akw, latents=latents):
                return measure_amplify_objective(bb, latents, akw["prompt"], steps=akw["steps"],
                                                 num_samples=akw["num_samples"], seed=akw["seed"], edit=edit,
                                                 schedule_steps=akw["schedule_steps"])

            ac = ablation_curve(a, plan["fractions"], measure_amplify, sign="negative", seed=plan["seed"])
            figs.add(f"ablation_amplify_{name}", plots.ablation_png(ac, f"{name}: zero top negative α of J_amplify",
                                                                     "ΔJ_amplify (concept images)"))
            entry.update(amplify=ac, gini_amplify_neg=gini(a, "negative"),
                         h2_points=sum(p["measured"] > p["random_measured"] for p in ac["points"]))
        per[name] = entry
        for p in ec["points"]:
            rows.append({"concept": name, "objective": "erase", **p, "original": ec["original"]})
        for p in (entry.get("amplify") or {}).get("points", []):
            rows.append({"concept": name, "objective": "amplify", **p, "original": entry["amplify"]["original"]})
    figs.add("lorenz_positive", plots.lorenz_png(curves, f"positive α of J_erase ({plan['space']})"))
    figs.add("lorenz_negative", plots.lorenz_png(neg_curves, f"negative α of J_erase ({plan['space']})"))
    n = len(plan["fractions"])
    summary += ["## How concentrated", "",
                f"G: the Gini-style number of the Lorenz-style curve (0 even, 1 - f on a share f). H1: zeroing the "
                f"top positive α of J_erase lowers it more than as many random weights (points of {n} shares "
                f"{plan['fractions']}), on the fixed trajectory with the unedited base prediction as target (the J "
                f"the first-order prediction linearises), and as the edited model's own concept gap (base re-evaluated "
                f"with the edit). H2: zeroing the top negative α of J_amplify raises it more than random. "
                f"ΔJ/J at the share {plan['fractions'][min(2, n - 1)]:g}.", "",
                "| concept | G pos | G neg | H1 fixed | H1 gap | ΔJ/J top | random | Δgap/gap top | random | H2 | "
                "ΔJ_amp top | random |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    at = min(2, n - 1)
    for name, e in per.items():
        last = e["erase"]["points"][at]
        o = abs(e["erase"]["original"]) or 1.0
        og = abs(e["erase"]["also_original"]["gap"]) or 1.0
        amp = e.get("amplify")
        al = amp["points"][at] if amp else None
        summary.append(f"| {name} | {e['gini_pos']:.2f} | {e['gini_neg']:.2f} | {e['h1_points']}/{n} | "
                       f"{e['h1_gap_points']}/{n} | {last['measured'] / o:+.3f} | {last['random_measured'] / o:+.3f} | "
                       f"{last['gap'] / og:+.3f} | {last['random_gap'] / og:+.3f} | "
                       + (f"{e['h2_points']}/{n} | {al['measured']:+.3g} | {al['random_measured']:+.3g} |" if amp
                          else "- | - | - |"))
    summary.append("")
    return {"per_concept": per, "rows": rows, "fractions": plan["fractions"]}


def _overlap(erase, plan, figs, summary, plots) -> dict:
    from cad.analysis import generic_unique, overlap_matrix

    m = overlap_matrix(erase, plan["fraction"])
    gu = generic_unique(erase, plan["fraction"])
    figs.add("overlap_jaccard", plots.heatmap_png(m["jaccard"], m["names"], m["names"],
                                                  f"Jaccard of top {plan['fraction']:.1%} positive "
                                                  f"(chance {m['chance_jaccard']:.3f})", vmin=0, vmax=1))
    figs.add("overlap_spearman", plots.heatmap_png(m["spearman"], m["names"], m["names"], "Spearman ρ of α",
                                                   cmap="coolwarm", vmin=-1, vmax=1))
    names = m["names"]
    off = [(m["jaccard"][i][j], names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    rho = [m["spearman"][i][j] for i in range(len(names)) for j in range(i + 1, len(names))]
    off.sort(reverse=True)
    summary += ["## Which concepts share components", "",
                f"Jaccard of top sets: mean {sum(o[0] for o in off) / len(off):.3f} over {len(off)} pairs (chance "
                f"{m['chance_jaccard']:.4f}); most shared: " + ", ".join(f"{a}/{b} {j:.2f}" for j, a, b in off[:3])
                + "; least: " + ", ".join(f"{a}/{b} {j:.2f}" for j, a, b in off[-3:]) + ".",
                f"Spearman ρ of α: mean {sum(rho) / len(rho):.3f}, range {min(rho):.3f}..{max(rho):.3f}.",
                f"Generic (in every concept's top set): {gu['n_generic']} components; unique to one concept: "
                f"{gu['n_unique']} of {gu['n_in_any']} in any set.", ""]
    return {**m, "generic_unique": gu}


def _stability(plan, figs, summary, plots, scores_of, attribution) -> dict:
    from cad.analysis import settle_k, stability_table

    st = plan["stability"]
    concept = next(c for c in plan["concepts"] if c["name"] == st["concept"])
    kmax = max(st["ks"])
    reference = scores_of(concept, att={**attribution, "seed": st["reference_seed"], "num_samples": kmax,
                                        "estimator": "trajectory"})
    estimates = {}
    for estimator, ks in (("trajectory", st["ks"]), ("restart", st["restart_ks"])):
        for seed in st["seeds"]:
            for k in ks:
                estimates[(estimator, seed, k)] = scores_of(
                    concept, att={**attribution, "seed": seed, "num_samples": k, "estimator": estimator})
    rows = stability_table(estimates, reference, plan["fraction"])
    settle = {e: settle_k(rows, e, st["threshold"]) for e in ("trajectory", "restart") if
              any(r["estimator"] == e for r in rows)}
    figs.add("stability", plots.stability_png(rows, f"{concept['name']}: estimates vs K={kmax} (seed "
                                                    f"{st['reference_seed']})"))

    def mean(est, k, key):
        v = [r[key] for r in rows if r["estimator"] == est and r["k"] == k]
        return sum(v) / len(v) if v else float("nan")

    summary += ["## How stable, and how many samples", "",
                f"{concept['name']}: {len(st['seeds'])} seeds per K, each compared with a K={kmax} estimate of "
                f"another seed. The ranking settles (mean Spearman >= {st['threshold']} from there on) at K = "
                + ", ".join(f"{settle[e]} ({e})" for e in settle) + ".", "",
                "| estimator | K | Spearman | top-set Jaccard |", "|---|---|---|---|"]
    for est in settle:
        for k in sorted({r["k"] for r in rows if r["estimator"] == est}):
            summary.append(f"| {est} | {k} | {mean(est, k, 'spearman'):.3f} | {mean(est, k, 'jaccard'):.3f} |")
    summary.append("")
    return {"concept": concept["name"], "reference": {"seed": st["reference_seed"], "k": kmax}, "rows": rows,
            "settle_k": settle, "threshold": st["threshold"]}


def _time(plan, groups, erase, figs, summary, plots, scores_of, bb) -> dict:
    from cad.analysis import bucket_overlap, bucket_profile

    b = plan["time_buckets"]
    per, mean_share = {}, None
    for c in plan["concepts"]:
        s = scores_of(c, time_buckets=b)
        full = erase[c["name"]]
        err = max(float((sum(p.scores[n] for p in s.partials) - full.scores[n]).abs().max()) for n in full.scores)
        scale = max(float(full.scores[n].abs().max()) for n in full.scores)
        profile = bucket_profile(s.partials, groups)
        per[c["name"]] = {"buckets": [p.meta["bucket_steps"] for p in s.partials],
                          "sum_max_abs_error": err, "max_abs_alpha": scale, "profile": profile,
                          "overlap": bucket_overlap(s.partials, full, plan["fraction"])}
        shares = [r["share"] for r in profile]
        mean_share = shares if mean_share is None else [[a + v for a, v in zip(x, y)]
                                                        for x, y in zip(mean_share, shares)]
    n = len(per)
    mean_share = [[v / n for v in row] for row in mean_share]
    labels = [f"steps {lo}-{hi - 1}" for lo, hi in next(iter(per.values()))["buckets"]]
    figs.add("time_profile", plots.heatmap_png(mean_share, list(groups), labels,
                                               f"share of each group's |α| per timestep bucket (mean of {n})",
                                               vmin=0, vmax=1, label="share"))
    early_late = [v["overlap"]["pairs"][0][-1] for v in per.values()]
    with_full = [[v["overlap"]["with_full"][i] for v in per.values()] for i in range(b)]
    worst = max(v["sum_max_abs_error"] / (v["max_abs_alpha"] or 1) for v in per.values())
    summary += ["## When", "",
                f"{b} buckets of the trajectory's steps (first = highest noise). The buckets' α sum to the full α "
                f"within {worst:.1e} of max |α| (float32 rounding; the full α itself is bit-identical). Memory: "
                f"{b} float32 copies of the space.",
                f"Top-set Jaccard of the first with the last bucket: mean {sum(early_late) / n:.3f}; each bucket "
                f"with the full α: " + ", ".join(f"{labels[i]} {sum(w) / n:.2f}" for i, w in enumerate(with_full))
                + ".", "", "| group | " + " | ".join(labels) + " |", "|---|" + "---|" * b]
    for g, row in zip(groups, mean_share):
        summary.append(f"| {g} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    summary.append("")
    return {"time_buckets": b, "per_concept": per, "mean_share": mean_share, "groups": list(groups),
            "bucket_labels": labels}


def _spaces(bb, plan, figs, summary, scores_of, attribution, model) -> dict:
    """For the chosen concepts, the same attribution in other spaces: how concentrated it is there and how
    much zeroing its top share (against random) lowers J_erase, i.e. where the concept can be removed."""
    from cad.analysis import ablation_curve, gini
    from cad.objectives import erase_reference, measure_erase_objective

    res = int(model["resolution"])
    rows = []
    fractions = [plan["fraction"], max(plan["fractions"] or [plan["fraction"]])]
    for c in plan["concepts"]:
        if c["name"] not in plan["spaces"]["concepts"]:
            continue
        kw = attribute_kwargs(c, attribution, model, "erase", plan["space"], progress=False)
        mkw = dict(base_prompt=kw["base_prompt"], steps=kw["steps"], guidance=kw["guidance"],
                   num_samples=kw["num_samples"], seed=kw["seed"], height=res, width=res,
                   schedule_steps=kw["schedule_steps"])
        ref = erase_reference(bb, kw["prompt"], **mkw)
        for space in plan["spaces"]["names"]:
            s = scores_of(c, space=space)

            def measure(edit, ref=ref, kw=kw, mkw=mkw, target="fixed"):
                return ref.value if edit is None else measure_erase_objective(
                    bb, kw["prompt"], edit=edit, reference=ref, base_target=target, **mkw)

            def gap(edit, measure=measure):
                return measure(edit, target="edited")

            curve = ablation_curve(s, sorted(set(fractions)), measure, sign="positive", seed=plan["seed"],
                                   also={"gap": gap})
            total = sum(float(t.clamp(min=0).sum()) for t in s.scores.values())
            row = {"concept": c["name"], "space": space, "n_weights": s.numel, "gini_pos": gini(s, "positive"),
                   "pos_mass": total, "original": curve["original"]}
            for p in curve["points"]:
                tag = f"{p['fraction']:g}"
                row[f"drop_top@{tag}"] = p["measured"] / curve["original"] if curve["original"] else math.nan
                row[f"drop_random@{tag}"] = p["random_measured"] / curve["original"] if curve["original"] else math.nan
                row[f"predicted@{tag}"] = p["predicted"] / curve["original"] if curve["original"] else math.nan
                og = curve["also_original"]["gap"]
                row[f"gap_top@{tag}"] = p["gap"] / og if og else math.nan
                row[f"gap_random@{tag}"] = p["random_gap"] / og if og else math.nan
            rows.append(row)
    tags = [f"{f:g}" for f in sorted(set(fractions))]
    summary += ["## Which space holds the concept", "",
                "Relative change of J_erase (fixed target / the edited model's own gap) when the top share of each "
                "space's positive α is zeroed, on the fixed trajectory, against as many random weights of that "
                "space; Σα⁺ is the space's positive mass.", "",
                "| concept | space | weights | G pos | Σα⁺ | " + " | ".join(f"J top {t} | random | gap top {t} | random"
                                                                     for t in tags) + " |",
                "|---|---|---|---|---|" + "---|---|---|---|" * len(tags)]
    for r in rows:
        summary.append(f"| {r['concept']} | {r['space']} | {r['n_weights']:,} | {r['gini_pos']:.2f} | "
                       f"{r['pos_mass']:.3g} | " + " | ".join(
                           f"{r[f'drop_top@{t}']:+.3f} | {r[f'drop_random@{t}']:+.3f} | {r[f'gap_top@{t}']:+.3f} | "
                           f"{r[f'gap_random@{t}']:+.3f}" for t in tags) + " |")
    summary.append("")
    return {"rows": rows, "fractions": sorted(set(fractions))}
