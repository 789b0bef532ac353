"""Train the toy kit (issue 3, item 4) and print its quality figures (item 5).

    python -m experiments.toy_kit                      # full recipe -> cad/toy/kit (the committed kit)
    python -m experiments.toy_kit --recipe micro --out /tmp/kit
    python -m experiments.toy_kit --quality            # only re-measure and print the committed kit's figures
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from cad.toy.kit import DEFAULT_KIT, RECIPES, load_kit, train_kit
    from cad.toy.quality import format_quality, measure_quality

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="full", choices=sorted(RECIPES))
    ap.add_argument("--out", default=str(DEFAULT_KIT), help="kit folder to write (replaced atomically)")
    ap.add_argument("--quality", action="store_true", help="do not train: measure the kit at --out and print")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    t = time.time()
    if args.quality:
        kit = load_kit(args.out)
        q = measure_quality(kit, progress=not args.no_progress)
    else:
        kit = train_kit(args.out, args.recipe, progress=not args.no_progress)
        q = kit.manifest["quality"]
        print(f"kit written to {kit.path} in {time.time() - t:.0f} s "
              f"(stages: { {k: round(v) for k, v in kit.manifest['training']['seconds'].items()} })")
    print(format_quality(q))
    return 0 if all(q["passes"].values()) else 1


if __name__ == "__main__":
    from cad.errors import run_main

    # a missing or tampered kit (KitError) prints alone with exit status 2
    sys.exit(run_main(main, hint="set HYDRA_FULL_ERROR=1 to see the traceback"))
