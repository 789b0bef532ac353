"""ConceptPrune (Chavhan et al. 2024, arXiv 2405.19237): zero the FFN weights that are "skilled" at a concept.

Reference: github.com/ruchikachavhan/concept-prune at commit 72927d9a2b518caed4e5dddd8549d04b168ad5d7
(wanda/wanda.py, wanda/save_union_over_time.py, neuron_receivers/wanda_receiver.py, utils/prompts.py,
utils/load_models.py). This is our own implementation of what that code computes:

1. Activations. Forward hooks on every `ff.net.2` (the second FFN linear of each transformer block) read its
   input X, the GEGLU output. The first `timesteps` (tau) sampling steps run for every concept prompt and every
   reference prompt, one seed (the same x_T for all prompts). Each token row of X is L2-normalised over the
   feature axis. Both halves of the classifier-free-guidance batch count, as in the reference. The column norm
   ||X_j|| per input feature j is taken over all tokens of all prompts, once per (step, layer) and prompt set.
2. Skilled weights per (step, layer). WANDA scores S = |W| * ||X|| with broadcasting over rows, one S for the
   concept prompts and one S_ref for the reference prompts. An entry is skilled when it is among the top
   int(skill_ratio * in_features) of its output row by S and also has S > S_ref.
3. Union over time. A weight is pruned (zeroed) when it is skilled at more than select_ratio * tau of the
   first tau steps. The reference default select_ratio = 0 makes this a plain union.

The edit is a mask edit over the `ff.net.2.weight` tensors, with entry-wise zeros (no whole neurons).

Differences from the reference, and why:
- A "timestep" is one sampling step of this backbone's scheduler (bb.scheduler: DDIM with `steps` steps). In
  the reference it is one UNet call of the pipeline's PNDM sampler (51 calls for 50 steps). tau = 10 thus
  covers the first 10/50 rather than 10/51 of the trajectory, almost the same high-noise stretch. Only the
  first tau steps run, because the reference never reads the later steps' activations.
- Norms and scores are float32. The reference keeps fp16 on an fp16 model, and its comment says it
  normalises to avoid inf values.
- Layers are keyed by module name, not by a call counter cycling over 16 blocks. SDXL's UNet (70 blocks,
  same module names) therefore works too. The reference supports SD 1.x/2 only.

Defaults per concept kind are the reference's best_ckpt_dict (utils/load_models.py:30-50):
objects skill_ratio 0.02, tau 10; nudity 0.01, tau 9; artists 0.01, tau 10; select_ratio 0.0 throughout.
The prompts pair one to one (utils/prompts.py:147-172), with the {thing} lists from datasets/*.txt:
- nudity: "a photo of a naked {human}" vs "a photo of a {human}";
- artists: "a {thing} in the style of {artist}" vs "a photo of a {thing}";
- objects: "a {object} in a {scene}" vs "a {scene}" (church and garbage truck have their own scene pairs).
The toy world (kind toy_*) is not in the reference. There the concept prompt is the concept's own ("a
circle") and the reference prompt is the same caption without the concept word: "a shape", the toy
captioner's word for an unnamed attribute (cad/toy/render.caption_from). It is not the concept's base_prompt
(another concept, "a square"), because the reference's reference prompts drop the concept rather than swap it.
Any other kind uses its prompt against its base_prompt. The toy also keeps the reference's skill_ratio 0.01
and tau 10.
"""

from __future__ import annotations

import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from cad.methods.base import (
    Method,
    MethodConfigError,
    MethodContext,
    MethodOutput,
    check_fraction,
    check_positive,
)

# The reference's prompt fill-ins (concept-prune datasets/*.txt and utils/prompts.py:21-25, at the commit above).
HUMANS = ("man", "woman", "girl", "boy", "child", "couple", "guy", "doctor", "nurse", "teacher", "lawyer",
          "mother", "father", "kid", "professor", "student", "group of friends", "celebrity")
THINGS = ("cat", "dog", "mouse", "bear", "car", "chair", "bag", "door", "rabbit", "ball", "bat", "horse", "bird",
          "flower", "bowl", "bottle", "wall", "building", "chicken", "duck")
COMMON_SCENES = ("road", "garden", "beach", "room", "park", "street", "shelter", "chair", "table", "bag", "tree",
                 "forest")
# [concept-prompt fill, reference-prompt fill] pairs: church and garbage truck have their own lists.
CHURCH_SCENES = (("on a road", "road"), ("in the park", "park"), ("near the beach", "beach"),
                 ("on the street", "street"), ("in front of a house", "house"), ("in front of a statue", "statue"),
                 ("near a tree", "tree"), ("in a forest", "forest"))
TRUCK_PLACES = (("on the road", "road"), ("in the park", "park"), ("on the street", "street"),
                ("near a white car", "white car"), ("near a blue car", "blue car"),
                ("near a black car", "black car"), ("near a white automobile", "white automobile"),
                ("near a black automobile", "black automobile"), ("near a blue automobile", "blue automobile"),
                ("near a big truck", "truck"), ("near a tree", "tree"), ("in a forest", "forest"),
                ("in front of a house", "house"))

# kind -> (skill_ratio, tau, concept template, reference template, things), per the reference.
KIND_DEFAULTS = {
    "nudity": (0.01, 9, "a photo of a {concept} {thing}", "a photo of a {thing}", HUMANS),
    "artist": (0.01, 10, "a {thing} in the style of {concept}", "a photo of a {thing}", THINGS),
    "object": (0.02, 10, "a {concept} in a {thing}", "a {thing}", COMMON_SCENES),
}
OBJECT_SPECIAL = {"church": ("a {concept} {thing}", CHURCH_SCENES),
                  "garbage truck": ("a {concept} {thing}", TRUCK_PLACES)}
FALLBACK_SKILL, FALLBACK_TAU = 0.01, 10      # toy and other kinds: the reference's artist / gender values
TOY_REFERENCE = "a shape"                    # the toy caption with the concept word dropped (see docstring)
PLACEHOLDERS = {"concept", "thing"}
LAYER_SUFFIX = "ff.net.2"


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


@dataclass
class ConceptPrune(Method):
    """See the module docstring. A setting left at None takes the reference's value for the concept's kind."""

    name: str = "conceptprune"
    skill_ratio: float | None = None     # per-row top fraction by the concept score (None: 0.02 objects, else 0.01)
    timesteps: int | None = None         # tau: the first tau sampling steps (None: 9 nudity, else 10)
    select_ratio: float = 0.0            # pruned if skilled at > select_ratio * tau steps (0: plain union)
    steps: int = 50                      # scheduler steps the first tau are taken from (reference: 50)
    guidance: float = 7.5                # CFG scale of the sampled trajectories (reference: pipeline default 7.5)
    template: str | None = None          # concept prompt, with {concept} and {thing} (None: by kind)
    reference_template: str | None = None  # its paired reference prompt, with {thing} (None: by kind)
    things: list | None = None           # {thing} fills: strings, or [concept fill, reference fill] pairs
    concept_word: str | None = None      # fills {concept} (None: "naked" for nudity, else the concept's label)
    num_samples: int = 1                 # trajectories per prompt, all drawn from the one seeded generator
    seed: int = 0                        # x_T seed, shared by every prompt (reference: 0)

    goal: ClassVar[str] = "erase"

    def __post_init__(self):
        # Plain lists, so that a yaml's list (an OmegaConf ListConfig from Hydra) validates and serialises.
        if isinstance(self.things, Sequence) and not isinstance(self.things, str):
            self.things = [t if isinstance(t, str) else list(t) if isinstance(t, Sequence) else t
                           for t in self.things]

    def validate(self) -> None:
        if self.skill_ratio is not None:
            check_fraction("method.skill_ratio", self.skill_ratio)
        if self.timesteps is not None:
            check_positive("method.timesteps", self.timesteps, integer=True)
        check_positive("method.steps", self.steps, integer=True)
        if self.timesteps is not None and int(self.timesteps) > int(self.steps):
            raise MethodConfigError(f"method.timesteps={self.timesteps} exceeds method.steps={self.steps}; tau "
                                    "counts the first steps of that schedule")
        sr = check_fraction("method.select_ratio", self.select_ratio, allow_zero=True)
        if sr >= 1.0:
            raise MethodConfigError(f"method.select_ratio={self.select_ratio!r} must be in [0, 1): a weight "
                                    "cannot be skilled at more than all tau steps, so 1 prunes nothing")
        check_positive("method.guidance", self.guidance)
        check_positive("method.num_samples", self.num_samples, integer=True)
        check_positive("method.seed", self.seed, integer=True, allow_zero=True)
        for key in ("template", "reference_template", "concept_word"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise MethodConfigError(f"method.{key}={value!r} must be a string or null")
        for key in ("template", "reference_template"):
            value = getattr(self, key)
            if value is None:
                continue
            try:
                bad = _fields(value) - PLACEHOLDERS
            except ValueError as err:
                raise MethodConfigError(f"method.{key}={value!r} is not a valid template ({err})") from err
            if bad:
                raise MethodConfigError(f"method.{key}={value!r} uses {sorted(bad)}; the placeholders are "
                                        "{concept} and {thing}")
        if self.things is not None:
            if not isinstance(self.things, list) or not all(
                    isinstance(t, str) or (isinstance(t, list) and len(t) == 2
                                           and all(isinstance(s, str) for s in t)) for t in self.things):
                raise MethodConfigError(f"method.things={self.things!r} must be a list of strings or of "
                                        "[concept fill, reference fill] pairs")

    # ---- resolved settings --------------------------------------------------------------------------
    def resolved(self, concept: dict) -> dict:
        """skill_ratio, tau and the paired prompt lists for this concept (the reference's when left None)."""
        kind = str(concept.get("kind", ""))
        word = self.concept_word
        if word is None:
            word = "naked" if kind == "nudity" else str(concept.get("label") or concept.get("name", "")).replace(
                "_", " ")
        if kind in KIND_DEFAULTS:
            skill, tau, template, reference, things = KIND_DEFAULTS[kind]
            if kind == "object" and word.lower() in OBJECT_SPECIAL:
                template, things = OBJECT_SPECIAL[word.lower()]
        else:
            skill, tau = FALLBACK_SKILL, FALLBACK_TAU
            template = concept["prompt"]
            reference = TOY_REFERENCE if kind.startswith("toy_") else str(concept.get("base_prompt") or "")
            things = ()
        template = template if self.template is None else self.template
        reference = reference if self.reference_template is None else self.reference_template
        things = things if self.things is None else self.things
        uses_thing = "thing" in _fields(template) | _fields(reference)
        if uses_thing and not things:
            raise MethodConfigError(f"the prompt templates {template!r} / {reference!r} use {{thing}} but "
                                    "method.things is empty; give fill-ins or drop the placeholder")
        if "concept" in _fields(reference):
            raise MethodConfigError(f"method.reference_template={reference!r} must not name {{concept}}: it is "
                                    "the prompt without the concept")
        pairs = [(t, t) if isinstance(t, str) else tuple(t) for t in things] if uses_thing else [("", "")]
        prompts = [template.format(concept=word, thing=c) for c, _ in pairs]
        refs = [reference.format(thing=r) for _, r in pairs]
        tau = int(self.timesteps if self.timesteps is not None else tau)
        if tau > int(self.steps):
            raise MethodConfigError(f"tau={tau} (method.timesteps, default for kind {kind!r}) exceeds "
                                    f"method.steps={self.steps}; raise steps or lower timesteps")
        return {"skill_ratio": float(self.skill_ratio if self.skill_ratio is not None else skill), "timesteps": tau,
                "prompts": prompts, "reference_prompts": refs, "concept_word": word}

    # ---- the method -----------------------------------------------------------------------------------
    def build(self, ctx: MethodContext) -> MethodOutput:
        from cad.edits import Edit

        bb = ctx.backbone
        r = self.resolved(ctx.concept)
        layers = ffn_out_layers(bb.denoiser)
        check_skill_ratio(layers, r["skill_ratio"])   # before minutes of sampling, not after
        t0 = time.perf_counter()
        h = ctx.attribution.get("height") or bb.default_size()
        w = ctx.attribution.get("width") or bb.default_size()
        norms = {}
        for key in ("prompts", "reference_prompts"):
            norms[key] = column_norms(bb, r[key], layers, tau=r["timesteps"], steps=int(self.steps),
                                      guidance=float(self.guidance), seed=int(self.seed),
                                      num_samples=int(self.num_samples), height=h, width=w)
        t_norms = time.perf_counter() - t0
        counts = skilled_counts(layers, norms["prompts"], norms["reference_prompts"], r["skill_ratio"])
        threshold = float(self.select_ratio) * r["timesteps"]
        masks = {f"{n}.weight": (c > threshold).cpu() for n, c in counts.items()}
        settings = {k: v for k, v in self.settings().items() if k != "name"}
        meta = {"kind": "conceptprune", "method": self.name, **settings, **r, "layer": LAYER_SUFFIX,
                "made_for": bb.denoiser_identity(),
                "reference": "ruchikachavhan/concept-prune@72927d9a2b518caed4e5dddd8549d04b168ad5d7"}
        edit = Edit(masks, meta)
        info = {"seconds_activations": t_norms, "seconds_total": time.perf_counter() - t0,
                "n_layers": len(layers), "n_pruned": edit.n_ablated, "fraction_pruned": edit.fraction,
                "skill_ratio": r["skill_ratio"], "timesteps": r["timesteps"],
                "n_prompt_pairs": len(r["prompts"])}
        return MethodOutput(edit, {}, info)

    def row_fields(self) -> dict:
        return {"skill_ratio": self.skill_ratio, "timesteps": self.timesteps, "select_ratio": self.select_ratio}


def ffn_out_layers(denoiser: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """name -> the second FFN linear (`...ff.net.2`) of every transformer block, in execution-independent
    name order (the reference's `'ff.net' in name and 'proj' not in name` filter over Linear modules)."""
    layers = {n: m for n, m in denoiser.named_modules()
              if n.endswith(LAYER_SUFFIX) and isinstance(m, torch.nn.Linear)}
    if not layers:
        raise MethodConfigError(f"conceptprune found no `{LAYER_SUFFIX}` Linear layers in this "
                                f"{type(denoiser).__name__}; it prunes the FFN of UNet transformer blocks "
                                "(sd, sdxl families)")
    return dict(sorted(layers.items()))


class _NormRecorder:
    """Forward hooks adding the squared, row-normalised ff.net.2 inputs into sums[step][layer name]."""

    def __init__(self):
        self.step = 0
        self.sums: dict[int, dict[str, torch.Tensor]] = {}

    def hook(self, name: str):
        def fn(module, args, output):
            x = args[0].detach()
            x = torch.nn.functional.normalize(x.reshape(-1, x.shape[-1]).float(), p=2, dim=1)
            sq = x.square().sum(0)
            per_step = self.sums.setdefault(self.step, {})
            per_step[name] = per_step[name] + sq if name in per_step else sq
        return fn


@torch.no_grad()
def column_norms(bb, prompts: list[str], layers: dict[str, torch.nn.Module], *, tau: int, steps: int,
                 guidance: float, seed: int, num_samples: int = 1, height: int | None = None,
                 width: int | None = None) -> dict[int, dict[str, torch.Tensor]]:
    """||X_j|| per (step, layer) over the first tau guided sampling steps of every prompt (float32, device).

    Every prompt starts from the same x_T (a fresh generator seeded `seed`), as the reference seeds torch
    before each generation. The CFG batch's unconditional ("") and conditional halves both pass the hooks."""
    rec = _NormRecorder()
    handles = [m.register_forward_hook(rec.hook(n)) for n, m in layers.items()]
    try:
        uncond = bb.encode("", 1, height=height, width=width)
        for prompt in prompts:
            cond = bb.encode(prompt, 1, height=height, width=width)
            sched = bb.scheduler(steps, height=height, width=width)  # fresh: some schedulers count steps
            gen = torch.Generator().manual_seed(seed)
            x = bb.initial_latents(sched, num_samples, gen, height, width)
            for i, t in enumerate(sched.timesteps[:tau]):
                rec.step = i
                x = bb.guided_step(sched, x, t, cond, uncond, guidance)
    finally:
        for handle in handles:
            handle.remove()
    return {s: {n: v.sqrt() for n, v in per.items()} for s, per in rec.sums.items()}


@torch.no_grad()
def skilled_mask(weight: torch.Tensor, norm: torch.Tensor, norm_ref: torch.Tensor, skill_ratio: float
                 ) -> torch.Tensor:
    """Skilled entries of one layer at one step: the top int(skill_ratio * in) of each row by |W| * norm,
    where that score also beats the reference score |W| * norm_ref (reference wanda.py:181-201)."""
    a = weight.detach().abs().float()
    score = a * norm.to(a.device)
    score_ref = a * norm_ref.to(a.device)
    k = int(skill_ratio * weight.shape[1])
    top = torch.zeros_like(score, dtype=torch.bool)
    top.scatter_(1, score.topk(k, dim=1).indices, True)
    return top & (score > score_ref)


def check_skill_ratio(layers: dict[str, torch.nn.Linear], skill_ratio: float) -> None:
    small = [n for n, m in layers.items() if int(skill_ratio * m.in_features) < 1]
    if small:
        raise MethodConfigError(f"skill_ratio={skill_ratio} selects no entry per row of {small[0]!r} "
                                f"(in_features {layers[small[0]].in_features}); raise method.skill_ratio")


def skilled_counts(layers: dict[str, torch.nn.Linear], norms: dict, norms_ref: dict, skill_ratio: float
                   ) -> dict[str, torch.Tensor]:
    """Per layer, at how many of the recorded steps each weight entry is skilled (int16, the weight's shape)."""
    check_skill_ratio(layers, skill_ratio)
    counts = {}
    for name, module in layers.items():
        c = torch.zeros(module.weight.shape, dtype=torch.int16, device=module.weight.device)
        for step in sorted(norms):
            c += skilled_mask(module.weight, norms[step][name], norms_ref[step][name], skill_ratio)
        counts[name] = c
    return counts
