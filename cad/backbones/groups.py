"""Where a denoiser parameter sits in the forward pass: the structure the attribution analyses group by.

A family's `Backbone.group_of(name)` returns a `ComponentGroup` from the parameter name alone (so a saved
scores folder is readable without loading the model); `Backbone.component_groups` orders and gathers them.
Two shapes are covered here, each used by the families that share it:
- `unet_group` (sd, sdxl): in / down.<level> / mid / up.<level> / out; inside a block the resnets and
  transformer models alternate (resnet j, attn j, ..., then the down/up sampler); inside a transformer model
  each transformer block has self-attention (attn1), cross-attention (attn2) and the feed-forward (ff.net.0,
  ff.net.2).
- `mmdit_group` (sd3, flux): in / joint.<i> (two-stream blocks: image and context stream) / single.<i>
  (FLUX's one-stream blocks over [text ; image] tokens) / out.

The order key follows the forward pass, not the registration order: UNet2DConditionModel registers its up
blocks before its mid block, and a down block its attentions before its resnets.
"""

from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("block", "module", "kind", "part")


@dataclass(frozen=True)
class ComponentGroup:
    """One parameter's place: `block` (depth: "down.1", "mid", "joint.3"), `module` inside it ("attn.0/tb.0",
    "resnet.1", "image.ff"), `kind` ("ff", "self_attn", "cross_attn", "attn", "resnet", "proj", "norm", ...),
    `part` (the tensor's role: "ff.net.0", "attn2.to_k", "conv1"), `stream` (MMDiT: image / context / joint),
    and `order`, a sort key in forward order (block, then module)."""

    block: str
    module: str
    kind: str
    part: str
    order: tuple
    stream: str | None = None

    def label(self, level: str = "module") -> str:
        if level not in LEVELS:
            raise ValueError(f"unknown grouping level {level!r}; use one of {LEVELS}")
        if level == "block":
            return self.block
        if level == "kind":
            return f"{self.block}/{self.kind}"
        if level == "module":
            return f"{self.block}/{self.module}"
        return f"{self.block}/{self.module}/{self.part}"


def _part(rest: list[str]) -> str:
    """The tensor's role without its parameter suffix and the GEGLU's inner `proj`."""
    if rest and rest[-1] in ("weight", "bias"):
        rest = rest[:-1]
    if rest[-3:] == ["net", "0", "proj"]:
        rest = rest[:-1]
    return ".".join(rest) or "-"


def _attn_kind(part: str) -> str:
    head = part.split(".")[0]
    if head.startswith("ff"):
        return "ff"
    if head == "attn1":
        return "self_attn"
    if head == "attn2":
        return "cross_attn"
    if head.startswith("norm"):
        return "norm"
    return head


_UNET_STAGES = {"down_blocks": (1, "down"), "mid_block": (2, "mid"), "up_blocks": (3, "up")}


def unet_group(name: str) -> ComponentGroup:
    """The group of a UNet2DConditionModel parameter (SD 1.x/2.x, SDXL)."""
    p = name.split(".")
    if p[0] in ("down_blocks", "up_blocks"):
        stage, prefix = _UNET_STAGES[p[0]]
        level = int(p[1])
        block, rest = f"{prefix}.{level}", p[2:]
    elif p[0] == "mid_block":
        stage, level, block, rest = 2, 0, "mid", p[1:]
    elif p[0] in ("conv_norm_out", "conv_out"):
        return ComponentGroup("out", p[0], "conv" if p[0] == "conv_out" else "norm", _part(p), (4, 0, 0, 0))
    else:  # the embeddings run first (the timestep's, then SDXL's added one), then conv_in
        rank = 2 if p[0] == "conv_in" else 0 if p[0].startswith("time") else 1
        return ComponentGroup("in", p[0], "conv" if p[0] == "conv_in" else "embed", _part(p), (0, 0, rank, 0))
    head = rest[0]
    if head in ("resnets", "attentions"):
        j = int(rest[1])
        inner = rest[2:]
        if head == "resnets":
            return ComponentGroup(block, f"resnet.{j}", "resnet", _part(inner), (stage, level, j, 0))
        if inner[0] == "transformer_blocks":
            k, part = int(inner[1]), _part(inner[2:])
            return ComponentGroup(block, f"attn.{j}/tb.{k}", _attn_kind(part), part, (stage, level, j, 1, k))
        # proj_in before the transformer blocks, proj_out and the norm after them
        where = -1 if inner[0] in ("norm", "proj_in") else 10**6
        return ComponentGroup(block, f"attn.{j}/{inner[0]}", "proj", _part(inner), (stage, level, j, 1, where))
    # downsamplers / upsamplers close the block
    return ComponentGroup(block, head.rstrip("s"), "sampler", _part(rest[1:]), (stage, level, 10**6, 0))


_CONTEXT_PARTS = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "norm_added_q", "norm_added_k")


def mmdit_group(name: str) -> ComponentGroup:
    """The group of an SD3Transformer2DModel / FluxTransformer2DModel parameter."""
    p = name.split(".")
    if p[0] in ("transformer_blocks", "single_transformer_blocks"):
        i, rest = int(p[1]), p[2:]
        part = _part(rest)
        head = rest[0]
        if p[0] == "single_transformer_blocks":
            # one stream over [text ; image]; proj_out fuses the attention output with the MLP's
            kind = {"proj_mlp": "ff", "proj_out": "attn+ff"}.get(head, "norm" if head.startswith("norm") else "attn")
            return ComponentGroup(f"single.{i}", f"joint.{kind}", kind, part, (2, i), stream="joint")
        context = "context" in head or (head == "attn" and len(rest) > 1 and rest[1] in _CONTEXT_PARTS)
        stream = "context" if context else "image"
        kind = "ff" if head.startswith("ff") else "norm" if head.startswith("norm") else "attn"
        return ComponentGroup(f"joint.{i}", f"{stream}.{kind}", kind, part, (1, i), stream=stream)
    if p[0] in ("norm_out", "proj_out"):
        return ComponentGroup("out", p[0], "norm" if p[0] == "norm_out" else "proj", _part(p), (3, 0))
    return ComponentGroup("in", p[0], "embed", _part(p), (0, 0))
