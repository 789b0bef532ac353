"""ConceptPrune on tiny real pipelines: the pruned entries are exactly the skilled WANDA entries, recomputed
here from our own hooked activations along the same seeded trajectories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from cad.backbones import wrap
from cad.backbones.sd import SDBackbone
from cad.methods import MethodConfigError, MethodContext, build_method
from cad.methods.conceptprune import ConceptPrune

REPO = Path(__file__).resolve().parents[2]
TARGET = "cad.methods.conceptprune.ConceptPrune"
ARTIST = {"name": "van_gogh", "kind": "artist", "prompt": "a painting in the style of Van Gogh",
          "base_prompt": "a painting", "label": "Van Gogh"}
# Small but real: two prompt pairs, tau = 3 of 6 steps, k = int(0.1 * in_features) per row.
SETTINGS = {"steps": 6, "timesteps": 3, "skill_ratio": 0.1, "things": ["cat", ["dog", "house"]], "seed": 3}


@pytest.fixture(scope="module")
def sd():
    from cad.tiny import build_tiny_pipeline

    torch.manual_seed(0)
    return wrap(build_tiny_pipeline(0, image_size=16))


@pytest.fixture(scope="module")
def sdxl():
    from cad.tiny import build_tiny_sdxl_pipeline

    torch.manual_seed(0)
    return wrap(build_tiny_sdxl_pipeline(0))


def make(**over) -> ConceptPrune:
    return build_method({"_target_": TARGET, **SETTINGS, **over})


def ffn2(bb) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in bb.denoiser.named_modules() if n.endswith("ff.net.2")}


def all_forward_hooks(bb) -> dict:
    """Every forward (pre-)hook on the denoiser and the text encoders, by module. transformers installs
    output-recording hooks of its own on CLIP layers when they first run, so text encoders are compared to
    a snapshot; the denoiser must have none at all."""
    mods = [(f"denoiser.{n}", m) for n, m in bb.denoiser.named_modules()]
    for attr, te in bb.text_encoders.items():
        mods += [(f"{attr}.{n}", m) for n, m in te.named_modules()]
    return {n: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for n, m in mods
            if m._forward_hooks or m._forward_pre_hooks}


def hooks_before(bb) -> dict:
    bb.encode("warm up")   # lets transformers install its own text-encoder hooks first
    hooks = all_forward_hooks(bb)
    assert not [n for n in hooks if n.startswith("denoiser.")]
    return hooks


def recorded_inputs(bb, prompts, *, tau, steps, seed, guidance=7.5):
    """Raw ff.net.2 inputs per (prompt, step, layer), from hooks of our own on the same seeded trajectories."""
    layers = ffn2(bb)
    store: dict = {}
    where = {}

    def hook(name):
        def fn(module, args, output):
            store.setdefault((where["p"], where["t"]), {})[name] = args[0].detach().clone()
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        size = bb.default_size()
        uncond = bb.encode("", 1, height=size, width=size)
        for p, prompt in enumerate(prompts):
            sched = bb.scheduler(steps, height=size, width=size)
            x = bb.initial_latents(sched, 1, torch.Generator().manual_seed(seed), size, size)
            cond = bb.encode(prompt, 1, height=size, width=size)
            for t, ts in enumerate(sched.timesteps[:tau]):
                where.update(p=p, t=t)
                x = bb.guided_step(sched, x, ts, cond, uncond, guidance)
    finally:
        for h in handles:
            h.remove()
    return store


def expected_step_masks(bb, prompts, refs, *, tau, steps, seed, skill_ratio):
    """Per step and layer: the reference rule written out independently (argsort per row, not topk)."""
    ins = recorded_inputs(bb, prompts, tau=tau, steps=steps, seed=seed)
    ins_ref = recorded_inputs(bb, refs, tau=tau, steps=steps, seed=seed)

    def colnorm(store, n_prompts, t, name):
        rows = []
        for p in range(n_prompts):
            x = store[(p, t)][name]
            assert x.shape[0] == 2, "the hooks must see the CFG batch's uncond and cond halves"
            x = x.reshape(-1, x.shape[-1]).double()
            rows.append(x / x.norm(dim=1, keepdim=True))
        return torch.cat(rows).norm(dim=0)

    out = {}
    for t in range(tau):
        for name, layer in ffn2(bb).items():
            w = layer.weight.detach().abs().double()
            score = w * colnorm(ins, len(prompts), t, name)
            score_ref = w * colnorm(ins_ref, len(refs), t, name)
            k = int(skill_ratio * w.shape[1])
            top = torch.zeros_like(w, dtype=torch.bool)
            order = score.argsort(dim=1, descending=True)[:, :k]
            for row in range(w.shape[0]):
                top[row, order[row]] = True
            out[(t, name)] = top & (score > score_ref)
    return out


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_pruned_entries_are_the_skilled_wanda_entries(family, request):
    bb = request.getfixturevalue(family)
    method = make()
    r = method.resolved(ARTIST)
    assert r["prompts"] == ["a cat in the style of Van Gogh", "a dog in the style of Van Gogh"]
    assert r["reference_prompts"] == ["a photo of a cat", "a photo of a house"]
    exp = expected_step_masks(bb, r["prompts"], r["reference_prompts"], tau=3, steps=6, seed=3, skill_ratio=0.1)
    layers = ffn2(bb)
    hooks = hooks_before(bb)

    for select_ratio in (0.0, 0.5):
        edit = make(select_ratio=select_ratio).build(MethodContext(backbone=bb, concept=ARTIST)).edit
        for name in layers:
            count = sum(exp[(t, name)].int() for t in range(3))
            want = count > select_ratio * 3          # 0.0: a plain union; 0.5: skilled at >= 2 of the 3 steps
            got = edit.masks[f"{name}.weight"]
            assert torch.equal(got, want), (family, select_ratio, name)
            if select_ratio == 0.0:
                union = exp[(0, name)] | exp[(1, name)] | exp[(2, name)]
                assert torch.equal(got, union)
                # The union is more than its first step, and each skilled row keeps at most k entries per step.
                assert union.sum() > exp[(0, name)].sum()
                k = int(0.1 * layers[name].in_features)
                assert all(int(exp[(t, name)].sum(1).max()) <= k for t in range(3))
        if select_ratio == 0.0:
            plain = edit
        else:
            assert edit.n_ablated < plain.n_ablated
            assert all((edit.masks[n] <= plain.masks[n]).all() for n in edit.masks)
    assert plain.n_ablated > 0
    assert all_forward_hooks(bb) == hooks, "forward hooks left after build"


def test_edit_contract(sd):
    bb = sd
    hooks = hooks_before(bb)
    out = make().build(MethodContext(backbone=bb, concept=ARTIST))
    edit = out.edit
    assert all_forward_hooks(bb) == hooks, "forward hooks left after build"
    params = dict(bb.denoiser.named_parameters())
    assert set(edit.masks) == {f"{n}.weight" for n in ffn2(bb)}
    assert all(n.endswith("ff.net.2.weight") for n in edit.masks)
    assert all(m.dtype == torch.bool and m.shape == params[n].shape for n, m in edit.masks.items())
    assert edit.made_for == bb.denoiser_identity()
    assert edit.meta["method"] == "conceptprune" and edit.meta["skill_ratio"] == 0.1
    assert edit.meta["timesteps"] == 3 and edit.meta["select_ratio"] == 0.0
    assert out.info["n_pruned"] == edit.n_ablated > 0

    before = {k: v.clone() for k, v in bb.denoiser.state_dict().items()}
    with edit.applied(bb.pipe):
        for n, m in edit.masks.items():
            assert (params[n][m] == 0).all()
            assert torch.equal(params[n][~m], before[n][~m])
    after = bb.denoiser.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before), "applied() must restore bit for bit"


class _FailingSD(SDBackbone):
    """A backbone whose second sampling step fails, to check the hooks go on error too."""

    family = ""   # unregistered: a family name would make cad.backbones.wrap return this class
    calls = 0

    def guided_step(self, *a, **kw):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("boom")
        return super().guided_step(*a, **kw)


def test_hooks_removed_on_error(sd):
    bb = _FailingSD(sd.pipe)
    hooks = hooks_before(bb)
    with pytest.raises(RuntimeError, match="boom"):
        make().build(MethodContext(backbone=bb, concept=ARTIST))
    assert all_forward_hooks(bb) == hooks


def test_defaults_per_kind():
    m = build_method({"_target_": TARGET})
    nud = m.resolved({"name": "nudity", "kind": "nudity", "prompt": "nudity", "label": "nudity"})
    assert (nud["skill_ratio"], nud["timesteps"]) == (0.01, 9)
    assert nud["prompts"][0] == "a photo of a naked man" and nud["reference_prompts"][0] == "a photo of a man"
    assert len(nud["prompts"]) == 18
    art = m.resolved(ARTIST)
    assert (art["skill_ratio"], art["timesteps"], len(art["prompts"])) == (0.01, 10, 20)
    obj = m.resolved({"name": "parachute", "kind": "object", "prompt": "an image of a parachute",
                      "label": "parachute"})
    assert (obj["skill_ratio"], obj["timesteps"]) == (0.02, 10)
    assert (obj["prompts"][0], obj["reference_prompts"][0]) == ("a parachute in a road", "a road")
    church = m.resolved({"name": "church", "kind": "object", "prompt": "an image of a church", "label": "church"})
    assert (church["prompts"][0], church["reference_prompts"][0]) == ("a church on a road", "a road")
    truck = m.resolved({"name": "garbage_truck", "kind": "object", "prompt": "x", "label": "garbage truck"})
    assert truck["prompts"][9] == "a garbage truck near a big truck" and truck["reference_prompts"][9] == "a truck"
    toy = yaml.safe_load((REPO / "conf/concept/circle.yaml").read_text())
    t = m.resolved(toy)
    assert (t["prompts"], t["reference_prompts"], t["skill_ratio"], t["timesteps"]) == (
        ["a circle"], ["a shape"], 0.01, 10)
    own = build_method({"_target_": TARGET, "reference_template": "a square"}).resolved(toy)
    assert own["reference_prompts"] == ["a square"]


def test_yaml_matches_the_dataclass():
    cfg = yaml.safe_load((REPO / "conf/method/conceptprune.yaml").read_text())
    method = build_method(cfg)
    assert method == ConceptPrune()
    lines = [ln for ln in (REPO / "conf/method/conceptprune.yaml").read_text().splitlines()
             if ln and not ln.startswith((" ", "#"))]
    assert all("#" in ln for ln in lines if not ln.startswith(("_target_", "name:"))), "every setting commented"


@pytest.mark.parametrize("bad", [
    {"skill_ratio": 0}, {"skill_ratio": 1.5}, {"timesteps": 0}, {"timesteps": 2.5}, {"timesteps": 7},
    {"select_ratio": 1.0}, {"select_ratio": -0.1}, {"steps": 0}, {"guidance": 0}, {"num_samples": 0},
    {"seed": -1}, {"template": "a {foo}"}, {"template": 3}, {"things": [1]}, {"things": [["a", "b", "c"]]},
    {"skil_ratio": 0.1},
])
def test_bad_settings_raise(bad):
    with pytest.raises(MethodConfigError):
        make(**bad)


def test_bad_settings_at_build(sd):
    ctx = MethodContext(backbone=sd, concept=ARTIST)
    hooks = hooks_before(sd)
    with pytest.raises(MethodConfigError, match="selects no entry"):   # int(0.001 * 128) = 0 per row
        make(skill_ratio=0.001).build(ctx)
    with pytest.raises(MethodConfigError, match="exceeds"):            # the artist default tau 10 > 6 steps
        build_method({"_target_": TARGET, "steps": 6}).build(ctx)
    with pytest.raises(MethodConfigError, match="things is empty"):
        make(things=[]).build(ctx)
    with pytest.raises(MethodConfigError, match="must not name"):
        make(reference_template="a {concept}").build(ctx)
    assert all_forward_hooks(sd) == hooks


def test_hydra_lists_are_accepted():
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf/method/conceptprune.yaml")
    cfg.things = ["cat", ["dog", "house"]]
    method = build_method(dict(cfg))
    assert method.things == ["cat", ["dog", "house"]] and type(method.things[1]) is list
    assert method.resolved(ARTIST)["reference_prompts"] == ["a photo of a cat", "a photo of a house"]
