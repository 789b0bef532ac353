"""The paper's claims on the toy world (issue 3, item 6): prints the table, writes grids and the scatter.

    python -m experiments.toy_claims                       # committed kit, every concept -> outputs/toy_claims/
    python -m experiments.toy_claims --concepts circle red # a few concepts
    python -m experiments.toy_claims --kit /tmp/kit --seeds 8 --fidelity-n 50 --out /tmp/claims
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch

    from cad.io import atomic_write_json, atomic_write_text, package_versions
    from cad.toy import claims, report
    from cad.toy.kit import load_kit
    from cad.toy.world import kind_of

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kit", default=None, help="kit folder (default: the committed cad/toy/kit)")
    ap.add_argument("--out", default="outputs/toy_claims")
    ap.add_argument("--concepts", nargs="+", default=None, help="concepts to erase (default: every concept)")
    ap.add_argument("--ratios", nargs="+", type=float, default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--fidelity-n", type=int, default=None)
    ap.add_argument("--base-prompt", default=None, help='CAD-Erase J_erase base prompt: a prompt, or "anchor" (the first other value of the concept\'s kind)')
    ap.add_argument("--granularity", default=None, choices=["row", "tensor", "global"])
    ap.add_argument("--space", default=None, help='component space (cad.get_space), default "ff" (the paper\'s)')
    ap.add_argument("--rules", nargs="+", default=None, choices=["cad", "retain"],
                    help="selection rules to sweep (cad: top alpha; retain: alpha over the siblings' |alpha|)")
    ap.add_argument("--amplify-concept", default=None, help='a concept, or "auto" (the kit\'s weakest)')
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    kit = load_kit(args.kit)
    cfg = claims.ClaimsConfig(steps=kit.manifest["sampler"]["steps"], guidance=kit.manifest["sampler"]["guidance"])
    over = {"concepts": tuple(args.concepts) if args.concepts else None,
            "ratios": tuple(args.ratios) if args.ratios else None, "seeds": args.seeds,
            "fidelity_n": args.fidelity_n, "granularity": args.granularity, "base_prompt": args.base_prompt,
            "amplify_concept": args.amplify_concept, "rules": tuple(args.rules) if args.rules else None,
            "space": args.space}
    cfg = replace(cfg, **{k: v for k, v in over.items() if v is not None})
    for c in cfg.concepts:
        kind_of(c)  # an unknown concept stops here, naming the known ones, before any model loads
    out = Path(args.out)
    pipe = kit.load_pipeline()
    t = time.time()
    timings = {}
    erase = []
    cache = claims.SweepCache()  # scores, unedited accuracies and random controls shared by every sweep
    for c in cfg.concepts:
        t1 = time.time()
        for rule in cfg.rules:
            s = claims.erase_sweep(pipe, kit.classifier, c, cfg, progress=args.progress, rule=rule, cache=cache)
            report.erase_grid(out / f"erase_{c}_{rule}.png", s, cfg.seeds)
            erase.append(s)
        timings[f"erase_{c}"] = time.time() - t1
        print(f"erase {c}: done in {timings[f'erase_{c}']:.0f} s", flush=True)
    t1 = time.time()
    concept, weak_acc = (claims.weakest_concept(kit) if cfg.amplify_concept == "auto"
                         else (cfg.amplify_concept, None))
    if cfg.amplify_concept == "auto":
        # weak already (under-specified prompt) -> amplify the unedited model; else weaken it by a small erase
        cfg = replace(cfg, amplify_weak="prompt" if weak_acc < cfg.weak_target else "erase")
    src = next((s for s in erase if s["concept"] == concept), None)  # its "scores" are the plain alpha
    if src is None and cfg.amplify_weak == "erase":
        src = claims.erase_sweep(pipe, kit.classifier, concept, cfg, cache=cache)
    amp = claims.amplify_claim(pipe, kit.classifier, concept, cfg, erase=src, progress=args.progress)
    report.amplify_grid(out / f"amplify_{amp['concept']}.png", amp, kind_of(concept), cfg.seeds)
    timings["amplify"] = time.time() - t1
    t1 = time.time()
    fid = claims.fidelity(pipe, cfg.concepts[0], cfg, progress=args.progress)
    report.fidelity_scatter(out / "fidelity.png", fid)
    timings["fidelity"] = time.time() - t1
    table = report.claims_table(erase, amp, fid)
    print(table)
    strip = ("scores", "images")
    atomic_write_text(out / "table.md", table)
    atomic_write_json(out / "results.json", {
        "erase": [{k: v for k, v in s.items() if k not in strip} for s in erase],
        "amplify": {k: v for k, v in amp.items() if k not in strip}, "fidelity": fid,
        "config": claims.config_dict(cfg), "kit": {"path": str(kit.path), "manifest_files": kit.manifest["files"],
                                                   "recipe": kit.manifest["recipe"]["name"]},
        "versions": package_versions(), "seconds": {**timings, "total": time.time() - t}})
    print(f"wrote {out}/table.md, results.json, erase_<concept>_<rule>.png, amplify_*.png, fidelity.png "
          f"in {time.time() - t:.0f} s")
    return 0 if all(k["passes"] for k in claims.kind_claims(erase)) and amp["passes"] else 1


if __name__ == "__main__":
    sys.exit(main())
