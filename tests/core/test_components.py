"""Component spaces and which tensors receive gradients."""

from __future__ import annotations

import pytest
import torch

from cad import get_space
from cad.components import enable_only


def test_ff_space_is_the_papers_choice(small_pipe):
    chosen = get_space("ff").select(small_pipe.unet)
    # Tiny UNet: 4 transformer blocks (1 down, 1 mid, 2 up), each a GEGLU proj and an output matrix.
    assert len(chosen) == 8
    assert all(p.ndim == 2 and ".ff.net." in n for n, p in chosen.items())
    assert {n.rsplit(".ff.", 1)[1] for n in chosen} == {"net.0.proj.weight", "net.2.weight"}


def test_presets_partition_sensibly(small_pipe):
    unet = small_pipe.unet
    attn = get_space("attn").select(unet)
    assert set(attn) == set(get_space("self_attn").select(unet)) | set(get_space("cross_attn").select(unet))
    assert all(n.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")) for n in attn)
    linear = get_space("linear").select(unet)
    assert set(attn) <= set(linear) and set(get_space("ff").select(unet)) <= set(linear)
    assert all(p.ndim == 4 for p in get_space("conv").select(unet).values())
    assert set(get_space(r"regex:attn2\.to_k").select(unet)) == {n for n in attn if "attn2.to_k" in n}


def test_enable_only_sets_requires_grad(small_pipe):
    unet = small_pipe.unet
    before = {n: p.requires_grad for n, p in unet.named_parameters()}
    try:
        chosen = enable_only(small_pipe, "cross_attn")
        flags = {n: p.requires_grad for n, p in unet.named_parameters()}
        assert {n for n, f in flags.items() if f} == set(chosen)
    finally:
        for n, p in unet.named_parameters():
            p.requires_grad_(before[n])


@pytest.mark.parametrize("space,match", [("mlp", "unknown component space"), ("regex:(", "invalid regex"),
                                         ("regex:", "empty regex"), ("regex:nothing_like_this", "matches no")])
def test_bad_spaces_raise(small_pipe, space, match):
    with pytest.raises(ValueError, match=match):
        get_space(space).select(small_pipe.unet)


def test_sd14_ff_space_size():
    """The paper's count on SD 1.4's architecture: 32 tensors, 148,684,800 weights (meta device: no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                                    attention_head_dim=8, layers_per_block=2, sample_size=64)
    chosen = get_space("ff").select(unet)
    assert len(chosen) == 32 and sum(p.numel() for p in chosen.values()) == 148_684_800
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
