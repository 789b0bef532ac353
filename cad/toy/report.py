"""Tables and figures of the toy claims: a markdown table, before/after image grids, the fidelity scatter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cad.io import atomic_save_image, atomic_write_bytes
from cad.toy.world import KINDS


def image_grid(rows: list[torch.Tensor], per_row: int, scale: int = 2, pad: int = 2):
    """PIL grid: one row per tensor (N, 3, H, W) in [0, 1], its first per_row images."""
    from PIL import Image

    h, w = rows[0].shape[-2:]
    canvas = np.ones((len(rows) * (h + pad) + pad, per_row * (w + pad) + pad, 3), dtype=np.float32)
    for i, imgs in enumerate(rows):
        for j, img in enumerate(imgs[:per_row]):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = img.permute(1, 2, 0).numpy()
    pil = Image.fromarray((canvas * 255).round().astype(np.uint8))
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)


def pick(images: torch.Tensor, kind: str, seeds: int, per_concept: int) -> torch.Tensor:
    """The first per_concept images of every concept of `kind` (images are concept-major, seeds inner)."""
    n = len(KINDS[kind])
    return torch.cat([images[i * seeds : i * seeds + per_concept] for i in range(n)])


def erase_grid(path: Path, sweep: dict, seeds: int, per_concept: int = 3) -> Path:
    """Rows: the unedited model, then every ratio; columns: each concept of the kind, per_concept seeds."""
    kind = sweep["kind"]
    rows = [pick(sweep["images"]["base"], kind, seeds, per_concept)]
    rows += [pick(sweep["images"][r["ratio"]], kind, seeds, per_concept) for r in sweep["rows"]]
    return atomic_save_image(path, image_grid(rows, per_concept * len(KINDS[kind])))


def amplify_grid(path: Path, amp: dict, kind: str, seeds: int, per_concept: int = 3) -> Path:
    rows = [pick(amp["images"]["weak"], kind, seeds, per_concept),
            pick(amp["images"]["amplified"], kind, seeds, per_concept)]
    return atomic_save_image(path, image_grid(rows, per_concept * len(KINDS[kind])))


def fidelity_scatter(path: Path, fid: dict) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    sc = ax.scatter(fid["predicted"], fid["measured"], c=np.log10(fid["fractions"]), s=10, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="log10 share of ff weights ablated")
    ax.set_xlabel("predicted change of J_erase (-sum alpha)")
    ax.set_ylabel("measured change of J_erase")
    ax.set_title(f"toy world, '{fid['concept']}': r = {fid['pearson_r']:.3f} (SD 1.4: 0.506)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def claims_table(erase: list[dict], amp: dict | None, fid: dict | None) -> str:
    """Markdown: a verdict per claim (CAD-Erase of a kind passes when some concept of it meets the bars under
    some rule at some ratio; each concept's verdict follows), then every erase sweep row per rule, the amplify
    result, the fidelity r."""
    from cad.toy.claims import erase_claims, kind_claims

    out = ["| claim | verdict |", "|---|---|"]
    for k in kind_claims(erase):
        by_rule = "; ".join(f"{r}: {len(c)}" for r, c in k["by_rule"].items())
        out.append(f"| CAD-Erase of a {k['kind']} | {'PASS' if k['passes'] else 'FAIL'}: {len(k['passing'])} of "
                   f"{k['n']} concepts ({', '.join(k['passing']) or 'none'}; by rule {by_rule}) |")
    if amp is not None:
        out.append(f"| CAD-Amplify '{amp['concept']}' | {'PASS' if amp['passes'] else 'FAIL'} "
                   f"({amp['gain'] * 100:+.0f} points) |")
    if fid is not None:
        out.append(f"| fidelity r ('{fid['concept']}', {fid['n']} ablations) | {fid['pearson_r']:.3f} "
                   f"(SD 1.4: 0.506) |")
    # per rule, the first passing row; failing, the lowest target among rows whose others drop within the bar
    # (or the lowest target of all when none does)
    out += ["\n| concept | verdict | per rule: ratio, target, others (random control's target) |", "|---|---|---|"]
    for v in erase_claims(erase):
        best = []
        for s in (s for s in erase if s["concept"] == v["concept"]):
            row = next((r for r in s["rows"] if r["passes"]), None) or min(
                s["rows"], key=lambda r: (s["base_others"] - r["others"] > s["bars"]["others_drop"], r["target"]))
            best.append(f"{s['rule']}: {row['ratio']}, {row['target']:.2f}, {row['others']:.2f} "
                        f"({row['random_target']:.2f}){' pass' if row['passes'] else ''}")
        out.append(f"| {v['concept']} | {'PASS' if v['passes'] else 'FAIL'} | {'; '.join(best)} |")
    for s in erase:
        rule = s["rule"]
        how = ("top alpha of the target (the paper's rule)" if rule == "cad" else
               f"alpha over the {s['retain']['reduce']} |alpha| of {', '.join(s['retain']['concepts'])} "
               "(cad.retain_ranking)")
        out.append(f"\n### CAD-Erase '{s['concept']}' ({s['kind']}), rule '{rule}': unedited target "
                   f"{s['base_target']:.2f}, others {s['base_others']:.2f} -- {'PASS' if s['passes'] else 'FAIL'}\n")
        out.append(f"Selection: {how}.")
        bars = s["bars"]
        out.append(f"J_erase base prompt c_base = {s.get('base_prompt', '')!r}"
                   f"{' (an anchor concept, not the default empty prompt)' if s.get('base_prompt') else ''}; "
                   f"component space {s.get('space', 'ff')!r}, selection granularity {s.get('granularity', 'row')!r}. "
                   f"The bar: target <= {bars['target']:.0%}, others drop <= {bars['others_drop'] * 100:.0f} points, "
                   f"and the random control (as many weights of the space, per tensor) lowers the target <= "
                   f"{bars['random_drop'] * 100:.0f} points.\n")
        out.append("| ratio | ablated | fraction | target | others | random: target | random: others | bar |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in s["rows"]:
            out.append(f"| {r['ratio']} | {r['n_ablated']} | {r['fraction']:.4f} | {r['target']:.2f} | "
                       f"{r['others']:.2f} | {r['random_target']:.2f} | {r['random_others']:.2f} | "
                       f"{'yes' if r['passes'] else 'no'} |")
    if amp is not None:
        where = ("the unedited model (under-specified prompt)" if amp["weak"] == "prompt"
                 else f"the model after CAD-Erase at ratio {amp['weak_erase_ratio']}")
        out.append(f"\n### CAD-Amplify '{amp['concept']}' on {where}: others {amp['weak_others']:.2f}; target "
                   f"{amp['weak_target']:.2f} -> {amp['best_target']:.2f} "
                   f"(gain {amp['gain'] * 100:+.0f} points) -- {'PASS' if amp['passes'] else 'FAIL'}\n")
        out.append("| amplify ratio | ablated (erase + amplify) | target | others |")
        out.append("|---|---|---|---|")
        for r in amp["rows"]:
            out.append(f"| {r['ratio']} | {r['n_ablated_total']} | {r['target']:.2f} | {r['others']:.2f} |")
    if fid is not None:
        out.append(f"\n### Attribution fidelity ('{fid['concept']}', {fid['n']} random ff ablations): "
                   f"Pearson r = {fid['pearson_r']:.3f} (p = {fid['p_value']:.1e}); paper, SD 1.4: 0.506; "
                   f"c_base = {fid.get('base_prompt', '')!r}\n")
    return "\n".join(out) + "\n"
