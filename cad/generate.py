"""Seeded, resumable, shardable image generation into a content-addressed cache.

One PNG per benchmark item, named `<item id>.png`, written atomically: what exists is what is done, so a rerun
fills only the gaps and a run killed midway leaves only whole images behind. The folder is named by the model,
the edit ("original" for none), the sampler settings and the benchmark name and version (`image_dir`), so the
unedited model's images are made once and every run that needs them finds them.

Each item gets its own CPU `torch.Generator` seeded from its row (or one fixed seed for all), and diffusers draws
every item's initial latent from its own generator; an item's image therefore does not depend on which batch or
shard it was rendered in (up to float round-off of batched kernels).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from cad.io import atomic_save_image, atomic_write_json, atomic_write_text, package_versions, stable_hash

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STALE_TMP_S = 600  # a PNG write takes milliseconds; a temp file this old was left by a killed process


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9@._-]+", "_", str(name).replace("/", "--")).strip("._") or "model"


def sampler_settings(pipe=None, *, steps: int, guidance: float, height: int | None = None, width: int | None = None,
                     seed_mode: str = "per_item", fixed_seed: int = 0, **extra) -> dict:
    """The sampler part of an image folder's identity: what changes the pixels, besides model, edit and items.

    With a pipeline, the scheduler's class and config are included, so DDIM and PNDM images never share a folder.
    """
    _check_seed_mode(seed_mode)
    out: dict[str, Any] = {"steps": int(steps), "guidance": float(guidance), "height": height, "width": width,
                           "seed_mode": seed_mode}
    if seed_mode == "fixed":
        out["fixed_seed"] = int(fixed_seed)
    if pipe is not None:
        out["height"], out["width"] = _resolve_size(pipe, height, width)
        out["scheduler"] = type(pipe.scheduler).__name__
        out["scheduler_config"] = stable_hash(dict(pipe.scheduler.config))
    out.update(extra)
    return out


def image_dir(root: str | os.PathLike, model_name: str, edit, sampler: Mapping, benchmark) -> Path:
    """`<root>/images/<model>/<edit>/<sampler>/<benchmark>@v<version>`; `root` is the outputs folder.

    `edit` is None ("original"), a `cad.Edit` (its fingerprint) or a string. `model_name` should identify the
    weights (a hub id, or a name plus `cad.loading.unet_fingerprint` for local folders).
    """
    if edit is None:
        edit_part = "original"
    elif isinstance(edit, str):
        edit_part = _safe(edit)
    else:
        edit_part = _safe(edit.fingerprint)
    s = dict(sampler)
    readable = f"s{s.get('steps')}-g{s.get('guidance')}"
    if s.get("height") and s.get("width"):
        readable += f"-{s['height']}x{s['width']}"
    sampler_part = f"{readable}-{stable_hash(s, 10)}"
    if hasattr(benchmark, "key"):
        bench_part = benchmark.key
    elif isinstance(benchmark, str):
        bench_part = benchmark
    else:
        raise TypeError(f"benchmark must be an evaluation.Benchmark or a '<name>@v<version>' string, got {benchmark!r}")
    return Path(root) / "images" / _safe(model_name) / edit_part / sampler_part / _safe(bench_part)


def _check_seed_mode(seed_mode: str) -> None:
    if seed_mode not in ("per_item", "fixed"):
        raise ValueError(f"seed_mode must be 'per_item' (each item's own seed) or 'fixed' (one seed), got {seed_mode!r}")


def _resolve_size(pipe, height, width) -> tuple[int, int]:
    default = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return int(height or default), int(width or default)


def _check_items(items: Sequence) -> None:
    seen = set()
    for it in items:
        if not _SAFE_ID.match(str(it.id)):
            raise ValueError(f"item id {it.id!r} is not filename-safe (letters, digits, '.', '_', '-')")
        if it.id in seen:
            raise ValueError(f"item id {it.id!r} occurs twice; ids name the image files and must be unique")
        seen.add(it.id)


def manifest_name(shard: int, num_shards: int) -> str:
    """One manifest per shard, so shards on machines sharing a folder never rewrite each other's file."""
    return "manifest.jsonl" if num_shards == 1 else f"manifest.shard-{shard:03d}-of-{num_shards:03d}.jsonl"


def read_manifest(out_dir: str | os.PathLike) -> dict[str, dict]:
    """Records of all manifests in a folder, by item id (the latest record wins)."""
    records: dict[str, dict] = {}
    for path in sorted(Path(out_dir).glob("manifest*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                records[rec["id"]] = rec
    return records


@contextlib.contextmanager
def _locked(path: Path):
    """An advisory lock beside the manifest: two processes on one machine writing the same shard stay serial."""
    try:
        import fcntl
    except ImportError:  # Windows: per-shard manifests are the only protection
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _append_manifest(out_dir: Path, name: str, records: list[dict]) -> None:
    path = out_dir / name
    with _locked(out_dir / f".{name}.lock"):
        old = path.read_text() if path.exists() else ""
        new = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
        atomic_write_text(path, old + new)  # the whole file is rewritten, so a crash never leaves half a line


def _write_meta(out_dir: Path, identity: dict, info: Mapping | None) -> None:
    path = out_dir / "meta.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("identity") != json.loads(json.dumps(identity, sort_keys=True, default=str)):
            raise ValueError(
                f"{out_dir} already holds images made with {old.get('identity')}, not {identity}. "
                "Use image_dir(...) to get the folder of these settings, or delete the folder."
            )
        return
    atomic_write_json(path, {"identity": identity, **dict(info or {}), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "package_versions": package_versions()})


def _clean_stale_tmp(out_dir: Path) -> None:
    now = time.time()
    for tmp in out_dir.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                tmp.unlink()


def _batches(items: list, batch_size: int, default_guidance: float) -> list[tuple[float, list]]:
    """Items grouped by effective guidance (one pipeline call has one scale), in order, cut to batch_size."""
    groups: dict[float, list] = {}
    for it in items:
        g = float(default_guidance if it.guidance is None else it.guidance)
        groups.setdefault(g, []).append(it)
    return [(g, group[i : i + batch_size]) for g, group in groups.items() for i in range(0, len(group), batch_size)]


def generate(
    pipe,
    items: Iterable,
    out_dir: str | os.PathLike,
    *,
    edit=None,
    steps: int,
    guidance: float,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 8,
    seed_mode: str = "per_item",
    fixed_seed: int = 0,
    shard: int = 0,
    num_shards: int = 1,
    progress: bool = True,
    info: Mapping | None = None,
    call_kwargs: Mapping | None = None,
) -> list[Path]:
    """Render this shard's items that have no PNG yet into `out_dir`; return the shard's image paths in item order.

    items: `evaluation.Item`s or an `evaluation.Benchmark` (id, prompt, seed, label, guidance; guidance None = the
    `guidance` argument). Shard `shard` of `num_shards` takes items `shard, shard + n, ...`, so shards on several
    GPUs or cluster jobs fill one folder. `edit` (a `cad.Edit`) is applied once around the whole generation and
    restored after. `info` (model name, edit meta, benchmark spec, ...) is recorded in meta.json. `call_kwargs`
    go to the pipeline call as they are (e.g. a step-end callback); anything in them that changes the pixels
    must also be part of the sampler settings naming the folder.
    """
    _check_seed_mode(seed_mode)
    if not (isinstance(num_shards, int) and num_shards >= 1 and isinstance(shard, int) and 0 <= shard < num_shards):
        raise ValueError(f"shard must be in 0..num_shards-1 with num_shards >= 1, got shard={shard}, num_shards={num_shards}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bench_info = {}
    if hasattr(items, "items") and hasattr(items, "key"):  # an evaluation.Benchmark
        bench_info = {"benchmark": {"name": items.name, "version": items.version, "key": items.key,
                                    "meta": items.meta}}
        items = items.items
    items = list(items)
    _check_items(items)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    height, width = _resolve_size(pipe, height, width)
    mine = items[shard::num_shards]
    paths = [out_dir / f"{it.id}.png" for it in mine]
    pending = [it for it, p in zip(mine, paths) if not p.exists()]

    identity = {"steps": int(steps), "guidance": float(guidance), "height": height, "width": width,
                "seed_mode": seed_mode, "fixed_seed": int(fixed_seed) if seed_mode == "fixed" else None,
                "edit": None if edit is None else getattr(edit, "fingerprint", str(edit)),
                "scheduler": type(pipe.scheduler).__name__}
    edit_meta = None if edit is None else getattr(edit, "meta", None)
    _write_meta(out_dir, identity, {"edit_meta": edit_meta, **bench_info, **dict(info or {}),
                                    "call_kwargs": sorted(call_kwargs or {})})
    _clean_stale_tmp(out_dir)
    if not pending:
        return paths

    from tqdm import tqdm

    manifest = manifest_name(shard, num_shards)
    bar = tqdm(total=len(mine), initial=len(mine) - len(pending), unit="img", disable=not progress,
               desc=f"generate {out_dir.name}" + (f" [{shard + 1}/{num_shards}]" if num_shards > 1 else ""))
    applied = edit.applied(pipe) if edit is not None else contextlib.nullcontext()

    def write(batch, seeds, images, g, seconds):
        records = []
        for it, seed, image in zip(batch, seeds, images):
            atomic_save_image(out_dir / f"{it.id}.png", image)
            records.append({"id": it.id, "file": f"{it.id}.png", "prompt": it.prompt, "seed": seed,
                            "label": it.label, "guidance": g, "seconds": round(seconds, 4),
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        _append_manifest(out_dir, manifest, records)  # after the PNGs: a listed image always exists
        bar.update(len(batch))

    # One writer thread encodes and writes a batch's PNGs (zlib and file I/O release the GIL) while the pipeline
    # renders the next batch; a single worker keeps the manifest in order. Leaving the `with` waits for it.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cad-png-writer")
    pending_writes = []
    try:
        with applied, torch.no_grad():
            for g, batch in _batches(pending, batch_size, guidance):
                # CPU generators: the same seed gives the same initial noise on any device.
                seeds = [int(fixed_seed) if seed_mode == "fixed" else int(it.seed) for it in batch]
                generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
                t0 = time.perf_counter()
                images = pipe(prompt=[it.prompt for it in batch], generator=generators, num_inference_steps=steps,
                              guidance_scale=g, height=height, width=width, output_type="pil",
                              **dict(call_kwargs or {})).images
                seconds = (time.perf_counter() - t0) / len(batch)
                pending_writes.append(writer.submit(write, batch, seeds, images, g, seconds))
                if pending_writes[0].done():
                    pending_writes.pop(0).result()  # surface a failed write (disk full, ...) without waiting
    finally:
        writer.shutdown(wait=True)
        bar.close()
    for job in pending_writes:
        job.result()
    return paths
