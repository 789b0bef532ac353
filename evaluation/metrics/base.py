"""The Metric base class and the image/item plumbing every metric shares.

Metrics follow the torchmetrics manner: `update(images, items)` accumulates, `compute()` returns a flat
`dict[str, float]`, `reset()` clears. Keys carry no benchmark prefix (evaluation.score adds it). Each metric
says which direction is better per key (`higher_is_better`, exact keys or `prefix/` entries) and describes
its own protocol (backbone weights, thresholds, preprocessing, package versions) so that every number in
results.jsonl can be traced to how it was measured.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cad.errors import UserError
from cad.io import package_versions


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights for a metric backbone could not be loaded (offline, not cached, bad file)."""


def offline_mode(offline: bool | None) -> bool:
    """Explicit choice wins; otherwise follow HF_HUB_OFFLINE (which tests and `make test` set)."""
    if offline is not None:
        return bool(offline)
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def torch_hub_checkpoint(url: str) -> Path:
    """Where torch.hub.load_state_dict_from_url caches `url` (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def fetch_torch_hub_weights(url: str, what: str, offline: bool | None) -> Path:
    """The cached checkpoint for `url`, downloading it unless offline; a clear error otherwise.

    Offline, we never touch the network: the answer is then the same on every machine (deterministic tests).
    """
    path = torch_hub_checkpoint(url)
    if path.is_file():
        return path
    how = (
        f"Pre-download it on a machine with internet (python -c \"import torch; "
        f"torch.hub.load_state_dict_from_url('{url}')\") and copy {path.name} into {path.parent} "
        f"(set TORCH_HOME to choose that folder), or pass a local file with `weights_path=`."
    )
    if offline_mode(offline):
        raise WeightsUnavailableError(f"{what} weights are not cached at {path} and offline mode is on "
                                      f"(HF_HUB_OFFLINE=1 or offline=True). {how}")
    try:
        torch.hub.load_state_dict_from_url(url, progress=False, map_location="cpu")
    except Exception as err:  # any network/IO failure: say what was wanted and how to provide it
        raise WeightsUnavailableError(f"could not download {what} weights from {url}: {err}. {how}") from err
    return path


def to_float_images(images: Any) -> torch.Tensor:
    """PIL list / uint8 tensor / float tensor in [0,1] (N,3,H,W) -> float32 (N,3,H,W) in [0,1] on CPU."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected an image tensor of shape (N,3,H,W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            return images.detach().cpu().float() / 255.0
        x = images.detach().cpu().float()
        if x.numel() and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
            raise ValueError("float images must lie in [0, 1]; convert from [-1, 1] with (x + 1) / 2 first")
        return x.clamp(0, 1)
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, Sequence) and all(isinstance(im, Image.Image) for im in images):
        if not images:
            return torch.zeros(0, 3, 1, 1)
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            raise ValueError(f"images of different sizes in one batch {sorted(sizes)}: resize them first")
        arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    raise TypeError(f"images must be a list of PIL images or a (N,3,H,W) tensor, got {type(images).__name__}")


def to_uint8_images(images: Any) -> torch.Tensor:
    """Any accepted image input -> uint8 (N,3,H,W); uint8 tensors pass through unchanged."""
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        to_float_images(images)  # shape check only
        return images.detach().cpu()
    return to_float_images(images).mul(255).round().to(torch.uint8)


def to_pil_images(images: Any) -> list[Image.Image]:
    """Any accepted image input -> list of RGB PIL images (lossless for uint8 and PIL input)."""
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, Sequence) and all(isinstance(im, Image.Image) for im in images):
        return [im.convert("RGB") for im in images]
    arr = to_uint8_images(images).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def check_items(images: Any, items: Sequence[Any], attrs: Sequence[str] = ("prompt",)) -> list[Any]:
    """Items must pair one to one with images and carry the attributes the metric reads."""
    n = len(images) if not isinstance(images, torch.Tensor) else images.shape[0]
    items = list(items)
    if len(items) != n:
        raise ValueError(f"got {n} images but {len(items)} items: pass one item per image, in the same order")
    for it in items:
        for a in attrs:
            if not hasattr(it, a):
                raise TypeError(f"item {it!r} has no attribute {a!r}: pass evaluation.benchmarks.Item objects "
                                f"(or any object with {', '.join(attrs)})")
    return items


def normalize_name(name: str) -> str:
    """Case/space/underscore/hyphen-insensitive key, so 'English_springer' matches 'english springer'."""
    return " ".join(str(name).replace("_", " ").replace("-", " ").lower().split())


def mean_or_nan(values: Sequence[float]) -> float:
    """The mean, or NaN for an empty group (a benchmark without that group); never a ZeroDivisionError."""
    return float(sum(values) / len(values)) if len(values) else math.nan


class Metric(ABC):
    """torchmetrics-style accumulator: update(images, items) -> compute() -> dict[str, float]; reset()."""

    #: short name used in protocol records
    name: str = "metric"
    #: direction per key: exact keys, or "prefix/" entries covering every key that starts with the prefix
    higher_is_better: dict[str, bool] = {}

    def __init__(self) -> None:
        self._sizes: set[tuple[int, int]] = set()
        self._n_images = 0

    @abstractmethod
    def update(self, images: Any, items: Sequence[Any]) -> None:
        """Accumulate a batch: images (list of PIL or (N,3,H,W) tensor) and one item per image."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """Flat results over everything seen since the last reset."""

    def reset(self) -> None:
        self._sizes = set()
        self._n_images = 0

    def is_higher_better(self, key: str) -> bool | None:
        """Direction of one result key: exact entry first, then the longest matching 'prefix/' entry."""
        hib = self.higher_is_better
        if key in hib:
            return hib[key]
        prefixes = [p for p in hib if p.endswith("/") and key.startswith(p)]
        return hib[max(prefixes, key=len)] if prefixes else None

    def _seen(self, images: Any) -> None:
        """Record image sizes and count for the protocol."""
        x = images if isinstance(images, torch.Tensor) else None
        if x is not None:
            self._sizes.add((int(x.shape[-1]), int(x.shape[-2])))
            self._n_images += int(x.shape[0])
        else:
            ims = [images] if isinstance(images, Image.Image) else list(images)
            self._sizes.update(im.size for im in ims)
            self._n_images += len(ims)

    def _protocol(self) -> dict[str, Any]:
        """Metric-specific protocol entries (backbone, weights, thresholds, preprocessing)."""
        return {}

    def protocol(self) -> dict[str, Any]:
        """How the numbers were measured. Generation settings (seed mode, scheduler, steps, guidance) are
        added by evaluation.score, which knows them; the metric records what it saw and used."""
        out = {
            "metric": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "n_images": self._n_images,
            "image_sizes": sorted(f"{w}x{h}" for w, h in self._sizes),
            "higher_is_better": dict(self.higher_is_better),
            "package_versions": package_versions(),
        }
        out.update(self._protocol())
        return out
