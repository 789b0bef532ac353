"""cad: Component Attribution for Diffusion models (Nguyen, Phan, Doan, arXiv 2412.02542).

Sign convention: scores are alpha_i = w_i * dJ/dw_i of the objective J being maximised, the first-order
estimate of J(w) - J(w with w_i = 0). CAD-Erase zeroes the top positive alpha of J_erase (the noise gap
between the concept prompt and a base prompt); CAD-Amplify zeroes the top negative alpha of J_amplify
(the negative denoising loss on concept images).

    pipe = cad.load_pipeline("CompVis/stable-diffusion-v1-4")
    scores = cad.attribute(pipe, "parachute")                        # J_erase, ff space
    edit = cad.Edit.from_scores(scores, ratio=0.01, sign="positive")
    with edit.applied(pipe):
        images = pipe("a parachute over a beach").images
"""

from cad.attribution import attribute
from cad.components import ComponentSpace, enable_only, get_space
from cad.edits import BaseEdit, Edit, EditMismatchError, WeightEdit, export_edited_pipeline, load_edit
from cad.loading import ModelLoadError, load_pipeline, unet_fingerprint
from cad.objectives import (
    amplify_objective,
    concept_latents,
    erase_objective,
    erase_reference,
    measure_amplify_objective,
    measure_erase_objective,
)
from cad.retain import retain_ranking
from cad.scores import AttributionScores, ScoresMismatchError
from cad.selection import count_ablated, random_masks, select_components

__all__ = [
    "AttributionScores",
    "BaseEdit",
    "WeightEdit",
    "load_edit",
    "ComponentSpace",
    "Edit",
    "EditMismatchError",
    "ModelLoadError",
    "ScoresMismatchError",
    "amplify_objective",
    "attribute",
    "concept_latents",
    "count_ablated",
    "enable_only",
    "erase_objective",
    "erase_reference",
    "export_edited_pipeline",
    "get_space",
    "load_pipeline",
    "measure_amplify_objective",
    "measure_erase_objective",
    "random_masks",
    "retain_ranking",
    "select_components",
    "unet_fingerprint",
]

# cad.generate (seeded, cached image generation) sits on top of the core; export it when it is installed.
try:
    from cad.generate import generate  # noqa: F401
except ModuleNotFoundError as e:  # only a missing cad.generate is tolerated, not errors inside it
    if e.name != "cad.generate":
        raise
else:
    __all__.append("generate")
