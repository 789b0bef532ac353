"""`python -m cad.inspect <scores folder> [--compare <other>] [--plot [PNG]]`: read attribution scores without code.

Prints the record (what made the scores), tensor and weight counts, the identity check (the embedded identity
against meta.json, the tensors against their content sha256; a tampered folder fails here with exit status 2),
the top components with their place in the denoiser, and the positive and negative mass per block. The model
is not loaded: the grouping comes from the family's Backbone.group_of, by parameter name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RECORD_KEYS = ("model", "family", "concept", "objective", "estimator", "steps", "schedule_steps", "guidance",
               "num_samples", "seed", "base_prompt", "protocol", "dtype", "unet_fingerprint", "unet_calls",
               "objective_value", "created")


def _family(meta: dict):
    from cad.backbones import get_family

    return get_family(meta.get("family") or "sd")


def load_checked(folder: str | Path):
    """(scores, None) or (None, the reason the identity check failed)."""
    from cad.io import ArtifactCorruptError
    from cad.scores import AttributionScores, ScoresMismatchError

    try:
        return AttributionScores.load(folder), None
    except (ArtifactCorruptError, ScoresMismatchError, FileNotFoundError) as err:
        return None, str(err)


def describe(scores, *, top: int = 10, fraction: float = 0.01, level: str = "block") -> list[str]:
    """The report's lines for loaded scores."""
    import torch

    from cad.analysis import flatten, gini, group_mass

    meta = scores.meta
    space = meta.get("space") or {}
    lines = ["record:"] + [f"  {k}: {meta[k]}" for k in RECORD_KEYS if meta.get(k) not in (None, "")]
    lines.append(f"  space: {space.get('name', space)} (pattern {space.get('pattern')})" if isinstance(space, dict)
                 else f"  space: {space}")
    v = flatten(scores)
    lines += [f"tensors: {len(scores)}, weights: {v.numel():,} (positive {int((v > 0).sum()):,}, negative "
              f"{int((v < 0).sum()):,}, zero {int((v == 0).sum()):,})",
              f"mass: positive {float(v.clamp(min=0).sum()):.6g}, negative {float(v.clamp(max=0).sum()):.6g}; "
              f"Gini-style concentration: positive {gini(v, 'positive'):.3f}, negative {gini(v, 'negative'):.3f}"]
    fam = _family(meta)
    names = scores.names
    starts, offset = {}, 0
    for n in names:
        starts[n] = offset
        offset += scores.scores[n].numel()
    for sign, largest in (("positive", True), ("negative", False)):
        k = min(top, v.numel())
        idx = torch.topk(v if largest else -v, k).indices
        lines.append(f"top {k} {sign} components:")
        for i in idx.tolist():
            name = max((n for n in names if starts[n] <= i), key=lambda n: starts[n])
            local = i - starts[name]
            where = tuple(int(x) for x in torch.unravel_index(torch.tensor(local), scores.scores[name].shape))
            lines.append(f"  {float(v[i]):+.4e}  {name}{list(where)}  [{fam.group_of(name).label('module')}]")
    rows = group_mass(scores, fam.group_names(names, level), fraction)
    lines += [f"mass per {level} (forward order; top {fraction:.1%} shares against a same-count random draw):",
              f"  {'group':<28}{'weights':>10}{'Σα+':>12}{'Σα-':>12}{'top+':>7}{'top-':>7}{'random':>8}"]
    for r in rows:
        lines.append(f"  {r['group']:<28}{r['n']:>10,}{r['pos']:>12.4g}{r['neg']:>12.4g}{r['top_pos_share']:>7.2f}"
                     f"{r['top_neg_share']:>7.2f}{r['random_pos_share']:>8.2f}")
    return lines


def compare(a, b, fractions=(0.001, 0.01, 0.1)) -> list[str]:
    from cad.analysis import chance_jaccard, jaccard, spearman

    if a.names != b.names or any(a.scores[n].shape != b.scores[n].shape for n in a.names):
        raise ValueError("the two folders hold scores of different component spaces (tensor names or shapes differ)")
    lines = [f"compare: {a.meta.get('concept')!r} ({a.meta.get('objective')}) with {b.meta.get('concept')!r} "
             f"({b.meta.get('objective')})", f"  Spearman rho of alpha: {spearman(a, b):.4f}"]
    for f in fractions:
        lines.append(f"  top {f:.1%}: Jaccard positive {jaccard(a, b, f, 'positive'):.4f}, negative "
                     f"{jaccard(a, b, f, 'negative'):.4f} (chance {chance_jaccard(f):.4f})")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cad.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a scores folder (scores.safetensors + meta.json)")
    p.add_argument("--compare", metavar="OTHER", help="another scores folder of the same space")
    p.add_argument("--plot", nargs="?", const="where.png", metavar="PNG",
                   help="write the where-figure (mass along depth) to PNG (default ./where.png)")
    p.add_argument("--top", type=int, default=10, help="top components listed per sign (default 10)")
    p.add_argument("--fraction", type=float, default=0.01, help="share of components in a top set (default 0.01)")
    p.add_argument("--level", default="block", choices=("block", "module", "kind", "part"),
                   help="grouping of the mass table (default block)")
    args = p.parse_args(argv)
    print(f"scores: {args.folder}")
    scores, error = load_checked(args.folder)
    if scores is None:
        print(f"identity: FAILED: {error}")
        return 2
    print("identity: ok (the identity embedded in scores.safetensors matches meta.json, the tensors match their "
          "content sha256; the model itself is checked when the scores are used with it)")
    print("\n".join(describe(scores, top=args.top, fraction=args.fraction, level=args.level)))
    if args.compare:
        other, error = load_checked(args.compare)
        if other is None:
            print(f"compare: identity of {args.compare} FAILED: {error}")
            return 2
        print("\n".join(compare(scores, other)))
    if args.plot:
        from cad.analysis import group_mass
        from cad.analysis.plots import where_png
        from cad.io import atomic_write_bytes

        fam = _family(scores.meta)
        rows = group_mass(scores, fam.group_names(scores.names, "module"), args.fraction)
        path = atomic_write_bytes(Path(args.plot), where_png(rows, f"{scores.meta.get('concept')}: α along depth"))
        print(f"where-figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
