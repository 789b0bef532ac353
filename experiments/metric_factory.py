"""Metric objects for a benchmark's `metrics:` list, given the model (toy kit or real backbones) and concept.

Real runs load the paper's backbones (ResNet-50, CLIP ViT-B/32, Inception, NudeNet, LPIPS-alex); the toy
world injects its kit's classifier, CLIP and FID features (with the kit's shipped reference statistics), so the
same names work at micro size. Where the paper's backbone has no toy counterpart, the toy metric is named for
what it is: `toy_lpips` (the LPIPS formula on the kit classifier's features, uniform weights) and
`toy_detector` (images the kit classifier calls the concept with p >= 0.5, NudeNet's image count).
`clip_presence` (CLIP ViT-B/32; `clip_presence_l14`: ViT-L/14) scores any concept from its prompts alone, with
the kit's CLIP on the toy world.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cad.errors import UserError
from evaluation.metrics.clip_presence import PRESENCE_MODELS

PRESENCE = ("clip_presence", "clip_presence_l14")  # CLIP zero-shot presence of any concept (ViT-B/32, L/14)
PAIRED = ("lpips", "toy_lpips")  # metrics that compare edited images with the original model's images
TOY_ONLY = ("toy_lpips", "toy_detector")  # metrics built from the toy kit's own networks
TOY_DETECTOR_THRESHOLD = 0.5  # NudeNet's threshold in the paper, applied to the toy classifier's probability


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
    from evaluation.metrics import (
        FID,
        ClassifierAccuracy,
        ClipPresence,
        ClipScore,
        ConceptDetector,
        LPIPSMetric,
        NudeNetMetric,
    )

    out: dict[str, Any] = {}
    labels = benchmark.labels
    # The toy kit's evaluators are tiny CPU modules (load_kit keeps them there): score toy images on the CPU
    # whatever device generates them.
    toy_device = "cpu"
    for name in names:
        if name in TOY_ONLY and kit is None:
            raise ValueError(f"metric {name!r} on {benchmark.name!r} is built from the toy kit's networks: run it "
                             "with model=toy, or use the real metric (lpips, nudenet)")
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
        elif name in PRESENCE:
            if kit is not None and name != "clip_presence":
                raise ValueError(f"metric {name!r}: the toy world has one CLIP, the kit's; list clip_presence")
            if kit is not None:
                out[name] = ClipPresence.for_toy_kit(kit, concept, goal=goal, key=name, device=toy_device)
            else:
                model_name, pretrained = PRESENCE_MODELS[name]
                out[name] = ClipPresence.for_concept(concept, goal=goal, key=name, model_name=model_name,
                                                     pretrained=pretrained, device=device)
        elif name == "fid":
            ref = fid_reference or (benchmark.meta or {}).get("fid_reference")
            if not ref and kit is not None:
                # the kit ships its features' statistics over rendered world images: the toy "real" set
                out[name] = FID.for_toy_kit(kit)
                continue
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
                raise ValueError(f"benchmark {benchmark.name!r} lists lpips, whose AlexNet and learned heads do not "
                                 "apply to toy images: list toy_lpips (the LPIPS formula on the toy classifier's "
                                 "features) instead")
            out[name] = LPIPSMetric(concept["label"])
        elif name == "toy_lpips":
            out[name] = LPIPSMetric.for_toy_kit(kit, concept["label"])
        elif name == "toy_detector":
            out[name] = ConceptDetector.for_toy_kit(kit, concept["label"], threshold=TOY_DETECTOR_THRESHOLD)
        else:
            raise ValueError(f"unknown metric {name!r} in benchmark {benchmark.name!r}; known: "
                             f"{', '.join(KNOWN_METRICS)}")
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


class MetricPreflightError(UserError, ValueError):
    """A metric's weights or reference data are not where it will look for them; the message says how to
    provide them. `missing` holds (metric, where it looked or None, message) for each one that is missing, empty
    for a metric list that is wrong in itself (an unknown or toy-only name)."""

    def __init__(self, message: str, missing: list[tuple[str, str | None, str]] | None = None):
        super().__init__(message)
        self.missing = list(missing or [])


KNOWN_METRICS = ("classifier_accuracy", "clip_score", *PRESENCE, "fid", "nudenet", "lpips", *TOY_ONLY)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def check_metric_names(names, *, toy: bool) -> None:
    """The metric list itself: known names, toy-only metrics only on the toy world (a config error, reported
    alone before any weights are looked for)."""
    for name in names:
        if name not in KNOWN_METRICS:
            raise MetricPreflightError(f"unknown metric {name!r}; known: {', '.join(KNOWN_METRICS)}")
        if toy and name in PRESENCE and name != "clip_presence":
            raise MetricPreflightError(f"metric {name!r}: the toy world has one CLIP, the kit's; list clip_presence")
        if name in TOY_ONLY and not toy:
            raise MetricPreflightError(f"metric {name!r} is built from the toy kit's networks and runs only with "
                                       "model=toy; list the real metric (lpips, nudenet) for this model")


def preflight_metrics(names, spec: dict, *, toy: bool, offline: bool | None = None) -> list[str]:
    """Locate (offline) or fetch into the cache (online) every metric's weights and reference data, without
    building the metrics; returns what was found, one line per asset. Runs before the model loads, and looks
    for every asset before it fails: one MetricPreflightError lists all that are missing (`.missing`).

    The toy world's evaluators are the kit's own (checked with the kit); FID there uses the kit's shipped
    statistics unless a reference folder is set, and the toy-only metrics (toy_lpips, toy_detector) need it. Real runs need ResNet-50 (classifier_accuracy), CLIP ViT-B/32 OpenAI (clip_score), InceptionV3 and a
    reference image folder (fid), AlexNet (lpips) and NudeNet's bundled detector (nudenet); clip_presence loads
    CLIP ViT-B/32 OpenAI as clip_score does, clip_presence_l14 ViT-L/14 OpenAI.
    """
    from evaluation.metrics.base import WeightsUnavailableError, offline_mode, torch_hub_checkpoint
    from evaluation.metrics.classifier import resnet50_weights_file
    from evaluation.metrics.fid import inception_weights_file
    from evaluation.metrics.lpips import alexnet_weights_file

    check_metric_names(names, toy=toy)
    # (metric, where it looks, how to locate it): each asset on its own, so one missing does not hide the next
    assets = []
    for name in names:
        if name == "fid":
            if toy and not (spec.get("meta") or {}).get("fid_reference"):
                assets.append((name, None, lambda: "fid reference: the toy kit's fid_reference.safetensors"))
            else:
                ref = (spec.get("meta") or {}).get("fid_reference")
                assets.append((name, str(Path(str(ref)).expanduser()) if ref else None,
                               lambda: f"fid reference: {_fid_reference(spec)}"))
        if toy:
            continue
        if name == "classifier_accuracy":
            from torchvision.models import ResNet50_Weights

            assets.append((name, str(torch_hub_checkpoint(ResNet50_Weights.IMAGENET1K_V2.url)),
                           lambda: str(resnet50_weights_file(offline))))
        elif name == "lpips":
            assets.append((name, None, lambda: str(alexnet_weights_file(offline))))
        elif name == "fid":
            assets.append((name, None, lambda: str(inception_weights_file(offline))))
        elif name == "clip_score":
            assets.append((name, None, lambda: _locate_clip(offline_mode(offline))))
        elif name in PRESENCE:
            assets.append((name, None, lambda name=name: _locate_clip(offline_mode(offline), *PRESENCE_MODELS[name])))
        elif name == "nudenet":
            assets.append((name, None, _locate_nudenet))
    found, missing = [], []
    for name, where, locate in assets:
        try:
            found.append(locate())
        except (WeightsUnavailableError, MetricPreflightError) as err:
            missing.append((name, where, str(err)))
    if missing:
        raise MetricPreflightError("; ".join(f"metric {name!r}: {msg}" for name, _, msg in missing), missing)
    return found


def _fid_reference(spec: dict) -> str:
    ref = (spec.get("meta") or {}).get("fid_reference")
    name = spec.get("name")
    if not ref:
        raise MetricPreflightError(f"FID on {name!r} needs a folder of reference images: set "
                                   f"benchmark.meta.fid_reference=<folder of COCO val2014 images> (or "
                                   f"retain.<role>.meta.fid_reference), or drop fid from the benchmark's metrics")
    folder = Path(str(ref)).expanduser()
    if not folder.is_dir():
        raise MetricPreflightError(f"FID reference folder {folder} (benchmark {name!r} meta.fid_reference) does not "
                                   "exist; point it at a folder of real images, e.g. COCO val2014")
    if not any(p.suffix.lower() in _IMAGE_SUFFIXES for p in folder.rglob("*")):
        raise MetricPreflightError(f"FID reference folder {folder} holds no images ({', '.join(_IMAGE_SUFFIXES)}); "
                                   "fill it with the real reference images")
    return str(folder)


def _locate_clip(offline: bool, model: str | None = None, pretrained: str | None = None) -> str:
    """The open_clip weights clip_score (ViT-B/32 OpenAI) or a clip_presence variant loads, cached or fetched."""
    from evaluation.metrics.base import WeightsUnavailableError
    from evaluation.metrics.clip_score import CLIP_MODEL, CLIP_PRETRAINED, _cached_open_clip_file

    name, tag = model or CLIP_MODEL, pretrained or CLIP_PRETRAINED
    hit = _cached_open_clip_file(name, tag, None)
    if hit:
        return hit
    how = ("pre-download on a machine with internet (python -c \"from evaluation.metrics import *; "
           f"load_openai_clip('{name}', '{tag}', offline=False)\") and copy the HF cache (HF_HOME) here")
    if offline:
        raise WeightsUnavailableError(f"open_clip {name} '{tag}' weights are not in the local "
                                      f"cache and offline mode is on (HF_HUB_OFFLINE=1); {how}")
    import open_clip

    try:  # download into the cache now, not after generation
        return str(open_clip.pretrained.download_pretrained(open_clip.get_pretrained_cfg(name, tag)))
    except Exception as err:
        raise WeightsUnavailableError(f"could not download open_clip {name} '{tag}': {err}; "
                                      f"{how}") from err


def _locate_nudenet() -> str:
    from importlib.util import find_spec

    from evaluation.metrics.base import WeightsUnavailableError

    spec = find_spec("nudenet")  # located, not imported: onnxruntime loads when the metric is built
    if spec is None or not spec.origin:
        raise WeightsUnavailableError("the NudeNet metric needs nudenet==3.4.2: pip install nudenet==3.4.2")
    path = Path(spec.origin).parent / "320n.onnx"
    if not path.is_file():
        raise WeightsUnavailableError(f"nudenet's bundled detector {path} is missing; reinstall nudenet==3.4.2")
    return str(path)
