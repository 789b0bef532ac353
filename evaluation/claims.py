"""The paper's claims on the toy world, judged from results rows: the bars applied, the verdict tables written.

The rows come from the runner's claims experiments (conf/experiment/claims_{erase,amplify,fidelity}.yaml, run
by `make claims`); the bars from conf/claims.yaml. Everything here is plain: rows in, dicts and markdown out.

    summary = summarize(read_latest("outputs/results.jsonl"), {"experiments": {...}, "bars": {...}, ...})
    print(claims_markdown(summary))

- CAD-Erase of a concept under a rule (`cad`: method.retain=[]; `retain`: method.retain=siblings) passes at a
  ratio when its accuracy is <= bars.target, the other concepts of its kind drop <= bars.others_drop and the
  random control (edit variant random-<seed>) lowers the target <= bars.random_drop (vacuous when the unedited
  model never rendered the concept). A concept passes when some rule passes at some ratio; the claim for a kind
  ("CAD-Erase of a shape") holds when some concept of that kind passes.
- CAD-Amplify passes when its best accuracy over the amplify ratios beats the weakened model's by
  >= bars.amplify_gain.
- Fidelity is reported, not judged: Pearson r of predicted against measured change of J_erase.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from cad.errors import UserError


class ClaimsDataError(UserError, ValueError):
    """The results rows cannot answer a claim (no rows, a variant missing); the message names the run to do."""


# Float noise in a difference of accuracies (1.00 - 0.90) must not flip a verdict at a bar's edge.
_EPS = 1e-9
RULES = ("cad", "retain")


def rule_of(row: Mapping[str, Any]) -> str:
    """`retain` for a row whose selection ranked against kept concepts (method.retain), else `cad`."""
    return "retain" if row.get("retain") else "cad"


def _metric(row: Mapping[str, Any]) -> str:
    return str(row["metric"]).rsplit("/", 1)[-1]


def _cells(rows: Iterable[Mapping[str, Any]], experiment: str, model: str | None) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("experiment") == experiment and (model is None or r.get("model") == model)
            and r.get("value") is not None]


def erase_points(rows: Iterable[Mapping[str, Any]], experiment: str, model: str | None = None) -> dict:
    """(concept, rule, ratio) -> {target, others, base_target, base_others, random_target, random_others} from
    the classifier rows (acc_target, acc_others) of the erase experiment; a later row of a cell wins."""
    points: dict[tuple, dict] = {}
    for r in _cells(rows, experiment, model):
        name = _metric(r)
        if name not in ("acc_target", "acc_others") or r.get("ratio") is None:
            continue
        variant = str(r.get("variant"))
        prefix = {"original": "base_", "edited": ""}.get(variant, "random_" if variant.startswith("random") else None)
        if prefix is None:
            continue
        key = (r["concept"], rule_of(r), float(r["ratio"]))
        points.setdefault(key, {})[prefix + name[len("acc_"):]] = float(r["value"])
    need = ("target", "others", "base_target", "base_others", "random_target", "random_others")
    incomplete = [k for k, p in points.items() if any(n not in p for n in need)]
    if incomplete:
        c, rule, ratio = incomplete[0]
        raise ClaimsDataError(f"{len(incomplete)} erase point(s) lack a variant, e.g. {c} rule {rule} ratio {ratio:g}: "
                              "run the claims_erase sweep with a random control (method.controls) to the end")
    return points


def passes(point: Mapping[str, float], bars: Mapping[str, float]) -> bool:
    """The erase bars at one ratio (see the module docstring)."""
    return (point["base_target"] > bars["target"] + _EPS and point["target"] <= bars["target"] + _EPS
            and point["base_others"] - point["others"] <= bars["others_drop"] + _EPS
            and point["base_target"] - point["random_target"] <= bars["random_drop"] + _EPS)


def _kind_order(concepts: Iterable[str]) -> list[tuple[str, list[str]]]:
    """Concepts grouped by toy-world kind, in the world's order (shapes, styles, colours; each kind's own order)."""
    from cad.toy.world import KINDS, kind_of

    concepts = set(concepts)
    for c in concepts:
        kind_of(c)  # an unknown concept stops here, naming the known ones
    return [(k, [c for c in KINDS[k] if c in concepts]) for k in KINDS if any(c in concepts for c in KINDS[k])]


def erase_summary(points: Mapping[tuple, Mapping[str, float]], bars: Mapping[str, float]) -> dict:
    """Sweeps per (concept, rule), each concept's verdict and each kind's claim."""
    sweeps: dict[tuple[str, str], dict] = {}
    for (concept, rule, ratio), p in sorted(points.items(), key=lambda kv: (kv[0][0], RULES.index(kv[0][1]), kv[0][2])):
        s = sweeps.setdefault((concept, rule), {"concept": concept, "rule": rule, "rows": [],
                                                "base_target": p["base_target"], "base_others": p["base_others"]})
        s["rows"].append({"ratio": ratio, **p, "passes": passes(p, bars)})
    for s in sweeps.values():
        s["passes"] = any(r["passes"] for r in s["rows"])
        # the row the verdict table shows: the first passing one; failing, the lowest target among rows whose
        # others drop within the bar (or the lowest target of all when none does)
        s["shown"] = next((r for r in s["rows"] if r["passes"]), None) or min(
            s["rows"], key=lambda r: (s["base_others"] - r["others"] > bars["others_drop"] + _EPS, r["target"]))
    kinds, concepts = [], []
    for kind, names in _kind_order(c for c, _ in sweeps):
        mine = []
        for c in names:
            rules = [r for r in RULES if (c, r) in sweeps]
            passing = [r for r in rules if sweeps[(c, r)]["passes"]]
            mine.append({"concept": c, "kind": kind, "passes": bool(passing), "passing_rules": passing,
                         "rules": rules, "sweeps": [sweeps[(c, r)] for r in rules]})
        concepts += mine
        rules = [r for r in RULES if any(r in v["rules"] for v in mine)]
        kinds.append({"kind": kind, "passes": any(v["passes"] for v in mine), "n": len(mine),
                      "passing": [v["concept"] for v in mine if v["passes"]],
                      "failing": [v["concept"] for v in mine if not v["passes"]],
                      "by_rule": {r: [v["concept"] for v in mine if r in v["passing_rules"]] for r in rules}})
    return {"kinds": kinds, "concepts": concepts}


def amplify_summary(rows: Iterable[Mapping[str, Any]], experiment: str, bars: Mapping[str, float],
                    weak_target: float, model: str | None = None) -> dict | None:
    """Best CAD-Amplify accuracy over its ratios against the weakened (erased) model's; None without rows."""
    cells = [r for r in _cells(rows, experiment, model) if _metric(r) in ("acc_target", "acc_others")]
    if not cells:
        return None
    concepts = {r["concept"] for r in cells}
    if len(concepts) > 1:
        raise ClaimsDataError(f"experiment {experiment!r} has rows of several concepts {sorted(concepts)}; the amplify "
                              "claim is about one")
    weak: dict[str, float] = {}
    by_ratio: dict[float, dict] = {}
    erase_ratio = None
    for r in cells:
        name = _metric(r)[len("acc_"):]
        if r.get("variant") == "erased":
            weak[name] = float(r["value"])
            em = r.get("erase_method")
            erase_ratio = em.get("ratio") if isinstance(em, Mapping) else erase_ratio
        elif r.get("variant") == "edited" and r.get("ratio") is not None:
            by_ratio.setdefault(float(r["ratio"]), {"ratio": float(r["ratio"])})[name] = float(r["value"])
    if "target" not in weak or not by_ratio:
        raise ClaimsDataError(f"experiment {experiment!r} needs rows of the erased and edited variants (run it with "
                              "erase_method=cad_erase)")
    amp = sorted(by_ratio.values(), key=lambda p: p["ratio"])
    best = max(amp, key=lambda p: p["target"])  # the first ratio of the highest accuracy
    gain = best["target"] - weak["target"]
    return {"concept": concepts.pop(), "weak_target": weak["target"], "weak_others": weak.get("others"),
            "erase_ratio": erase_ratio, "weakened": weak["target"] < weak_target, "weak_bar": weak_target,
            "rows": amp, "best_ratio": best["ratio"], "best_target": best["target"], "gain": gain,
            "passes": gain >= bars["amplify_gain"] - _EPS}


def fidelity_summary(rows: Iterable[Mapping[str, Any]], experiment: str, paper_r: float | None = None,
                     model: str | None = None) -> dict | None:
    """The latest fidelity run's Pearson r (and its two-sided p for n ablations); None without rows."""
    cells = _cells(rows, experiment, model)
    r_rows = [r for r in cells if r["metric"] == "fidelity/pearson_r"]
    if not r_rows:
        return None
    last = r_rows[-1]
    n_row = [r for r in cells if r["metric"] == "fidelity/n_ablations" and r.get("run_id") == last.get("run_id")]
    n = int(n_row[-1]["value"]) if n_row else None
    r = float(last["value"])
    return {"concept": last["concept"], "pearson_r": r, "n": n, "p_value": _pearson_p(r, n) if n else None,
            "paper_r": paper_r}


def _pearson_p(r: float, n: int) -> float | None:
    """Two-sided p of Pearson r over n pairs (t with n - 2 degrees of freedom), as scipy.stats.pearsonr gives."""
    if n < 3 or not math.isfinite(r) or abs(r) >= 1:
        return None
    try:
        from scipy.stats import t as student_t
    except ImportError:
        return None
    stat = abs(r) * math.sqrt((n - 2) / (1 - r * r))
    return float(2 * student_t.sf(stat, n - 2))


def summarize(rows: Iterable[Mapping[str, Any]], claims: Mapping[str, Any]) -> dict:
    """Every claim's verdict from results rows and the claims config (conf/claims.yaml as a dict)."""
    rows = list(rows)
    exps, bars, model = claims["experiments"], claims["bars"], claims.get("model")
    points = erase_points(rows, exps["erase"], model)
    if not points:
        raise ClaimsDataError(f"no rows of experiment {exps['erase']!r}: run the claims sweep first "
                              f"(python -m experiments.run -m experiment={exps['erase']}, or make claims)")
    out = {**erase_summary(points, bars), "bars": dict(bars),
           "amplify": amplify_summary(rows, exps["amplify"], bars, float(claims.get("weak_target", 1.0)), model),
           "fidelity": fidelity_summary(rows, exps["fidelity"], claims.get("paper_fidelity_r"), model)}
    out["passes"] = all(k["passes"] for k in out["kinds"]) and (out["amplify"] is None or out["amplify"]["passes"])
    return out


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def claims_markdown(summary: Mapping[str, Any], header: str | None = None) -> str:
    """The claim table, the per-concept verdict table, then every sweep, the amplify rows and the fidelity r."""
    bars = summary["bars"]
    out = [header] if header else []
    out += ["| claim | verdict |", "|---|---|"]
    for k in summary["kinds"]:
        by_rule = "; ".join(f"{r}: {len(c)}" for r, c in k["by_rule"].items())
        out.append(f"| CAD-Erase of a {k['kind']} | {_verdict(k['passes'])}: {len(k['passing'])} of {k['n']} "
                   f"concepts ({', '.join(k['passing']) or 'none'}; by rule {by_rule}) |")
    amp, fid = summary.get("amplify"), summary.get("fidelity")
    if amp is not None:
        out.append(f"| CAD-Amplify '{amp['concept']}' | {_verdict(amp['passes'])} ({amp['gain'] * 100:+.0f} points) |")
    if fid is not None:
        paper = f" (SD 1.4: {fid['paper_r']:.3f})" if fid.get("paper_r") is not None else ""
        out.append(f"| fidelity r ('{fid['concept']}', {fid['n']} ablations) | {fid['pearson_r']:.3f}{paper} |")
    out += ["", "| concept | verdict | per rule: ratio, target, others (random control's target) |", "|---|---|---|"]
    for v in summary["concepts"]:
        shown = []
        for s in v["sweeps"]:
            r = s["shown"]
            shown.append(f"{s['rule']}: {r['ratio']:g}, {r['target']:.2f}, {r['others']:.2f} "
                         f"({r['random_target']:.2f}){' pass' if r['passes'] else ''}")
        out.append(f"| {v['concept']} | {_verdict(v['passes'])} | {'; '.join(shown)} |")
    out += ["", f"The bar: target <= {bars['target']:.0%}, others drop <= {bars['others_drop'] * 100:.0f} points, and "
                f"the random control (as many weights, per tensor) lowers the target <= "
                f"{bars['random_drop'] * 100:.0f} points; CAD-Amplify gains >= {bars['amplify_gain'] * 100:.0f} points."]
    for v in summary["concepts"]:
        for s in v["sweeps"]:
            how = ("top alpha of the target (the paper's rule)" if s["rule"] == "cad"
                   else "alpha over the mean |alpha| of the other concepts of its kind (cad.retain_ranking)")
            out += ["", f"### CAD-Erase '{v['concept']}' ({v['kind']}), rule '{s['rule']}': unedited target "
                        f"{s['base_target']:.2f}, others {s['base_others']:.2f} -- {_verdict(s['passes'])}", "",
                    f"Selection: {how}.", "",
                    "| ratio | target | others | random: target | random: others | bar |", "|---|---|---|---|---|---|"]
            out += [f"| {r['ratio']:g} | {r['target']:.2f} | {r['others']:.2f} | {r['random_target']:.2f} | "
                    f"{r['random_others']:.2f} | {'yes' if r['passes'] else 'no'} |" for r in s["rows"]]
    if amp is not None:
        where = (f"the model after CAD-Erase at ratio {amp['erase_ratio']:g}" if amp.get("erase_ratio") is not None
                 else "the model after its weakening CAD-Erase")
        weak = "" if amp["weakened"] else f" (not weakened: the erase left it >= {amp['weak_bar']:.2f})"
        others = f"others {amp['weak_others']:.2f}; " if amp.get("weak_others") is not None else ""
        out += ["", f"### CAD-Amplify '{amp['concept']}' on {where}: {others}target {amp['weak_target']:.2f}{weak} -> "
                    f"{amp['best_target']:.2f} (gain {amp['gain'] * 100:+.0f} points) -- {_verdict(amp['passes'])}",
                "", "| amplify ratio | target | others |", "|---|---|---|"]
        out += [f"| {r['ratio']:g} | {r['target']:.2f} | {r.get('others', float('nan')):.2f} |" for r in amp["rows"]]
    if fid is not None:
        p = f" (p = {fid['p_value']:.1e})" if fid.get("p_value") is not None else ""
        paper = f"; paper, SD 1.4: {fid['paper_r']:.3f}" if fid.get("paper_r") is not None else ""
        out += ["", f"### Attribution fidelity ('{fid['concept']}', {fid['n']} random ablations): Pearson r = "
                    f"{fid['pearson_r']:.3f}{p}{paper}"]
    return "\n".join(out) + "\n"
