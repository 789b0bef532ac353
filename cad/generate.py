"""Seeded, resumable, shardable image generation into a content-addressed cache.

One PNG per benchmark item, named `<item id>.png`, written atomically: what exists is what is done, so a rerun
fills only the gaps and a run killed midway leaves only whole images behind. The folder is named by the model,
the edit ("original" for none), the sampler settings, the benchmark name and version and a hash of its items
(`image_dir`), so the unedited model's images are made once and every run that needs them finds them, and a
benchmark whose items changed under the same name and version never reuses the old images.

Each item gets its own CPU `torch.Generator` seeded from its row (or one fixed seed for all), and diffusers draws
every item's initial latent from its own generator; an item's image therefore does not depend on which batch or
shard it was rendered in (up to float round-off of batched kernels).

Verified cache: every manifest record carries the sha256 of its PNG and a hash of the folder's identity.
An item counts as done only when its PNG's bytes match its record and the record's prompt, seed and guidance
are the item's; a PNG that does not (replaced, corrupt, truncated, copied in, written by a run killed before
it recorded it, or made for another prompt under the same item id) is regenerated with a warning naming
the file. Scoring (`verify_images`) is strict instead: it raises naming the files and the fix.

Concurrency: before rendering a batch, a process claims its items (`.claims/<id>.claim`, created under a
folder lock; cad.claims, shared with attributions and edits); another process skips claimed items and
afterwards waits for them, taking a claim over when its owner died (same host, pid gone) or it is older than
`claim_ttl_s`. Two runs on one folder therefore never both render an item, and a crashed run's successor
picks its items up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from cad.claims import CLAIM_TTL_S, claim_state, locked, release, write_claim
from cad.io import (
    ArtifactCorruptError,
    as_json,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    package_versions,
    png_bytes,
    sha256_bytes,
    sha256_file,
    stable_hash,
)
from cad.speed import (
    check_batch_size,
    compile_options,
    fast_denoiser,
    resolve_batch_size,
    wants_channels_last,
)

log = logging.getLogger("cad.generate")

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STALE_TMP_S = 600  # a PNG write takes milliseconds; a temp file this old was left by a killed process
CLAIMS_DIR = ".claims"
# A claim covers one batch (seconds to minutes on a GPU); one older than CLAIM_TTL_S belongs to a hung or lost
# run on another machine (a dead owner on this machine is detected at once by its pid).
_POLL_S = 0.25


class ImageCacheError(ArtifactCorruptError):
    """Images in a cache folder are missing from its manifest, do not match their recorded sha256, cannot be
    decoded, or the folder's meta.json disagrees with its records; the message names the files and the fix."""


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
    """`<root>/images/<model>/<edit>/<sampler>/<benchmark key>-<items hash>`; `root` is the outputs folder.

    `edit` is None ("original"), a `cad.Edit` (its fingerprint) or a string. `model_name` should identify the
    weights (a hub id, or a name plus `cad.loading.unet_fingerprint` for local folders). For a Benchmark the
    items hash is its meta's `images_hash` (id, prompt, seed and guidance of every item of the spec version,
    so subsets and limits share the folder), else a hash of its items; a '<name>@v<version>' string is used as
    it is.
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
        # the name and version alone let a changed item set (a new template) reuse the old images
        tag = (getattr(benchmark, "meta", None) or {}).get("images_hash") or items_hash(benchmark.items)
        bench_part = f"{benchmark.key}-{tag}"
    elif isinstance(benchmark, str):
        bench_part = benchmark
    else:
        raise TypeError(f"benchmark must be an evaluation.Benchmark or a '<name>@v<version>' string, got {benchmark!r}")
    return Path(root) / "images" / _safe(model_name) / edit_part / sampler_part / _safe(bench_part)


def items_hash(items: Iterable) -> str:
    """A short hash of what items make their images from: id (the file name), prompt, seed and guidance."""
    return stable_hash([[i.id, i.prompt, int(i.seed), i.guidance] for i in items], 10)


def _check_seed_mode(seed_mode: str) -> None:
    if seed_mode not in ("per_item", "fixed"):
        raise ValueError(f"seed_mode must be 'per_item' (each item's own seed) or 'fixed' (one seed), got {seed_mode!r}")


def _resolve_size(pipe, height, width) -> tuple[int, int]:
    if height and width:
        return int(height), int(width)
    from cad.backbones import wrap

    default = wrap(pipe).default_size()  # the family's native size (UNet, transformer, or FLUX's pipeline default)
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
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    records[rec["id"]] = rec
                except (json.JSONDecodeError, KeyError, TypeError):
                    # A broken line only makes its item unverified: generation regenerates it, scoring refuses it.
                    log.warning("%s, line %d is not a manifest record; its item counts as not generated", path, n)
    return records


def identity_hash(identity: Mapping) -> str:
    """The hash each record carries of the folder identity it was rendered under (meta.json's `identity`)."""
    return stable_hash(as_json(dict(identity)), 16)


def check_record(out_dir: str | os.PathLike, item_id: str, record: Mapping | None, ident: str | None,
                 expect: Mapping | None = None) -> str | None:
    """Why the item's PNG cannot be trusted (None: it is the file its record describes). `expect`: the prompt,
    seed and guidance the item renders with (`expected_record`); a record made for others is not this item's."""
    path = Path(out_dir) / f"{item_id}.png"
    if not path.is_file():
        return "missing"
    if record is None:
        return "not in the manifest (copied in, or its run was killed before recording it)"
    if not record.get("sha256"):
        return "its manifest record has no sha256 (made before verified caches)"
    if ident is not None and record.get("identity") != ident:
        return "its record was made under other settings than this folder's meta.json"
    for key, want in (expect or {}).items():
        if key in record and want is not None and as_json(record[key]) != as_json(want):
            return (f"its record's {key} {record[key]!r} is not the item's {want!r} (the benchmark's items changed "
                    "under the same id)")
    got = sha256_file(path)
    if got != record["sha256"]:
        return f"its sha256 {got[:12]}... is not the recorded {str(record['sha256'])[:12]}... (replaced or corrupted)"
    return None


def expected_record(item, identity: Mapping | None) -> dict:
    """The prompt, seed and guidance an item is rendered with under a folder's identity (meta.json)."""
    identity = identity or {}
    seed = identity.get("fixed_seed") if identity.get("seed_mode") == "fixed" else item.seed
    guidance = item.guidance if item.guidance is not None else identity.get("guidance")
    return {"prompt": item.prompt, "seed": None if seed is None else int(seed),
            "guidance": None if guidance is None else float(guidance)}


def read_identity(out_dir: str | os.PathLike) -> dict | None:
    """meta.json's identity, or None when the folder has none; ImageCacheError when meta.json is unreadable or
    was edited (its `identity_hash` no longer matches its `identity`)."""
    path = Path(out_dir) / "meta.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        identity = meta["identity"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ImageCacheError(f"{path} is unreadable ({err}); delete it and rerun the generation, which rewrites "
                              "it (images are re-verified against their records)") from err
    if meta.get("identity_hash") not in (None, identity_hash(identity)):
        raise ImageCacheError(f"{path} was edited: its identity no longer hashes to its identity_hash, so it does "
                              "not describe these images. Delete the folder and regenerate, or restore meta.json")
    return identity


def verify_images(out_dir: str | os.PathLike, items: Sequence) -> list[tuple[Path, str]]:
    """(path, reason) for each item whose PNG is not verified by the folder's manifest (empty: all good).

    Only folders written by `generate` (holding a manifest) are verified; a plain folder of PNGs has no records
    and is returned as is (empty list), its images then only need to decode.
    """
    out_dir = Path(out_dir)
    if not any(out_dir.glob("manifest*.jsonl")):
        return []
    identity = read_identity(out_dir)
    ident = identity_hash(identity) if identity is not None else None
    records = read_manifest(out_dir)
    bad = []
    for it in items:
        expect = expected_record(it, identity) if hasattr(it, "prompt") else None
        reason = check_record(out_dir, it.id, records.get(it.id), ident, expect)
        if reason is not None:
            bad.append((out_dir / f"{it.id}.png", reason))
    return bad


# An advisory lock beside the manifest: two processes on one machine writing the same shard stay serial.
_locked = locked


# --- claims: one renderer per item across processes (cad.claims) ------------------------------------------


def _claim_path(out_dir: Path, item_id: str) -> Path:
    return out_dir / CLAIMS_DIR / f"{item_id}.claim"


def _claim(out_dir: Path, batch: list, token: str, ttl: float, stamps: dict) -> tuple[list, list]:
    """(items this process now holds, items another live process holds); items finished by another process
    since `stamps` (their PNG changed) are dropped."""
    mine, others = [], []
    with _locked(out_dir / CLAIMS_DIR / "lock"):
        for it in batch:
            path = _claim_path(out_dir, it.id)
            state = claim_state(path, token, ttl)
            if state == "other":
                others.append(it)
            elif state is None and _stamp(out_dir / f"{it.id}.png") != stamps.get(it.id):
                continue  # rendered and recorded by another process, which then released its claim
            else:
                write_claim(path, token)
                mine.append(it)
    return mine, others


def _release(out_dir: Path, items: list, token: str) -> None:
    for it in items:
        release(_claim_path(out_dir, it.id), token)


def _stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _append_manifest(out_dir: Path, name: str, records: list[dict]) -> None:
    path = out_dir / name
    with _locked(out_dir / f".{name}.lock"):
        old = path.read_text() if path.exists() else ""
        new = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
        atomic_write_text(path, old + new)  # the whole file is rewritten, so a crash never leaves half a line


def _write_meta(out_dir: Path, identity: dict, info: Mapping | None) -> None:
    path = out_dir / "meta.json"
    if path.exists():
        try:
            old = read_identity(out_dir)
        except ImageCacheError as err:
            # Images are verified by their own records (sha256 + identity hash), so meta.json can be rewritten.
            log.warning("%s; rewriting it from this run's settings", err)
            old = None
        if old is not None:
            if old != as_json(identity):
                raise ValueError(
                    f"{out_dir} already holds images made with {old}, not {identity}. "
                    "Use image_dir(...) to get the folder of these settings, or delete the folder."
                )
            return
    atomic_write_json(path, {"identity": identity, "identity_hash": identity_hash(identity), **dict(info or {}),
                             "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "package_versions": package_versions()})


def _clean_stale_tmp(out_dir: Path) -> None:
    now = time.time()
    for tmp in [*out_dir.glob(".*.tmp"), *(out_dir / CLAIMS_DIR).glob(".*.tmp")]:
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
    batch_size: int | str = 8,
    seed_mode: str = "per_item",
    fixed_seed: int = 0,
    shard: int = 0,
    num_shards: int = 1,
    progress: bool = True,
    desc: str | None = None,
    info: Mapping | None = None,
    call_kwargs: Mapping | None = None,
    claim_ttl_s: float | None = None,
    compile: bool | str | Mapping = False,
    channels_last: bool | str = "auto",
) -> list[Path]:
    """Render this shard's items that have no PNG yet into `out_dir`; return the shard's image paths in item order.

    items: `evaluation.Item`s or an `evaluation.Benchmark` (id, prompt, seed, label, guidance; guidance None = the
    `guidance` argument). Shard `shard` of `num_shards` takes items `shard, shard + n, ...`, so shards on several
    GPUs or cluster jobs fill one folder. `edit` (a `cad.Edit`) is applied once around the whole generation and
    restored after. `info` (model name, edit meta, benchmark spec, ...) is recorded in meta.json. `call_kwargs`
    go to the pipeline call as they are (e.g. a step-end callback); anything in them that changes the pixels
    must also be part of the sampler settings naming the folder. `claim_ttl_s` (default CAD_CLAIM_TTL_S or
    1800) is how old another machine's claim on an item must be before this process takes the item over.
    Cached PNGs whose bytes do not match their manifest record are regenerated with a warning naming them.

    Speed (cad.speed; none of it changes a seed's image beyond round-off, so none of it names the folder):
    `batch_size="auto"` takes the largest batch that fits (probed once on CUDA, CPU_BATCH_SIZE elsewhere);
    `compile` compiles the denoiser in place with torch.compile for this call (True, a backend name, or a dict
    of torch.compile arguments); `channels_last` ("auto": compiled UNets on CUDA) sets the denoiser's memory layout.
    Both are undone on return.
    """
    _check_seed_mode(seed_mode)
    if not (isinstance(num_shards, int) and num_shards >= 1 and isinstance(shard, int) and 0 <= shard < num_shards):
        raise ValueError(f"shard must be in 0..num_shards-1 with num_shards >= 1, got shard={shard}, num_shards={num_shards}")
    check_batch_size(batch_size)
    from cad.backbones import denoiser_of

    # How the images are rendered (not what they are: that is the folder's identity), noted in each record; a
    # bad value fails here, before anything renders.
    options = compile_options(compile)
    speed = {"compile": options,
             "channels_last": wants_channels_last(denoiser_of(pipe), channels_last, compiled=options is not None)}
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

    identity = {"steps": int(steps), "guidance": float(guidance), "height": height, "width": width,
                "seed_mode": seed_mode, "fixed_seed": int(fixed_seed) if seed_mode == "fixed" else None,
                "edit": None if edit is None else getattr(edit, "fingerprint", str(edit)),
                "scheduler": type(pipe.scheduler).__name__}
    edit_meta = None if edit is None else getattr(edit, "meta", None)
    _write_meta(out_dir, identity, {"edit_meta": edit_meta, **bench_info, **dict(info or {}),
                                    "call_kwargs": sorted(call_kwargs or {})})
    ident = identity_hash(identity)
    _clean_stale_tmp(out_dir)
    records = read_manifest(out_dir)
    pending = []
    for it in mine:
        reason = check_record(out_dir, it.id, records.get(it.id), ident, expected_record(it, identity))
        if reason is None:
            continue
        if reason != "missing":
            log.warning("regenerating %s: %s", out_dir / f"{it.id}.png", reason)
        pending.append(it)
    if not pending:
        return paths
    batch_size = resolve_batch_size(pipe, batch_size, height=height, width=width, guidance=guidance,
                                    call_kwargs=call_kwargs)

    from cad.progress import progress as progress_bar

    manifest = manifest_name(shard, num_shards)
    bar = progress_bar(total=len(mine), initial=len(mine) - len(pending), unit="img", enabled=progress,
                       desc=(desc or f"generate {out_dir.name}")
                       + (f" [shard {shard + 1}/{num_shards}]" if num_shards > 1 else ""))
    applied = edit.applied(pipe) if edit is not None else contextlib.nullcontext()
    token = uuid.uuid4().hex
    ttl = CLAIM_TTL_S if claim_ttl_s is None else float(claim_ttl_s)
    (out_dir / CLAIMS_DIR).mkdir(exist_ok=True)
    # What each pending PNG looked like before we started: a changed one was rendered by another process.
    stamps = {it.id: _stamp(out_dir / f"{it.id}.png") for it in pending}

    def write(batch, seeds, images, g, seconds):
        try:
            records = []
            # PIL releases the GIL while it encodes, so a batch's PNGs encode side by side (~30 ms each at 512
            # px): the last batch, which nothing overlaps, then costs one image's encoding, not a batch's.
            for it, seed, data in zip(batch, seeds, encoders.map(png_bytes, images)):
                atomic_write_bytes(out_dir / f"{it.id}.png", data)
                records.append({"id": it.id, "file": f"{it.id}.png", "prompt": it.prompt, "seed": seed,
                                "label": it.label, "guidance": g, "seconds": round(seconds, 4),
                                "batch": len(batch), **speed,
                                "sha256": sha256_bytes(data), "identity": ident, "pid": os.getpid(),
                                "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
            _append_manifest(out_dir, manifest, records)  # after the PNGs: a listed image always exists
        finally:
            _release(out_dir, batch, token)  # after the records: a released item is either done or absent
        bar.update(len(batch))

    # One writer thread writes a batch's PNGs (encoded by `encoders`; zlib and file I/O release the GIL) while the pipeline
    # renders the next batch; a single worker keeps the manifest in order. Leaving the `with` waits for it.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cad-png-writer")
    encoders = ThreadPoolExecutor(max_workers=max(1, min(batch_size, os.cpu_count() or 1, 16)),
                                  thread_name_prefix="cad-png-encoder")
    pending_writes = []
    held: list = []

    def render(g, batch):
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

    try:
        with applied, fast_denoiser(pipe, compile=compile, channels_last=channels_last), torch.no_grad():
            waiting = []
            for g, batch in _batches(pending, batch_size, guidance):
                claimed, others = _claim(out_dir, batch, token, ttl, stamps)
                held.extend(claimed)
                waiting += others
                if claimed:
                    render(g, claimed)
            # Items another live process holds: wait for them, taking over those whose owner died.
            while waiting:
                for job in pending_writes:
                    job.result()
                pending_writes.clear()
                claimed, waiting = _claim(out_dir, waiting, token, ttl, stamps)
                held.extend(claimed)
                for g, batch in _batches(claimed, batch_size, guidance):
                    render(g, batch)
                if waiting:
                    time.sleep(_POLL_S)
    finally:
        writer.shutdown(wait=True)
        encoders.shutdown(wait=True)
        _release(out_dir, held, token)  # a failed run hands its unfinished items back at once
        bar.close()
    for job in pending_writes:
        job.result()
    bad = verify_images(out_dir, mine)
    if bad:  # another process left an item unfinished or wrote something else: say so, never return it
        raise ImageCacheError(f"{len(bad)} images in {out_dir} are not verified after generation (e.g. "
                              f"{bad[0][0].name}: {bad[0][1]}); rerun the same command to regenerate them")
    return paths
