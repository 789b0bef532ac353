"""Backbone.group_of / component_groups on every tiny pipeline: every parameter in exactly one group, and the
groups in the order the forward pass reaches them (recorded with forward hooks on a real denoiser call)."""

from __future__ import annotations

import pytest
import torch

from cad.backbones import wrap

SIZES = {"sd": 32, "sdxl": 8, "sd3": 4, "flux": 4}


def _build(family: str):
    from cad import tiny

    return {"sd": tiny.build_tiny_pipeline, "sdxl": tiny.build_tiny_sdxl_pipeline,
            "sd3": tiny.build_tiny_sd3_pipeline, "flux": tiny.build_tiny_flux_pipeline}[family](0)


def _first_calls(bb) -> dict[str, int]:
    """Module name -> the index of its first forward call in one denoising step."""
    order: dict[str, int] = {}
    handles = []
    for name, mod in bb.denoiser.named_modules():
        def hook(_m, _args, name=name):
            order.setdefault(name, len(order))
        handles.append(mod.register_forward_pre_hook(hook))
    try:
        size = SIZES[bb.family]
        with torch.no_grad():
            bb.pipe("a red circle", num_inference_steps=1, height=size, width=size, output_type="latent",
                    **bb.call_kwargs(2.0))
    finally:
        for h in handles:
            h.remove()
    return order


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_groups_partition_and_follow_the_forward_pass(family):
    bb = wrap(_build(family))
    params = [n for n, _ in bb.denoiser.named_parameters()]
    calls = _first_calls(bb)
    levels = ["block", "module"] if family in ("sd", "sdxl") else ["block"]
    for level in ["block", "module", "kind", "part"]:
        groups = bb.group_names(params, level)
        flat = [n for members in groups.values() for n in members]
        assert sorted(flat) == sorted(params) and len(flat) == len(set(flat)), level  # each in exactly one
        if level not in levels:
            continue

        def reached(names):
            mods = [calls[m] for m in (n.rsplit(".", 1)[0] for n in names) if m in calls]
            return mods

        spans = [(g, reached(m)) for g, m in groups.items()]
        spans = [(g, r) for g, r in spans if r]  # parameters of modules the step never calls (none expected)
        for (a, ra), (b, rb) in zip(spans, spans[1:]):
            assert max(ra) < min(rb), f"{family} {level}: group {a} runs after {b}"
    # the presets resolve into groups too, in forward order, and ff is only feed-forward
    ff = bb.component_groups("ff", "part")
    assert ff and all(label.split("/")[-1].startswith(("ff", "proj_mlp")) for label in ff)


def test_unet_groups_name_the_structure():
    from cad.backbones.sd import SDBackbone

    g = SDBackbone.group_of("up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight")
    assert (g.block, g.module, g.kind, g.part) == ("up.2", "attn.1/tb.0", "cross_attn", "attn2.to_k")
    g = SDBackbone.group_of("down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight")
    assert (g.kind, g.part, g.label("part")) == ("ff", "ff.net.0", "down.1/attn.0/tb.0/ff.net.0")
    assert SDBackbone.group_of("mid_block.resnets.1.conv2.weight").label("kind") == "mid/resnet"
    # the mid block runs between the down and up blocks although UNet2DConditionModel registers it last
    names = ["up_blocks.0.resnets.0.conv1.weight", "mid_block.resnets.0.conv1.weight",
             "down_blocks.0.resnets.0.conv1.weight", "conv_out.weight", "conv_in.weight"]
    assert list(SDBackbone.group_names(names, "block")) == ["in", "down.0", "mid", "up.0", "out"]


def test_mmdit_groups_name_streams():
    from cad.backbones.flux import FluxBackbone

    g = FluxBackbone.group_of("transformer_blocks.3.attn.add_k_proj.weight")
    assert (g.block, g.stream, g.kind) == ("joint.3", "context", "attn")
    g = FluxBackbone.group_of("transformer_blocks.3.ff_context.net.2.weight")
    assert (g.stream, g.kind, g.part) == ("context", "ff", "ff_context.net.2")
    g = FluxBackbone.group_of("single_transformer_blocks.0.proj_mlp.weight")
    assert (g.block, g.kind) == ("single.0", "ff")
