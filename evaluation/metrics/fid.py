"""FID against a reference image folder, with the folder's statistics cached.

The real path is torchmetrics' FrechetInceptionDistance on torch-fidelity's InceptionV3 (2048-d pool
features); any feature module mapping uint8 (N,3,H,W) -> (N,d) can be injected (the toy world's features,
a tiny net in tests). Reference statistics (mu, sigma, n) are computed once per (folder content, feature
extractor, preprocessing) and cached as safetensors, written atomically, so COCO-30k's reference pass is
paid once, not once per run.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cad.io import atomic_write_bytes, package_versions, stable_hash

from .base import Metric, WeightsUnavailableError, fetch_torch_hub_weights, to_pil_images, to_uint8_images

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
INCEPTION = "torch-fidelity inception-v3-compat pool3 (2048-d), TF FID weights 2015-12-05"


def default_cache_dir() -> Path:
    return Path(os.environ.get("CAD_CACHE_DIR", Path.home() / ".cache" / "cad")) / "fid_stats"


def inception_weights_file(offline: bool | None = None):
    """torch-fidelity's InceptionV3 weights file in the torch hub cache (downloaded unless offline)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return fetch_torch_hub_weights(URL_INCEPTION_V3, "FID InceptionV3 (torch-fidelity)", offline)


def load_inception(weights_path: str | None = None, *, offline: bool | None = None) -> torch.nn.Module:
    """torch-fidelity's FID InceptionV3, exactly as torchmetrics builds it for feature=2048.

    Weights: `weights_path`, else the torch hub cache (TORCH_HOME), downloaded unless offline.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = weights_path or inception_weights_file(offline)
    try:
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(path))
    except Exception as err:
        raise WeightsUnavailableError(f"could not load FID InceptionV3 weights from {path}: {err}; pass the file "
                                      f"{URL_INCEPTION_V3.rsplit('/', 1)[-1]} as weights_path") from err
    net.num_features = 2048  # saves torchmetrics a dummy 299x299 forward to find it out
    return net


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a module's state: equal weights, equal cached reference statistics."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def list_reference_images(folder: str | os.PathLike, limit: int | None = None) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"FID reference folder {folder} does not exist: point reference_dir at a folder of "
                                "real images (e.g. the COCO val2014 images of COCO-30k)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if len(files) < 2:
        raise ValueError(f"FID reference folder {folder} holds {len(files)} images; it needs at least 2")
    return files[:limit] if limit else files


def folder_fingerprint(files: Sequence[Path], root: Path) -> str:
    """Names and sizes (not mtimes: a copied folder keeps its statistics)."""
    return stable_hash([(p.relative_to(root).as_posix(), p.stat().st_size) for p in files], length=16)


def fit_image(im: Image.Image, size: int | None) -> Image.Image:
    """RGB; with `size`, a centre square crop resized to size x size (bicubic), the same for both sides."""
    im = im.convert("RGB")
    if size is None:
        return im
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return im.resize((size, size), Image.BICUBIC)


class FID(Metric):
    """FID of the generated images (update) against `reference_dir` (statistics cached).

    Args:
        reference_dir: folder of real images (searched recursively); or None with `reference=`.
        reference: precomputed statistics {"mu", "sigma", "n"} of the same feature extractor (the toy kit
            ships them), used instead of a folder.
        features: module uint8 (N,3,H,W) -> (N,d); None loads torch-fidelity's InceptionV3.
        feature_name: what the injected features are, for the protocol and the cache key.
        image_size: centre-crop and resize both sides to this square size; None keeps native sizes
            (Inception resizes to 299 itself; images of one size are batched together).
        reference_limit: use only the first n reference images (sorted by path).
        cache_dir: where reference statistics live (default $CAD_CACHE_DIR/fid_stats or ~/.cache/cad/fid_stats).
    """

    name = "fid"
    higher_is_better = {"fid": False}

    def __init__(self, reference_dir: str | os.PathLike | None = None, *, reference: dict[str, Any] | None = None,
                 features: torch.nn.Module | None = None,
                 feature_name: str | None = None, image_size: int | None = None, reference_limit: int | None = None,
                 cache_dir: str | os.PathLike | None = None, batch_size: int = 32, weights_path: str | None = None,
                 offline: bool | None = None, device: str = "cpu", reference_source: str | None = None) -> None:
        super().__init__()
        self.reference_source = reference_source  # what made precomputed statistics, for the protocol
        from torchmetrics.image.fid import FrechetInceptionDistance

        if (reference_dir is None) == (reference is None):
            raise ValueError("FID needs exactly one reference: reference_dir=<folder of real images> or "
                             "reference={'mu', 'sigma', 'n'} precomputed with the same features")
        if features is None:
            features = load_inception(weights_path, offline=offline)
            feature_name = feature_name or INCEPTION
        self.features = features
        self.feature_name = feature_name or f"injected:{type(features).__name__}"
        self.reference_dir = Path(reference_dir) if reference_dir is not None else None
        self.image_size, self.reference_limit, self.batch_size = image_size, reference_limit, batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        # reset_real_features=False: reset() clears the generated side only; the reference is fixed.
        self._fid = FrechetInceptionDistance(feature=features, reset_real_features=False, normalize=False).to(device)
        self.device = device
        self._reference: dict[str, Any] | None = None
        if reference is not None:
            d = int(getattr(features, "num_features", reference["mu"].shape[-1]))
            if tuple(reference["mu"].shape) != (d,) or tuple(reference["sigma"].shape) != (d, d):
                raise ValueError(f"reference statistics have mu {tuple(reference['mu'].shape)} and sigma "
                                 f"{tuple(reference['sigma'].shape)}, but the features are {d}-d: compute them "
                                 "with the same feature extractor")
            self._reference = {"mu": reference["mu"].double(), "sigma": reference["sigma"].double(),
                               "n": int(reference["n"]), "cache": None, "cached": True,
                               "folder_fingerprint": "precomputed"}
        self.reset()

    @classmethod
    def for_toy_kit(cls, kit: Any, reference_dir: str | os.PathLike | None = None, **kw) -> FID:
        """The toy world's features; against a folder if given, else the kit's shipped reference statistics."""
        kw.setdefault("feature_name", "toy kit fid_features (classifier penultimate features)")
        if reference_dir is None:
            kw.setdefault("reference", kit.fid_reference())
            kw.setdefault("reference_source", toy_reference_source(kit))
        return cls(reference_dir, features=kit.fid_features, **kw)

    def reset(self) -> None:
        super().reset()
        self._fid.reset()

    def update(self, images: Any, items: Sequence[Any] | None = None) -> None:
        """Add generated images; items are accepted for a uniform interface but FID does not read them."""
        self._seen(images)
        with torch.no_grad():
            if isinstance(images, torch.Tensor) and self.image_size is None:
                for chunk in to_uint8_images(images).split(self.batch_size):
                    self._fid.update(chunk.to(self.device), real=False)
            else:
                _feed_into(self._fid, to_pil_images(images), self.image_size, self.batch_size, real=False)

    # -- reference statistics -------------------------------------------------------------------------
    def reference_key(self) -> tuple[dict[str, Any], Path]:
        files = list_reference_images(self.reference_dir, self.reference_limit)
        ident = {
            "folder": str(self.reference_dir.resolve()),
            "folder_fingerprint": folder_fingerprint(files, self.reference_dir),
            "n_files": len(files),
            "features": self.feature_name,
            "features_fingerprint": module_fingerprint(self.features),
            "image_size": self.image_size,
        }
        key = stable_hash({k: v for k, v in ident.items() if k != "folder"}, length=16)
        return ident, self.cache_dir / f"{self.reference_dir.name}-{key}.safetensors"

    def reference_stats(self) -> dict[str, Any]:
        """(mu, sigma, n) of the reference folder: from the cache, else computed and cached atomically."""
        if self._reference is not None:
            return self._reference
        from safetensors.torch import load_file, safe_open, save

        ident, path = self.reference_key()
        if path.is_file():
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            stats = load_file(str(path))
            if meta.get("folder_fingerprint") == ident["folder_fingerprint"]:
                self._reference = {"mu": stats["mu"], "sigma": stats["sigma"], "n": int(stats["n"]),
                                   "cache": str(path), "cached": True, **ident}
                return self._reference
        files = list_reference_images(self.reference_dir, self.reference_limit)
        probe = _fresh_like(self._fid).to(self.device)
        with torch.no_grad():
            for i in range(0, len(files), self.batch_size):
                ims = [Image.open(p) for p in files[i:i + self.batch_size]]
                _feed_into(probe, ims, self.image_size, self.batch_size, real=True)
        n = int(probe.real_features_num_samples)
        mu = (probe.real_features_sum / n).cpu()
        sigma = ((probe.real_features_cov_sum.cpu() - n * torch.outer(mu, mu)) / (n - 1))
        meta = {k: str(v) for k, v in ident.items()}
        meta["versions"] = str(package_versions())
        atomic_write_bytes(path, save({"mu": mu.contiguous(), "sigma": sigma.contiguous(),
                                       "n": torch.tensor(n, dtype=torch.int64)}, metadata=meta))
        self._reference = {"mu": mu, "sigma": sigma, "n": n, "cache": str(path), "cached": False, **ident}
        return self._reference

    def compute(self) -> dict[str, float]:
        ref = self.reference_stats()
        n_fake = int(self._fid.fake_features_num_samples)
        if n_fake < 2:
            warnings.warn(f"FID needs at least 2 generated images, got {n_fake}: reporting NaN", stacklevel=2)
            return {"fid": float("nan")}
        mu, n = ref["mu"].double().to(self.device), ref["n"]
        # torchmetrics keeps sufficient statistics (sum, sum of outer products, n): rebuild them from mu/sigma
        self._fid.real_features_sum = mu * n
        self._fid.real_features_cov_sum = ref["sigma"].double().to(self.device) * (n - 1) + n * torch.outer(mu, mu)
        self._fid.real_features_num_samples = torch.tensor(n, dtype=torch.long, device=self.device)
        return {"fid": float(self._fid.compute())}

    def _protocol(self) -> dict[str, Any]:
        ref = self._reference or {}
        return {"backbone_weights": self.feature_name,
                "reference_dir": str(self.reference_dir) if self.reference_dir else "precomputed statistics",
                "reference_source": self.reference_source,
                "reference_n": ref.get("n"), "reference_fingerprint": ref.get("folder_fingerprint"),
                "reference_cache": ref.get("cache"), "image_size": self.image_size,
                "resize": "centre square crop + bicubic" if self.image_size else "native (Inception resizes to 299)",
                "implementation": "torchmetrics FrechetInceptionDistance"}


def toy_reference_source(kit: Any) -> str:
    """What made a toy kit's shipped FID statistics (cad.toy.kit.train_kit writes them beside the models)."""
    seed = (getattr(kit, "manifest", None) or {}).get("seed")
    where = getattr(kit, "path", None)
    return (f"{where}/fid_reference.safetensors: mean/cov of the kit classifier's features over rendered world "
            f"images (cad.toy.render.render_dataset, seed {seed} + 7, written by cad.toy.kit.train_kit)"
            if where else "injected toy reference statistics")


def _fresh_like(fid):
    """A second torchmetrics FID sharing the feature module, to accumulate the reference side alone."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=fid.inception, reset_real_features=True, normalize=False)


def _feed_into(fid, images: list[Image.Image], size: int | None, batch_size: int, real: bool) -> None:
    """Equal-sized uint8 batches into a torchmetrics FID (native sizes may differ across a folder)."""
    by_size: dict[tuple[int, int], list[Image.Image]] = {}
    for im in images:
        im = fit_image(im, size)
        by_size.setdefault(im.size, []).append(im)
    for group in by_size.values():
        for i in range(0, len(group), batch_size):
            fid.update(to_uint8_images(group[i:i + batch_size]).to(fid.device), real=real)
