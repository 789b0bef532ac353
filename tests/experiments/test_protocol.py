"""protocol=reference (the default) reproduces the authors' code's settings; protocol=cad keeps cad's own. The
values are pinned here. The reference is mail-research/CAD-attribution4diffusion @
18b257ed1c83bf53b83c707d71ef793540aed4f2: `compute_positive_neurons.py` (J_erase: `get_score`, its argparse
defaults --start_guidance 3, --ddim_steps 50, the artist prompt "a photo in the style of X"),
`compute_negative_neurons.py` (J_amplify: `get_score` on `args.target`, `timesteps[-t]`, 10 batches of 5 images
from `prompt_dict`), `diffuser_custom_generate.py` (`custom_sample`, `timesteps[:until_t]`) and its README
(object and nudity prompts); docs/EXPERIMENTS.md "Protocols" tabulates each value against its source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cad import attribute
from cad.backbones import wrap
from experiments.config import compose_config
from experiments.pipeline import attribution_settings
from experiments.validate import ConfigError, check_numbers, check_schema, load_concept

REAL = ["model=sd14"]


def _prompts(cfg: dict) -> dict:
    c = cfg["concept"]
    return {k: c[k] for k in ("prompt", "base_prompt", "image_prompt", "amplify_prompt")}


def test_reference_is_the_default_and_pins_the_reference_values():
    church = compose_config(REAL + ["concept=church"])
    assert church["protocol"]["name"] == "reference"
    att = church["attribution"]
    assert att["guidance"] == 3.0 and att["steps"] == 50 and att["schedule_steps"] == 50
    assert att["num_images"] == 50 and att["image_model"] == "base" and att["image_guidance"] == 7.5
    assert _prompts(church) == {"prompt": "church", "base_prompt": "", "image_prompt": "a photo of church",
                                "amplify_prompt": "church"}
    assert _prompts(compose_config(REAL + ["concept=nudity"])) == {
        "prompt": "naked", "base_prompt": "", "image_prompt": "naked", "amplify_prompt": "naked"}
    assert _prompts(compose_config(REAL + ["concept=van_gogh"])) == {
        "prompt": "a photo in the style of Van Gogh", "base_prompt": "",
        "image_prompt": "a picture in the style of Van Gogh", "amplify_prompt": "Van Gogh"}
    # every paper experiment runs it
    for exp in ("object_erasure", "nudity_erasure", "artist_erasure", "amplify", "amplify_erased", "fidelity"):
        cfg = compose_config(REAL + [f"experiment={exp}", "model.checkpoint=/x.safetensors"])
        assert cfg["protocol"]["name"] == "reference" and cfg["attribution"]["guidance"] == 3.0, exp


def test_cad_protocol_keeps_cads_values():
    church = compose_config(REAL + ["concept=church", "protocol=cad"])
    att = church["attribution"]
    assert church["protocol"]["name"] == "cad"
    assert att["guidance"] == 7.5 and att["schedule_steps"] is None and att["num_images"] == 8
    assert compose_config(REAL + ["protocol=cad", "model.steps=25"])["attribution"]["steps"] == 25
    assert att["image_model"] == "erased" and att["image_prompt"] is None
    assert _prompts(church) == {"prompt": "an image of a church", "base_prompt": "", "image_prompt": None,
                                "amplify_prompt": None}
    assert compose_config(REAL + ["concept=nudity", "protocol=cad"])["concept"]["prompt"] == "nudity"
    gogh = compose_config(REAL + ["concept=van_gogh", "protocol=cad"])["concept"]
    assert (gogh["prompt"], gogh["base_prompt"]) == ("a painting in the style of Van Gogh", "a painting")


def test_amplify_settings_condition_the_loss_on_the_bare_target():
    ref = compose_config(REAL + ["experiment=amplify", "concept=van_gogh"])
    s = attribution_settings(ref["model"], ref["concept"], "amplify", "ff", ref["attribution"])
    assert s["prompt"] == "Van Gogh" and s["image_prompt"] == "a picture in the style of Van Gogh"
    assert s["num_images"] == 50 and s["guidance"] == 3.0
    cad = compose_config(REAL + ["experiment=amplify", "concept=van_gogh", "protocol=cad"])
    s = attribution_settings(cad["model"], cad["concept"], "amplify", "ff", cad["attribution"])
    assert s["prompt"] == s["image_prompt"] == "a painting in the style of Van Gogh" and s["num_images"] == 8
    # erase: the concept prompt, and the schedule length only where it differs from the steps
    e = attribution_settings(ref["model"], ref["concept"], "erase", "ff", {**ref["attribution"], "steps": 10})
    assert e["prompt"] == "a photo in the style of Van Gogh" and e["schedule_steps"] == 50
    assert "schedule_steps" not in attribution_settings(ref["model"], ref["concept"], "erase", "ff", ref["attribution"])


def test_overrides_still_win_and_families_keep_their_adaptation():
    assert compose_config(REAL + ["model.steps=25"])["attribution"]["steps"] == 50  # not the sampler's
    cfg = compose_config(REAL + ["attribution.guidance=5", "attribution.num_images=4", "concept.prompt=a church"])
    assert cfg["attribution"]["guidance"] == 5 and cfg["attribution"]["num_images"] == 4
    assert cfg["concept"]["prompt"] == "a church"
    flux = compose_config(["model=flux_dev"])["attribution"]  # distilled guidance: the family's own 3.5
    assert flux["guidance"] == 3.5 and flux["schedule_steps"] == 50
    assert compose_config(["model=sd35m"])["attribution"]["schedule_steps"] == 40  # its whole own schedule


def test_toy_world_keeps_its_prompts_under_reference():
    cfg = compose_config(["model=toy", "concept=circle"])
    assert cfg["attribution"]["guidance"] == 3.0 and cfg["attribution"]["schedule_steps"] == 50
    assert cfg["attribution"]["steps"] == 50 and cfg["model"]["steps"] == 20  # the reference's, not the kit's
    assert compose_config(["model=toy", "protocol=cad"])["attribution"]["steps"] == 20
    assert cfg["attribution"]["num_images"] == 50
    assert (cfg["concept"]["prompt"], cfg["concept"]["base_prompt"]) == ("a circle", "a square")


def test_retained_concepts_resolve_for_the_protocol():
    assert load_concept("church")["prompt"] == "church"
    assert load_concept("church", "cad")["prompt"] == "an image of a church"
    assert load_concept("circle", "cad")["prompt"] == "a circle"


def test_protocol_keys_are_checked():
    with pytest.raises(ConfigError, match="did you mean attribution.schedule_steps"):
        check_schema(compose_config(["+attribution.schedule_step=3"]))
    with pytest.raises(ConfigError, match="did you mean protocol.name"):
        check_schema(compose_config(["+protocol.nam=cad"]))
    with pytest.raises(ConfigError, match="did you mean concept.amplify_prompt"):
        check_schema(compose_config(["concept=church", "+concept.amplify_promt=x"]))
    with pytest.raises(ConfigError, match="schedule_steps"):
        check_numbers(compose_config(["attribution.steps=60"]))
    with pytest.raises(ConfigError, match="image_model"):
        check_numbers(compose_config(["attribution.image_model=other"]))
    check_schema(compose_config(REAL + ["concept=church"]))
    check_schema(compose_config(REAL + ["concept=church", "protocol=cad"]))


# -- the schedule: the first k timesteps of a 50-step schedule ------------------------------------------------

def _visited(pipe, fn) -> list[int]:
    seen: list[int] = []

    def hook(mod, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        seen.append(int(torch.as_tensor(t).flatten()[0]))

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        fn()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("estimator", ["trajectory", "restart"])
def test_erase_visits_the_first_k_timesteps_of_the_50_step_schedule(tiny_pipe_factory, estimator):
    pipe = tiny_pipe_factory(0, image_size=16)
    full = [int(t) for t in wrap(pipe).scheduler(50).timesteps]
    k = 3
    kw = dict(steps=k, guidance=3.0, estimator=estimator, progress=False)
    seen = _visited(pipe, lambda: attribute(pipe, "a cat", schedule_steps=50, **kw))
    assert sorted(set(seen), reverse=True) == full[:k]
    coarse = [int(t) for t in wrap(pipe).scheduler(k).timesteps]
    assert sorted(set(_visited(pipe, lambda: attribute(pipe, "a cat", **kw))), reverse=True) == coarse
    assert coarse != full[:k]  # the two protocols visit other timesteps
    s = attribute(pipe, "a cat", schedule_steps=50, **kw)
    assert s.meta["schedule_steps"] == 50 and s.key != attribute(pipe, "a cat", **kw).key


def test_amplify_takes_the_k_lowest_noise_timesteps(tiny_pipe_factory):
    pipe = tiny_pipe_factory(0, image_size=16)
    full = [int(t) for t in wrap(pipe).scheduler(50).timesteps]
    images = torch.rand(2, 3, 16, 16)
    seen = _visited(pipe, lambda: attribute(pipe, "a cat", objective="amplify", images=images, steps=3,
                                            schedule_steps=50, progress=False))
    assert sorted(set(seen), reverse=True) == full[-3:]


# -- amplify_erased: the concept images come from the base model under reference ------------------------------

MICRO = ["model.steps=3", "model.guidance=4.0", "attribution.steps=3", "generation.per_label=1",
         "generation.batch_size=12", "experiment=amplify_erased", "erase_method=uce", "attribution.num_images=2",
         "attribution.num_samples=1"]




def _scores_meta(out: dict) -> dict:
    return json.loads((Path(out["run"]["scores_path"]) / "meta.json").read_text())


def test_amplify_erased_images_come_from_the_base_model_under_reference(toy, tmp_path):
    from experiments.models import load_model
    from experiments.run import run_from_config

    cfg = compose_config(MICRO)
    out = run_from_config(cfg, tmp_path / "ref")
    meta = _scores_meta(out)
    folder = Path(meta["images"]["folder"])
    made_by = json.loads((folder / "meta.json").read_text())
    base = load_model(cfg["model"], device="cpu", toy_kit=cfg["paths"].get("toy_kit"))
    assert made_by["unet_fingerprint"] == base.fingerprint  # the unedited UNet rendered them
    assert meta["unet_fingerprint"] != base.fingerprint  # the gradients are the erased model's
    assert folder.is_relative_to(toy / "concept_images" / base.cache_key)
    assert meta["images"]["count"] == 2 and len(list(folder.glob("*.png"))) == 2 and meta["protocol"] == "reference"
    assert made_by["prompt"] == "a magenta shape"  # the toy world's own prompt (nudity's stand-in)

    cad = run_from_config(compose_config(MICRO + ["protocol=cad"]), tmp_path / "cad")
    assert "generated_from" in _scores_meta(cad)["images"]  # generated inside the attribution, by the erased model
    assert cad["run"]["scores_path"] != out["run"]["scores_path"]
