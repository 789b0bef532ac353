"""Quality figures of a toy kit (issue item 5): classifier accuracy on rendered and VAE-reconstructed images,
per-concept accuracy of generated images, CLIP zero-shot accuracy and FID, plus the bars they must clear."""

from __future__ import annotations

import numpy as np
import torch

from cad.toy.render import caption_from, render_dataset
from cad.toy.world import COLORS, KINDS, SHAPES, STYLES, kind_of

BARS = {"classifier_rendered": 0.98, "classifier_vae": 0.95, "generated_shape": 0.90, "generated_style": 0.85,
        "generated_color": 0.85}


def concept_prompt(concept: str) -> str:
    """The under-specified prompt naming one concept: 'a circle', 'a striped shape', 'a red shape'."""
    kind = kind_of(concept)
    return caption_from(**{kind: concept})


@torch.no_grad()
def sample(pipe, prompts: list[str], seeds: list[int], *, steps: int, guidance: float, batch_size: int = 64,
           progress: bool = False) -> torch.Tensor:
    """Images in [0, 1] (N, 3, H, W), one per (prompt, seed), each from its own seeded generator so a
    batch's composition never changes an image."""
    from tqdm.auto import tqdm

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: pass one seed per prompt")
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="sample", disable=not progress, leave=False):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i : i + batch_size]]
        res = pipe(prompts[i : i + batch_size], num_inference_steps=steps, guidance_scale=guidance,
                   generator=gens, output_type="pt")
        out.append(res.images.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def predict(classifier, images: torch.Tensor, batch_size: int = 512) -> dict[str, np.ndarray]:
    preds: dict[str, list] = {k: [] for k in KINDS}
    for i in range(0, len(images), batch_size):
        logits = classifier(images[i : i + batch_size])
        for k in KINDS:
            preds[k].append(logits[k].argmax(1).numpy())
    return {k: np.concatenate(v) for k, v in preds.items()}


def head_accuracy(classifier, images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    pred = predict(classifier, images)
    return {k: float((pred[k] == labels[:, j]).mean()) for j, k in enumerate(KINDS)}


def concept_accuracy(classifier, images: torch.Tensor, concept: str) -> float:
    """Share of images the classifier assigns to `concept` on that concept's head."""
    kind = kind_of(concept)
    return float((predict(classifier, images)[kind] == KINDS[kind].index(concept)).mean())


@torch.no_grad()
def clip_zero_shot(kit, images: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Zero-shot accuracy per attribute with prompts 'a circle' / 'a striped shape' / 'a red shape'."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    img = torch.nn.functional.normalize(kit.clip_model.encode_image((images - mean) / std), dim=-1)
    out = {}
    for j, (kind, values) in enumerate(KINDS.items()):
        txt = kit.clip_model.encode_text(kit.clip_tokenizer([concept_prompt(v) for v in values]))
        txt = torch.nn.functional.normalize(txt, dim=-1)
        out[kind] = float(((img @ txt.T).argmax(1).numpy() == labels[:, j]).mean())
    return out


def fid(kit, real: torch.Tensor, fake: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=kit.fid_features, normalize=False)
    metric.update((real * 255).round().to(torch.uint8), real=True)
    metric.update((fake * 255).round().to(torch.uint8), real=False)
    return float(metric.compute())


def measure_quality(kit, *, progress: bool = True) -> dict:
    """All item-5 figures of a kit, with the bars and whether each passes."""
    from cad.toy.train import reconstruct

    r = kit.recipe
    pipe = kit.load_pipeline()
    test = render_dataset(r.n_test, seed=r.seed + 1000, size=r.image_size)
    images = torch.from_numpy(test.images)
    recon = reconstruct(pipe.vae, images, seed=r.seed + 1001)
    q: dict = {"classifier_rendered": head_accuracy(kit.classifier, images, test.labels),
               "classifier_vae": head_accuracy(kit.classifier, recon, test.labels),
               "clip_zero_shot": clip_zero_shot(kit, images, test.labels)}
    concepts = list(SHAPES) + list(STYLES) + list(COLORS)
    prompts = [concept_prompt(c) for c in concepts for _ in range(r.quality_seeds)]
    seeds = [s for _ in concepts for s in range(r.quality_seeds)]
    gen = sample(pipe, prompts, seeds, steps=r.sample_steps, guidance=r.guidance, progress=progress)
    per = {}
    for i, c in enumerate(concepts):
        per[c] = concept_accuracy(kit.classifier, gen[i * r.quality_seeds : (i + 1) * r.quality_seeds], c)
    q["generated"] = per
    q["generated_min"] = {k: min(per[v] for v in vs) for k, vs in KINDS.items()}
    q["generation"] = {"seeds_per_prompt": r.quality_seeds, "steps": r.sample_steps, "guidance": r.guidance}
    q["fid_vae_recon"] = fid(kit, images, recon)
    q["fid_generated"] = fid(kit, images, gen)
    q["bars"] = BARS
    q["passes"] = {
        "classifier_rendered": min(q["classifier_rendered"].values()) >= BARS["classifier_rendered"],
        "classifier_vae": min(q["classifier_vae"].values()) >= BARS["classifier_vae"],
        **{f"generated_{k}": q["generated_min"][k] >= BARS[f"generated_{k}"] for k in KINDS},
    }
    return q


def format_quality(q: dict) -> str:
    """A printable summary of measure_quality's figures."""
    lines = [f"classifier on rendered images: {q['classifier_rendered']}",
             f"classifier on VAE reconstructions: {q['classifier_vae']}",
             f"CLIP zero-shot: {q['clip_zero_shot']}",
             f"FID (classifier features) VAE recon: {q['fid_vae_recon']:.2f}  generated: {q['fid_generated']:.2f}",
             f"generated images classified as the prompted concept ({q['generation']}):"]
    lines += [f"  {c:10s} {a:.3f}" for c, a in q["generated"].items()]
    lines += [f"bar {k}: {'PASS' if v else 'FAIL'} (>= {q['bars'][k]})" for k, v in q["passes"].items()]
    return "\n".join(lines)
