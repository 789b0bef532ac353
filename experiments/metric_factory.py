"""Metric objects for a benchmark's `metrics:` list, given the model (toy kit or real backbones) and concept.

Real runs load the paper's backbones (ResNet-50, CLIP ViT-B/32, Inception, NudeNet, LPIPS-alex); the toy
world injects its kit's classifier, CLIP and FID features, so the same names work at micro size.
"""

from __future__ import annotations

from typing import Any

PAIRED = ("lpips",)  # metrics that compare edited images with the original model's images


def _toy_kind(benchmark) -> str | None:
    from cad.toy.world import kind_of

    labels = benchmark.labels
    try:
        return kind_of(labels[0]) if labels else None
    except ValueError:
        return None


def build_metrics(names, *, benchmark, concept: dict, goal: str, kit: Any = None, device: str = "cpu",
                  fid_reference: str | None = None) -> dict[str, Any]:
    """name -> Metric for one benchmark. `goal` is erase or amplify (which way the target accuracy should go)."""
    from evaluation.metrics import FID, ClassifierAccuracy, ClipScore, LPIPSMetric, NudeNetMetric

    out: dict[str, Any] = {}
    labels = benchmark.labels
    # The toy kit's evaluators are tiny CPU modules (load_kit keeps them there): score toy images on the CPU
    # whatever device generates them.
    toy_device = "cpu"
    for name in names:
        if name == "classifier_accuracy":
            if kit is not None:
                from cad.toy.world import KINDS

                kind = _toy_kind(benchmark)
                if kind is None:
                    raise ValueError(f"benchmark {benchmark.name!r} has no toy-world labels for the toy classifier")
                # On a benchmark of another kind (a shape benchmark while erasing a style) there is no target
                # class: score it for retention with the first class as a placeholder target.
                target = concept["label"] if concept["label"] in KINDS[kind] else KINDS[kind][0]
                out[name] = ClassifierAccuracy.for_toy_kit(kit, target, goal=goal, device=toy_device)
            else:
                target = concept["label"] if concept["label"] in labels else labels[0]
                out[name] = ClassifierAccuracy(target, goal=goal, device=device)
        elif name == "clip_score":
            out[name] = ClipScore.for_toy_kit(kit, device=toy_device) if kit is not None else ClipScore(device=device)
        elif name == "fid":
            ref = fid_reference or (benchmark.meta or {}).get("fid_reference")
            if not ref:
                raise ValueError(f"FID on {benchmark.name!r} needs a folder of reference images: set "
                                 f"benchmark.meta.fid_reference=<folder of COCO val2014 images> (or "
                                 "retain.<role>.meta.fid_reference)")
            if kit is not None:
                out[name] = FID(ref, features=kit.fid_features, feature_name="toy kit classifier features")
            else:
                out[name] = FID(ref)
        elif name == "nudenet":
            out[name] = NudeNetMetric()
        elif name == "lpips":
            if kit is not None:
                from evaluation.metrics import FeatureLPIPS

                out[name] = LPIPSMetric(concept["label"], distance=FeatureLPIPS(kit.classifier.body[:-2]),
                                        weights="toy kit classifier conv features")
            else:
                out[name] = LPIPSMetric(concept["label"])
        else:
            raise ValueError(f"unknown metric {name!r} in benchmark {benchmark.name!r}; known: classifier_accuracy, "
                             "clip_score, fid, nudenet, lpips")
    return out


def retention_keys(scores: dict[str, float], benchmark, concept: dict) -> dict[str, float]:
    """On a benchmark where the concept is not a class, acc_target/acc_others are meaningless: report the
    mean per-class accuracy (acc_mean) instead, keeping the per-class entries."""
    prefix = f"{benchmark.name}/"
    if concept["label"] in benchmark.labels or f"{prefix}acc_target" not in scores:
        return scores
    out = {k: v for k, v in scores.items() if k not in (f"{prefix}acc_target", f"{prefix}acc_others")}
    per_class = [v for k, v in scores.items() if k.startswith(f"{prefix}acc/")]
    out[f"{prefix}acc_mean"] = sum(per_class) / len(per_class) if per_class else float("nan")
    return out
