"""LPIPS between the original and the edited image of the same prompt and seed, split per artist.

For artist erasure the erased artist's images should change a lot (`lpips_erased`, higher is better) and
the other artists' images should stay put (`lpips_others`, lower is better). The real distance is
torchmetrics' LPIPS with AlexNet (torchvision ImageNet weights + torchmetrics' bundled linear heads); any
distance can be injected, and `FeatureLPIPS` is the LPIPS formula over an injected feature network.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .base import (
    Metric,
    WeightsUnavailableError,
    check_items,
    fetch_torch_hub_weights,
    mean_or_nan,
    normalize_name,
    to_float_images,
)

LPIPS_WEIGHTS = "torchmetrics LPIPS alex (torchvision AlexNet_Weights.IMAGENET1K_V1 + bundled lin layers)"


class TorchmetricsLPIPS:
    """torchmetrics' LearnedPerceptualImagePatchSimilarity as a per-pair distance: (x0, x1) in [0,1] -> (N,)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.metric.net(x0, x1, normalize=True).reshape(-1)


def alexnet_weights_file(offline: bool | None = None):
    """The AlexNet weights LPIPS(alex) reads from the torch hub cache (downloaded unless offline)."""
    from torchvision.models import AlexNet_Weights

    return fetch_torch_hub_weights(AlexNet_Weights.IMAGENET1K_V1.url,
                                   "LPIPS AlexNet (torchvision AlexNet_Weights.IMAGENET1K_V1)", offline)


def load_lpips_alexnet(*, offline: bool | None = None, device: str = "cpu") -> TorchmetricsLPIPS:
    """torchmetrics LPIPS (net_type="alex"). Its AlexNet comes from the torch hub cache (TORCH_HOME),
    downloaded unless offline; the linear heads ship inside torchmetrics."""
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    from torchvision.models import AlexNet_Weights

    url = AlexNet_Weights.IMAGENET1K_V1.url
    alexnet_weights_file(offline)
    try:
        metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="none", normalize=True)
    except Exception as err:
        raise WeightsUnavailableError(f"could not build torchmetrics LPIPS(alex): {err}; check that "
                                      f"{url.rsplit('/', 1)[-1]} in $TORCH_HOME/hub/checkpoints is intact") from err
    return TorchmetricsLPIPS(metric.eval().to(device))


class FeatureLPIPS(torch.nn.Module):
    """The LPIPS formula over an injected feature net (tests, toy world).

    features(x) returns one feature map or a list of them for x scaled to [-1, 1]. Per layer: unit-normalise
    each position's channel vector, square the difference, weight channels (learned heads if given, else the
    mean), average over space; sum over layers. Identical inputs give exactly 0.
    """

    def __init__(self, features: torch.nn.Module, channel_weights: Sequence[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.features = features.eval()
        self.channel_weights = None if channel_weights is None else [w.reshape(1, -1, 1, 1) for w in channel_weights]

    @torch.no_grad()
    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        f0, f1 = self.features(2 * x0 - 1), self.features(2 * x1 - 1)
        f0, f1 = (f0, f1) if isinstance(f0, (list, tuple)) else ([f0], [f1])
        total = torch.zeros(x0.shape[0])  # on the CPU whatever device the features run on
        for k, (a, b) in enumerate(zip(f0, f1)):
            a = a / torch.sqrt((a**2).sum(1, keepdim=True) + 1e-10)
            b = b / torch.sqrt((b**2).sum(1, keepdim=True) + 1e-10)
            d = (a - b) ** 2
            d = (d * self.channel_weights[k]).sum(1) if self.channel_weights is not None else d.mean(1)
            total += d.mean((-2, -1)).float().cpu()
        return total


class SequentialTaps(torch.nn.Module):
    """The outputs of chosen layers of an nn.Sequential, as the feature pyramid FeatureLPIPS compares.

    Inputs are resized (bilinear, antialiased) to `size` first when given, as the net's own forward does.
    """

    def __init__(self, body: torch.nn.Sequential, indices: Sequence[int], size: int | None = None) -> None:
        super().__init__()
        if not indices or max(indices) >= len(body):
            raise ValueError(f"tap indices {list(indices)} must name layers of a {len(body)}-layer Sequential")
        self.body, self.indices, self.size = body, tuple(sorted(indices)), size

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                                                align_corners=False)
        out = []
        for i, layer in enumerate(self.body[: self.indices[-1] + 1]):
            x = layer(x)
            if i in self.indices:
                out.append(x)
        return out


TOY_LPIPS_WEIGHTS = ("perceptual distance on toy-classifier features (LPIPS formula over the kit classifier's 3 "
                     "conv blocks, uniform channel weights: no learned linear heads exist for it)")


class LPIPSMetric(Metric):
    """Mean LPIPS(original, edited) for the erased artist, the other artists pooled, and per artist.

    update(images, items, reference_images): `images` are the edited model's images, `reference_images` the
    original model's images for the same items (same prompt, same seed), in the same order; `.label` of
    each item names its artist. With `reference_dir` (the original model's image folder written by
    cad.generate) the originals are read from `<reference_dir>/<item.id>.png`, so plain
    `update(images, items)` works (that is how evaluation.score drives it).

    Args:
        target: the erased artist (matched case/space-insensitively against item labels).
        distance: callable (x0, x1) float (N,3,H,W) in [0,1] -> (N,) distances; None loads torchmetrics
            LPIPS(alex).
        reference_dir: folder of the original model's images, one `<item.id>.png` per item.
    """

    name = "lpips"

    def __init__(self, target: str, *, distance: Callable | None = None, weights: str | None = None,
                 reference_dir: str | os.PathLike | None = None, batch_size: int = 16,
                 offline: bool | None = None, device: str = "cpu", key: str = "lpips") -> None:
        super().__init__()
        self.name = key  # result keys read <key>_erased, <key>_others, <key>/<label>
        self.reference_dir = Path(reference_dir) if reference_dir is not None else None
        if distance is None:
            distance = load_lpips_alexnet(offline=offline, device=device)
            weights = weights or LPIPS_WEIGHTS
        self.target, self.distance, self.batch_size, self.device = str(target), distance, batch_size, device
        self.weights = weights or f"injected:{type(distance).__name__}"
        self.higher_is_better = {f"{key}_erased": True, f"{key}_others": False, f"{key}/": False,
                                 f"{key}/{self.target}": True}
        self.reset()

    @classmethod
    def for_toy_kit(cls, kit: Any, target: str, **kw) -> LPIPSMetric:
        """`toy_lpips`: the LPIPS formula over the toy classifier's conv blocks (32, 16 and 8 px maps), with
        uniform channel weights, since there are no honest learned heads for these features. Named for what
        it is: a perceptual distance on toy-classifier features, not LPIPS(alex)."""
        clf = kit.classifier
        taps = [i for i, layer in enumerate(clf.body) if isinstance(layer, torch.nn.Sequential)]  # the conv blocks
        kw.setdefault("weights", TOY_LPIPS_WEIGHTS)
        kw.setdefault("key", "toy_lpips")
        return cls(target, distance=FeatureLPIPS(SequentialTaps(clf.body, taps, getattr(clf, "image_size", None))),
                   **kw)

    def reset(self) -> None:
        super().reset()
        self._scores: dict[str, list[float]] = {}  # artist label (first spelling seen) -> distances
        self._names: dict[str, str] = {}

    def update(self, images: Any, items: Sequence[Any], reference_images: Any = None) -> None:
        items = check_items(images, items, ("label",))
        if reference_images is None:
            reference_images = self._load_references(items)
        check_items(reference_images, items, ("label",))
        edited, original = to_float_images(images), to_float_images(reference_images)
        if edited.shape != original.shape:
            raise ValueError(f"edited images {tuple(edited.shape)} and originals {tuple(original.shape)} differ in "
                             "shape: generate both at the same size")
        self._seen(images)
        dists = torch.cat([torch.as_tensor(self.distance(o.to(self.device), e.to(self.device))).reshape(-1).float().cpu()
                           for o, e in zip(original.split(self.batch_size), edited.split(self.batch_size))])
        for it, d in zip(items, dists.tolist()):
            key = normalize_name(it.label)
            name = self._names.setdefault(key, str(it.label))
            self._scores.setdefault(name, []).append(d)

    def _load_references(self, items: Sequence[Any]) -> list[Image.Image]:
        if self.reference_dir is None:
            raise ValueError("LPIPS compares pairs: pass reference_images= (the original model's images for the "
                             "same items, same prompt and seed, same order) or construct with reference_dir=")
        paths = [self.reference_dir / f"{getattr(it, 'id', None)}.png" for it in items]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} original images missing in {self.reference_dir} "
                                    f"({', '.join(missing[:5])}): generate the benchmark with the unedited model first")
        out = []
        for p in paths:
            with Image.open(p) as im:
                out.append(im.convert("RGB"))
        return out

    def compute(self) -> dict[str, float]:
        t = normalize_name(self.target)
        erased = [d for name, ds in self._scores.items() if normalize_name(name) == t for d in ds]
        others = [d for name, ds in self._scores.items() if normalize_name(name) != t for d in ds]
        k = self.name
        out = {f"{k}_erased": mean_or_nan(erased), f"{k}_others": mean_or_nan(others)}
        for name, ds in self._scores.items():
            out[f"{k}/{self.target if normalize_name(name) == t else name}"] = mean_or_nan(ds)
        return out

    def _protocol(self) -> dict[str, Any]:
        return {"backbone_weights": self.weights, "target": self.target,
                "reference_dir": str(self.reference_dir) if self.reference_dir else None,
                "pairs": "original vs edited model, same prompt and seed", "input_range": "[0,1] -> [-1,1]"}
