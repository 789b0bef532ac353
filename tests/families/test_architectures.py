"""The real denoiser architectures (cad.architectures) build on the meta device in seconds, with the
published parameter counts; the component counts each family's spaces will select are pinned and printed
(`pytest -s tests/families/test_architectures.py` shows the table)."""

from __future__ import annotations

import time

import pytest

# name -> (parameters, state-dict values incl. persistent buffers). Anchors: SD 1.x 859,520,964 and SDXL
# 2,567,463,684 (published); SD 3.5 medium ~2.5 B and large ~8.1 B count the pos_embed table, which diffusers
# keeps as a buffer; FLUX.1 ~11.9 B. The others were computed here from the configs.
TOTALS = {
    "sd1": (859_520_964, 859_520_964),
    "sd2": (865_910_724, 865_910_724),
    "sd2_base": (865_910_724, 865_910_724),
    "sdxl": (2_567_463_684, 2_567_463_684),
    "sd35m": (2_243_171_520, 2_469_663_936),
    "sd35l": (8_056_627_520, 8_146_280_768),
    "flux": (11_891_178_560, 11_891_178_560),
    "flux_dev": (11_901_408_320, 11_901_408_320),
}

# name -> {pattern key: (tensors, weights)} for cad.architectures.FF_PATTERNS (0 entries omitted).
# Anchors: SD 1.x ff = 32 tensors / 148,684,800 weights (the paper); SDXL ff = 140 / 1,228,800,000.
_SD_FF = {"unet_ff": (32, 148_684_800), "ff": (32, 148_684_800)}
FF_COUNTS = {
    "sd1": _SD_FF,
    "sd2": _SD_FF,
    "sd2_base": _SD_FF,
    "sdxl": {"unet_ff": (140, 1_228_800_000), "ff": (140, 1_228_800_000)},
    "sd35m": {"unet_ff": (48, 452_984_832), "ff": (48, 452_984_832), "ff_context": (46, 434_110_464)},
    "sd35l": {"unet_ff": (76, 1_798_045_696), "ff": (76, 1_798_045_696), "ff_context": (74, 1_750_728_704)},
    "flux": {
        "unet_ff": (38, 1_434_451_968),
        "ff": (38, 1_434_451_968),
        "ff_context": (38, 1_434_451_968),
        "single_proj_mlp": (38, 1_434_451_968),
    },
}
FF_COUNTS["flux_dev"] = FF_COUNTS["flux"]


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def test_registry_has_every_family():
    from cad.architectures import ARCHITECTURES

    assert {"sd1", "sd2", "sdxl", "sd35m", "sd35l", "flux"} <= set(ARCHITECTURES)
    assert set(ARCHITECTURES) == set(TOTALS)
    for spec in ARCHITECTURES.values():
        assert spec["class_name"] in {
            "UNet2DConditionModel",
            "SD3Transformer2DModel",
            "FluxTransformer2DModel",
        }


@pytest.mark.parametrize("name", list(TOTALS))
def test_meta_build_counts(name):
    import diffusers

    from cad.architectures import ARCHITECTURES, FF_PATTERNS, build_on_meta, checkpoint_numel, count_matching

    getattr(diffusers, ARCHITECTURES[name]["class_name"])  # diffusers imports lazily: not the build's cost

    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    model = build_on_meta(name)
    elapsed = time.perf_counter() - t0
    rss1 = _rss_bytes()
    assert all(p.is_meta for p in model.parameters()) and all(b.is_meta for b in model.buffers())
    assert elapsed < 10.0, f"meta build of {name} took {elapsed:.1f}s"
    if rss0 is not None:
        assert rss1 - rss0 < 256 * 2**20, f"meta build of {name} allocated {(rss1 - rss0) / 2**20:.0f} MiB"

    params = sum(p.numel() for p in model.parameters())
    counts = {k: count_matching(model, pat) for k, pat in FF_PATTERNS.items()}
    row = "  ".join(f"{k} {n}/{w:,}" for k, (n, w) in counts.items() if n)
    print(f"\n{name:9s} params {params:,}  state-dict {checkpoint_numel(model):,}  {elapsed:.2f}s  {row}")
    assert (params, checkpoint_numel(model)) == TOTALS[name]
    assert {k: v for k, v in counts.items() if v[0]} == FF_COUNTS[name]


def test_mmdit_ff_pattern_never_matches_ff_context():
    import re

    from cad.architectures import FF_PATTERNS, build_on_meta

    names = [n for n, _ in build_on_meta("flux").named_parameters()]
    ff = [n for n in names if re.search(FF_PATTERNS["ff"], n)]
    assert ff and not any("ff_context" in n for n in ff)
    assert all(n.startswith("transformer_blocks.") for n in ff)  # single blocks have no ff
