"""Score a folder of generated images: load the PNGs in item order, feed every metric, flatten the results.

Keys are `<benchmark name>/<metric key>` (`imagenette/acc_target`, `coco30k/fid`). The generation settings that
made the images (meta.json of the folder, written by cad.generate) join each metric's own protocol in
`score_protocols`, so every number in results.jsonl says how it was produced.

Scoring trusts no cached image: in a folder written by cad.generate every PNG must match the sha256 of its
manifest record (a replaced, corrupted or unrecorded file raises ImageCacheError naming it and the fix), and
an image that does not decode raises naming the file, in any folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image


def _metric_list(metrics) -> list:
    if isinstance(metrics, Mapping):
        metrics = list(metrics.values())
    elif not isinstance(metrics, Iterable):
        metrics = [metrics]
    metrics = list(metrics)
    for m in metrics:
        if not (hasattr(m, "update") and hasattr(m, "compute") and hasattr(m, "reset")):
            raise TypeError(f"{m!r} is not a metric: pass evaluation.metrics objects (update/compute/reset)")
    return metrics


def image_paths(image_dir: str | os.PathLike, items: Sequence, *, verify: bool = True) -> list[Path]:
    """The PNG of each item, in item order; a clear error if any is missing or (verify, in a folder written by
    cad.generate) does not match its manifest record."""
    image_dir = Path(image_dir)
    paths = [image_dir / f"{it.id}.png" for it in items]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images are missing in {image_dir} ({shown}). Run cad.generate for "
            "this benchmark (all shards) first; it fills only the missing items."
        )
    if verify:
        from cad.generate import ImageCacheError, verify_images

        bad = verify_images(image_dir, items)
        if bad:
            shown = "; ".join(f"{p.name}: {why}" for p, why in bad[:3]) + ("; ..." if len(bad) > 3 else "")
            raise ImageCacheError(
                f"{len(bad)} of {len(paths)} cached images in {image_dir} are not the ones generated ({shown}). "
                "Delete those files and rerun the generation (the same experiments.run command, or cad.generate): "
                "it regenerates exactly the unverified items, then score again.")
    return paths


def _load(path: Path) -> Image.Image:
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")  # convert() loads the pixels, so the file handle can close
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        from cad.generate import ImageCacheError

        raise ImageCacheError(f"{path} is not a decodable image ({err}); delete it and rerun the generation, "
                              "which regenerates the missing item, then score again") from err


def score(
    image_dir: str | os.PathLike,
    benchmark,
    metrics,
    batch_size: int = 32,
    *,
    prefix: str | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Feed the images of `benchmark`'s items (in item order, `batch_size` at a time) to every metric.

    metrics: one metric, a list, or a mapping name -> metric; each is reset first, so scoring is repeatable.
    Returns `{"<prefix>/<key>": value}` with prefix = the benchmark name unless given.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = list(benchmark.items if hasattr(benchmark, "items") and hasattr(benchmark, "key") else benchmark)
    if not items:
        raise ValueError("the benchmark has no items to score")
    prefix = prefix if prefix is not None else getattr(benchmark, "name", None)
    if not prefix:
        raise ValueError("pass prefix=... when scoring a plain list of items (no benchmark name)")
    metrics = _metric_list(metrics)
    paths = image_paths(image_dir, items)
    for m in metrics:
        m.reset()

    from cad.progress import progress as progress_bar

    with progress_bar(total=len(items), enabled=progress, desc=f"score {prefix or image_dir}", unit="img") as bar:
        for start in range(0, len(items), batch_size):
            batch_items = items[start : start + batch_size]
            images = [_load(p) for p in paths[start : start + batch_size]]
            for m in metrics:
                m.update(images, batch_items)
            bar.update(len(batch_items))

    out: dict[str, float] = {}
    for m in metrics:
        for key, value in m.compute().items():
            full = f"{prefix}/{key}"
            if full in out:
                raise ValueError(f"two metrics both report {full!r}; give one of them another name or key")
            out[full] = float(value) if _is_number(value) else value
    return out


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def score_protocols(image_dir: str | os.PathLike, metrics) -> dict:
    """How the numbers were made: the folder's generation meta.json plus each metric's protocol() by name."""
    meta_path = Path(image_dir) / "meta.json"
    generation = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    generation.pop("package_versions", None)  # the metric protocols carry them already
    protocols = {}
    for m in _metric_list(metrics):
        protocols[getattr(m, "name", type(m).__name__)] = m.protocol() if hasattr(m, "protocol") else {}
    return {"generation": generation, "metrics": protocols}
