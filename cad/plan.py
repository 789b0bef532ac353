"""A plan before any weights load: peak accelerator memory and wall time of each stage of a run.

Plain functions over plain values (no Hydra). Parameter counts come from the real architectures built on the
meta device (cad.architectures; cached in cad/plan_coefficients.json by the benchmark, recomputed on a miss).
Everything measured lives in that file with the device, date and sizes it came from:
- activation bytes of one gradient pass per memory mode and of a no-grad forward (generation), per
  architecture, as bytes per dtype byte = a + b x L (L: latent pixels for a UNet, image + text tokens for an
  MMDiT), from benchmarks/bench_plan.py (CPU) or benchmarks/bench_gpu.py (CUDA);
- FLOPs of one forward, c + d L + e L^2 (torch's FlopCounterMode on the meta device).
What is exact arithmetic is not fitted: the weights, the float32 gradient sums (4 bytes per component), the
half-precision gradients (`fast`: a full set, 2 bytes per component; `low`: one tensor at a time).

Time = FLOPs / (the GPU's peak dense half-precision rate x an efficiency): the efficiency measured by
bench_gpu.py where it has run, else ASSUMED_EFFICIENCY, and the peak rates of GPUs not measured are the vendors'
datasheet figures: an assumption, and every printed plan says which it used.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

COEFFICIENTS = Path(__file__).with_name("plan_coefficients.json")
GB = 1e9  # plans print decimal GB, as GPU datasheets do

MODEL_ARCH = {"sd14": "sd1", "sd15": "sd1", "sd21": "sd2_base", "sd21v": "sd2", "sdxl": "sdxl", "sd35m": "sd35m",
              "sd35l": "sd35l", "flux_schnell": "flux", "flux_dev": "flux_dev"}
FAMILY_ARCH = {"sd": "sd1", "sdxl": "sdxl", "sd3": "sd35m", "flux": "flux"}
FAMILY_OF = {"sd1": "sd", "sd2": "sd", "sd2_base": "sd", "sdxl": "sdxl", "sd35m": "sd3", "sd35l": "sd3",
             "flux": "flux", "flux_dev": "flux"}
# Which measured architecture stands in for one without its own coefficients (activations scaled by width x depth).
STAND_IN = {"sd2": ("sd1",), "sd2_base": ("sd1",), "sd35l": ("sd35m",), "flux": ("sd35m",),
            "flux_dev": ("flux", "sd35m"), "toy": ("sd1",)}
TEXT_TOKENS = {"sd1": 77, "sd2": 77, "sd2_base": 77, "sdxl": 77, "sd35m": 333, "sd35l": 333, "flux": 256,
               "flux_dev": 512, "toy": 16}
# Published parameter counts of the released text encoders (CLIP ViT-L/14 text 123.1 M, OpenCLIP ViT-H text
# 340.4 M, OpenCLIP bigG text with projection 694.7 M, T5 v1.1 XXL encoder 4,762.3 M) and VAEs (83.7 M; 83.8 M
# with 16 latent channels).
ENCODER_PARAMS = {"sd1": 123_060_480, "sd2": 340_387_840, "sd2_base": 340_387_840, "sdxl": 817_720_321,
                  "sd35m": 5_580_030_977, "sd35l": 5_580_030_977, "flux": 4_885_371_136, "flux_dev": 4_885_371_136,
                  "toy": 0}
VAE_PARAMS = {"sd1": 83_653_863, "sd2": 83_653_863, "sd2_base": 83_653_863, "sdxl": 83_653_863,
              "sd35m": 83_819_683, "sd35l": 83_819_683, "flux": 83_819_683, "flux_dev": 83_819_683, "toy": 0}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Peak dense half-precision tensor FLOP/s (fp32: TF32) from the vendors' datasheets: assumptions until measured.
GPU_PEAK = {"H200": (989e12, 494e12), "H100": (989e12, 494e12), "A100": (312e12, 156e12),
            "L40S": (362e12, 183e12), "A6000": (155e12, 77e12), "4090": (165e12, 83e12), "V100": (125e12, 16e12)}
DEFAULT_GPU = "H100"
ASSUMED_EFFICIENCY = 0.35
RESERVE = 1.5 * GB  # CUDA context, allocator caching and fragmentation beyond torch's max_memory_allocated
# Bytes per second cad hashes weights at (the fingerprint and identity every attribution records: blake2b in 8
# threads after a copy to the CPU), until bench_gpu.py has measured it (devices.cuda.fingerprint_bytes_per_s).
ASSUMED_FINGERPRINT_RATE = 1.0 * GB


# ---- the coefficients file --------------------------------------------------------------------------------------
def load_coefficients(path: str | Path | None = None) -> dict:
    p = Path(path or os.environ.get("CAD_PLAN_COEFFICIENTS") or COEFFICIENTS)
    return json.loads(p.read_text()) if p.is_file() else {}


def save_coefficients(data: dict, path: str | Path | None = None) -> Path:
    from cad.io import atomic_write_text

    p = Path(path or os.environ.get("CAD_PLAN_COEFFICIENTS") or COEFFICIENTS)
    atomic_write_text(p, json.dumps(data, indent=1, sort_keys=True) + "\n")
    _coefficients.cache_clear()
    return p


@functools.lru_cache(maxsize=4)
def _coefficients(path: str) -> dict:
    return load_coefficients(path or None)


def coefficients() -> dict:
    return _coefficients(os.environ.get("CAD_PLAN_COEFFICIENTS") or "")


# ---- counts -----------------------------------------------------------------------------------------------------
def count_architecture(arch: str) -> dict:
    """Parameters, the `ff` space's size and largest tensor, ESD-x's trained tensors and UCE's solve FLOPs, from
    the architecture built on the meta device (no memory)."""
    from cad.architectures import build_on_meta

    return count_model(build_on_meta(arch), FAMILY_OF[arch])


def count_model(model, family: str) -> dict:
    from cad.components import get_space

    ff = list(get_space("ff", family).select(model).values())
    named = dict(model.named_parameters())
    cross = [n for n in named if "attn2" in n] or [n for n in named if ".attn." in n and "add_" in n]
    kv = [named[n] for n in named if n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]
    cfg = model.config
    width = (sum(cfg.block_out_channels) * cfg.layers_per_block if hasattr(cfg, "block_out_channels")
             else cfg.num_attention_heads * cfg.attention_head_dim * (cfg.num_layers + getattr(cfg, "num_single_layers", 0)))
    return {"params": sum(p.numel() for p in model.parameters()), "space_numel": sum(p.numel() for p in ff),
            "space_max": max(p.numel() for p in ff), "esd_x_numel": sum(named[n].numel() for n in cross),
            "uce_flops": sum(2.0 * w.shape[0] * w.shape[1] ** 2 + w.shape[1] ** 3 for w in kv), "width": int(width)}


@functools.lru_cache(maxsize=32)
def counts(arch: str) -> dict:
    stored = coefficients().get("counts", {}).get(arch)
    if stored:
        return stored
    if arch == "toy":
        return _toy_counts()
    return count_architecture(arch)


def _toy_counts() -> dict:
    import diffusers
    import torch

    from cad.toy.kit import DEFAULT_KIT

    config = json.loads((DEFAULT_KIT / "pipeline" / "unet" / "config.json").read_text())
    with torch.device("meta"):
        model = diffusers.UNet2DConditionModel.from_config(config)
    return count_model(model, "sd")


def arch_of(model: dict) -> str:
    """The architecture a model config plans as: its name, else its family's released model; "toy" for the kit."""
    if str(model.get("id")) == "toy" or model.get("name") == "toy":
        return "toy"
    if model.get("name") in MODEL_ARCH:
        return MODEL_ARCH[model["name"]]
    family = model.get("family", "sd")
    if family not in FAMILY_ARCH:
        raise ValueError(f"no planner architecture for family {family!r}; known: {sorted(FAMILY_ARCH)}")
    return FAMILY_ARCH[family]


# ---- the memory model -------------------------------------------------------------------------------------------
def sequence_length(arch: str, resolution: int, text_tokens: int | None = None) -> int:
    latent = resolution // 8
    if arch.startswith(("sd35", "flux")):
        return (latent // 2) ** 2 + (TEXT_TOKENS[arch] if text_tokens is None else text_tokens)
    return latent * latent


def fixed_bytes(mode: str, dtype_bytes: int, space_numel: int, space_max: int) -> tuple[int, int]:
    """(float32 gradient sums, half-precision or transient gradients) of one gradient pass; 0, 0 for `infer`."""
    if mode == "infer":
        return 0, 0
    sums = 4 * space_numel
    if dtype_bytes == 4:  # sums in .grad; one tensor's fresh gradient before it is added
        return sums, 4 * space_max
    if mode == "fast":  # autograd.grad's full half set, then one tensor's float32 cast while adding
        return sums, dtype_bytes * space_numel + 4 * space_max
    return sums, dtype_bytes * space_max


def fit_activations(measurements: list[dict]) -> dict:
    """Per mode [a, b] with activations / dtype byte = a + b L, from measurements of one architecture at two or
    more sizes (benchmarks.bench_plan.measure or bench_gpu): what is above the model minus the exact terms."""
    out = {"sizes": [], "raw": measurements}
    for mode in ("infer", "low", "fast"):
        pts = []
        for m in measurements:
            if mode not in m:
                continue
            db = DTYPE_BYTES[m["dtype"]]
            sums, half = fixed_bytes(mode, db, m["space_numel"], m["space_max"])
            pts.append((m["seq"], max(m[mode]["delta"] - sums - half, 0) / (db * m.get("batch", 1))))
        if not pts:
            continue
        pts.sort()
        (l0, y0), (l1, y1) = pts[0], pts[-1]
        b = (y1 - y0) / (l1 - l0) if l1 != l0 else 0.0
        if b <= 0:  # noise at tiny sizes: proportional through the largest measurement
            a, b = 0.0, y1 / l1
        else:
            a = y0 - b * l0
        out[mode] = [a, b]
        out.setdefault("seconds", {})[mode] = {str(m["seq"]): m[mode]["seconds"] for m in measurements if mode in m}
    out["sizes"] = sorted({m["seq"] for m in measurements})
    return out


def _device_coefficients(device: str) -> tuple[str, dict]:
    """The coefficient set for a device kind: CUDA-measured where it exists for "cuda", else the CPU one."""
    devices = coefficients().get("devices", {})
    if device == "cuda" and devices.get("cuda", {}).get("archs"):
        return "cuda", devices["cuda"]
    return "cpu", devices.get("cpu", {"archs": {}})


def activation_bytes(arch: str, mode: str, batch: int, seq: int, dtype_bytes: int, device: str = "cuda") -> int:
    kind, coef = _device_coefficients(device)
    archs, entry, scale = coef.get("archs", {}), coef.get("archs", {}).get(arch), 1.0
    if entry is None or mode not in entry:
        ref = next((r for r in STAND_IN.get(arch, ()) if mode in archs.get(r, {})), None)
        if ref is None:
            raise KeyError(f"no activation coefficients for {arch} ({mode}) measured on {kind}; run "
                           "`python -m benchmarks.bench_plan` (CPU) or `make bench-gpu`")
        entry, scale = archs[ref], counts(arch)["width"] / counts(ref)["width"]
    a, b = entry[mode]
    return int(max(0.0, batch * dtype_bytes * scale * (a + b * seq)))


def source_label(device: str = "cuda") -> str:
    kind, coef = _device_coefficients(device)
    where = f"{coef.get('device', kind)}, {coef.get('date', 'undated')}"
    return (f"estimate from CPU-measured coefficients ({where})" if kind == "cpu"
            else f"estimate from GPU-measured coefficients ({where})")


# ---- stages -----------------------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One stage of a run: its peak accelerator memory, its seconds, its denoiser calls and images."""

    name: str
    peak_bytes: int
    seconds: float
    images: int = 0
    cached: bool = False
    mode: str | None = None
    parts: dict = field(default_factory=dict)


def attribution_memory(arch: str, *, resolution: int, dtype: str, mode: str, batch: int = 1,
                       micro_batch: int | None = None, device: str = "cuda", space_numel: int | None = None,
                       space_max: int | None = None, text_tokens: int | None = None) -> dict:
    """Bytes on the accelerator during the gradient passes, by part, and the peak (`total`). `batch`: the samples
    of one pass in `fast` (K trajectories, or amplify images); `low` passes `micro_batch` (default 1)."""
    c, db = counts(arch), DTYPE_BYTES[dtype]
    n, mx = space_numel or c["space_numel"], space_max or c["space_max"]
    per_pass = batch if mode == "fast" else min(batch, micro_batch or 1)
    per_pass = min(batch, micro_batch) if (mode == "fast" and micro_batch) else per_pass
    sums, half = fixed_bytes(mode, db, n, mx)
    seq = sequence_length(arch, resolution, text_tokens)
    parts = {"weights": c["params"] * db, "gradient_sums": sums, "half_gradients": half,
             "activations": activation_bytes(arch, mode, per_pass, seq, db, device)}
    parts["total"] = sum(parts.values())
    parts["encoders"] = (ENCODER_PARAMS[arch] + VAE_PARAMS[arch]) * db  # resident only while prompts encode
    parts["encode_phase"] = parts["weights"] + parts["encoders"]
    return parts


def forward_flops(arch: str, resolution: int, batch: int = 1) -> float:
    seq = sequence_length(arch, resolution)
    fit = coefficients().get("flops", {}).get(arch)
    if fit is None:  # the toy and any unmeasured architecture: the SD 1.x fit scaled by parameters
        ref = coefficients().get("flops", {}).get("sd1")
        if ref is None:
            raise KeyError("no FLOP coefficients; run `python -m benchmarks.bench_plan`")
        fit = {"coef": [x * counts(arch)["params"] / counts("sd1")["params"] for x in ref["coef"]]}
    c, d, e = fit["coef"]
    return batch * (c + d * seq + e * seq * seq)


def _gpu(gpu: str | None) -> tuple[str, float, float, bool]:
    """(label, peak half FLOP/s, peak fp32 FLOP/s, measured?) of a GPU name (torch.cuda.get_device_name)."""
    name = gpu or DEFAULT_GPU
    key = next((k for k in GPU_PEAK if k.lower() in name.lower()), DEFAULT_GPU)
    return key, *GPU_PEAK[key], False


def _cuda_measured(key: str, default=None):
    """What bench_gpu.py measured on a GPU under `key` of devices.cuda in the coefficients file (`default` if none)."""
    return coefficients().get("devices", {}).get("cuda", {}).get(key, default)


def efficiency(arch: str, mode: str) -> tuple[float, bool, str | None]:
    """(achieved fraction of peak FLOP/s, measured?, the architecture it was measured on) for a pass kind: measured
    by bench_gpu.py on the architecture or its stand-in where it ran, else assumed."""
    measured = _cuda_measured("efficiency", {})
    src = next((a for a in (arch, *STAND_IN.get(arch, ())) if measured.get(a, {}).get(mode)), None)
    return (measured[src][mode], True, src) if src else (ASSUMED_EFFICIENCY, False, None)


def fingerprint_seconds(arch: str, dtype: str, device: str = "cuda") -> float:
    """Seconds of the walk over the denoiser's weights an attribution records (cad.backbones.digests: the exact
    fingerprint, plus for a non-float16 model the float16 identity, a second hash of the same size). On FLUX
    (23.8 GB of bfloat16) it took 31 s of a one-step attribution on an H200. The walk is memoised per state of the
    weights, so later attributions of unchanged weights in one process skip it: the plan counts it for each
    attribution stage, an upper bound."""
    db = DTYPE_BYTES[dtype]
    hashed = counts(arch)["params"] * db * (1 if dtype == "float16" else 2)
    rate = _cuda_measured("fingerprint_bytes_per_s") if device == "cuda" else None
    return hashed / (rate or ASSUMED_FINGERPRINT_RATE)


def edit_factor(method: str, device: str = "cuda") -> float:
    """measured / composed seconds of a baseline's edit where bench_gpu.py ran it with cad's own method code
    (devices.cuda.edit_factors; 1 elsewhere): what the composition from single passes leaves out (hooks,
    optimiser steps, scheduler arithmetic, Python between the calls)."""
    if device != "cuda":
        return 1.0
    return float(_cuda_measured("edit_factors", {}).get(method, 1.0))


def generation_factor(arch: str, device: str = "cuda") -> float:
    """measured / composed seconds of a plain diffusers generation of `arch` where bench_gpu.py timed one
    (devices.cuda.generation_factors; 1 elsewhere): the scheduler, CFG arithmetic and launch gaps between the
    denoiser calls that the composition from single passes leaves out (SD 1.4 on an H200: 1.42)."""
    if device != "cuda":
        return 1.0
    return float(_cuda_measured("generation_factors", {}).get(arch, 1.0))


def pass_flops(arch: str, mode: str, resolution: int, batch: int) -> float:
    """FLOPs of one denoiser pass of `batch` samples: infer = F; fast = F (2 + r); low = F (3 + r) with r the
    share of weights whose gradients are taken (input gradients ~ one forward, checkpointing one more)."""
    f = forward_flops(arch, resolution, batch)
    if mode == "infer":
        return f
    c = counts(arch)
    return f * ((2.0 if mode == "fast" else 3.0) + c["space_numel"] / c["params"])


def seconds(arch: str, mode: str, resolution: int, batch: int, dtype: str, gpu: str | None = None) -> float:
    """Seconds of one pass. With an efficiency measured at batch 1 and the native size (bench_gpu.py), a call with
    more work gets proportionally more efficient (small calls are launch-bound) up to the larger of that
    efficiency and ASSUMED_EFFICIENCY; without one, ASSUMED_EFFICIENCY of the datasheet peak."""
    _, half, single, _ = _gpu(gpu)
    peak = single if dtype == "float32" else half
    work = pass_flops(arch, mode, resolution, batch)
    eff, measured, src = efficiency(arch, mode)
    if measured:
        native = _cuda_measured("native", {}).get(src)
        ref = pass_flops(arch, mode, native, 1) if native else work
        eff = min(max(eff, ASSUMED_EFFICIENCY), eff * work / ref)
    return work / (peak * eff)


def attribution_stage(arch: str, *, resolution: int, dtype: str, mode: str, objective: str = "erase",
                      steps: int = 50, num_samples: int = 1, micro_batch: int | None = None,
                      estimator: str = "trajectory", num_images: int = 8, batch_size: int = 8, image_steps: int = 50,
                      image_cfg: bool = True, gpu: str | None = None, cached: bool = False,
                      device: str = "cuda") -> Stage:
    k = num_samples
    # erase: the K trajectories are one pass; amplify: images go through in batches of batch_size per draw
    batch = k if objective == "erase" else min(num_images, batch_size)
    mem = attribution_memory(arch, resolution=resolution, dtype=dtype, mode=mode, batch=batch,
                             micro_batch=micro_batch, device=device)
    # samples per gradient pass: all of a batch in fast (unless micro_batch caps it), micro_batch (1) in low
    per = batch if mode == "fast" and not micro_batch else min(batch, micro_batch or 1)
    if objective == "erase":
        grad = steps * math.ceil(k / per) * seconds(arch, mode, resolution, per, dtype, gpu)
        fwd = steps * seconds(arch, "infer", resolution, k, dtype, gpu)  # the base prediction (and CFG's uncond)
        if estimator == "restart":
            fwd += steps * (steps + 1) / 2 * seconds(arch, "infer", resolution, 2 * k, dtype, gpu)
        secs = grad + fwd
        images = 0
    else:  # grad passes over images x draws per timestep, plus generating the concept images
        secs = steps * k * math.ceil(num_images / per) * seconds(arch, mode, resolution, per, dtype, gpu)
        gen = generation_stage(arch, resolution=resolution, dtype=dtype, images=num_images, steps=image_steps,
                               cfg=image_cfg, batch=min(num_images, 8), gpu=gpu, device=device)
        secs += gen.seconds
        mem["image_phase"] = gen.peak_bytes
        images = num_images
    mem["fingerprint_s"] = fingerprint_seconds(arch, dtype, device)
    secs += mem["fingerprint_s"]
    peak = max(mem["total"], mem["encode_phase"], mem.get("image_phase", 0))
    mem["per_pass"] = per
    return Stage("attribution", peak, 0.0 if cached else secs, images=images, cached=cached, mode=mode, parts=mem)


def generation_stage(arch: str, *, resolution: int, dtype: str, images: int, steps: int, cfg: bool = True,
                     batch: int = 8, gpu: str | None = None, cached_images: int = 0, device: str = "cuda",
                     name: str = "generation", calibrated: bool = True) -> Stage:
    """ceil(images / batch) x steps forward calls of batch x (2 with CFG) samples; the peak holds the whole pipeline
    and one call's forward. On CUDA the time is scaled by the architecture's measured / composed factor where
    bench_gpu.py timed a plain diffusers call of it (`generation_factor`), unless `calibrated=False`."""
    db = DTYPE_BYTES[dtype]
    calls = 2 if cfg else 1
    todo = max(images - cached_images, 0)
    full, rest = divmod(todo, batch)  # the pipeline runs a batch's CFG halves as one call of 2 x batch samples
    secs = steps * (full * seconds(arch, "infer", resolution, batch * calls, dtype, gpu)
                    + (seconds(arch, "infer", resolution, rest * calls, dtype, gpu) if rest else 0.0))
    secs *= generation_factor(arch, device) if calibrated else 1.0
    act = activation_bytes(arch, "infer", batch * calls, sequence_length(arch, resolution), db, device)
    peak = (counts(arch)["params"] + ENCODER_PARAMS[arch] + VAE_PARAMS[arch]) * db + act
    return Stage(name, peak, secs, images=todo, cached=todo == 0 and images > 0,
                 parts={"images": images, "cached_images": min(cached_images, images), "activations": act})


def edit_stage(method: str, arch: str, *, resolution: int, dtype: str, settings: dict | None = None,
               gpu: str | None = None, device: str = "cuda", cached: bool = False,
               calibrated: bool = True) -> Stage | None:
    """The cost of a baseline's edit (CAD's is its attribution stage; none/random cost nothing): composed from
    single passes, times the measured `edit_factor` unless `calibrated=False` (what the benchmark compares with)."""
    s, db, c = settings or {}, DTYPE_BYTES[dtype], counts(arch)
    f = edit_factor(method, device) if calibrated else 1.0
    weights = (c["params"] + ENCODER_PARAMS[arch]) * db
    if method == "esd":
        its, ddim = int(s.get("iterations", 1000)), int(s.get("ddim_steps", 50))
        # per iteration: x_t by CFG sampling for ~half the DDIM steps (batch 2), two frozen predictions, one
        # gradient pass over the trained tensors (fp32 copy + Adam moments + gradient: 16 bytes each)
        it = (ddim / 2 * seconds(arch, "infer", resolution, 2, dtype, gpu)
              + seconds(arch, "infer", resolution, 2, dtype, gpu) + seconds(arch, "fast", resolution, 1, dtype, gpu))
        trained = c["esd_x_numel"] if s.get("variant", "x") == "x" else c["params"] - c["esd_x_numel"]
        act = activation_bytes(arch, "fast", 1, sequence_length(arch, resolution), db, device)
        return Stage("edit: esd", weights + 16 * trained + act, 0.0 if cached else f * its * it, cached=cached,
                     parts={"iterations": its, "trained_weights": trained})
    if method in ("uce", "rece"):
        rounds = 1 + int(s.get("epochs") or (3 if method == "rece" else 0))
        _, _, single, _ = _gpu(gpu)
        secs = rounds * c["uce_flops"] / (single * ASSUMED_EFFICIENCY)
        return Stage(f"edit: {method}", weights, 0.0 if cached else secs, cached=cached,
                     parts={"closed_form_rounds": rounds})
    if method == "conceptprune":
        from cad.methods.conceptprune import THINGS

        prompts = 2 * len(s.get("things") or THINGS)  # concept and reference prompt per thing
        tau = int(s.get("timesteps") or 10)
        secs = f * prompts * tau * seconds(arch, "infer", resolution, 2, dtype, gpu)
        act = activation_bytes(arch, "infer", 2, sequence_length(arch, resolution), db, device)
        return Stage("edit: conceptprune", weights + VAE_PARAMS[arch] * db + act, 0.0 if cached else secs,
                     cached=cached, parts={"prompts": prompts, "timesteps": tau})
    return None


# ---- the plan ---------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """A run's stages, what the estimates rest on, and the accelerator it was made for."""

    arch: str
    dtype: str
    resolution: int
    stages: list[Stage]
    gpu: str
    source: str
    free_bytes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        return max((s.peak_bytes for s in self.stages), default=0)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def images(self) -> int:
        return sum(s.images for s in self.stages if s.name.startswith("generation"))

    def lines(self) -> list[str]:
        gpu, _, _, _ = _gpu(self.gpu)
        measured = efficiency(self.arch, "fast")[1]
        timing = (f"times on an {gpu}-class GPU at " + ("the efficiency bench_gpu.py measured" if measured else
                  f"an assumed {ASSUMED_EFFICIENCY:.0%} of its datasheet peak"))
        out = [f"plan for {self.arch} at {self.resolution} px, {self.dtype} ({self.source}; {timing}):"]
        for s in self.stages:
            what = f"~{fmt_bytes(s.peak_bytes)} peak"
            if s.mode:
                what += f" in memory={s.mode}"
            if s.name.startswith("generation"):
                cached = s.parts.get("cached_images", 0)
                what = (f"{s.parts.get('images', s.images):,} images" + (f" ({cached:,} cached)" if cached else "")
                        + f", {what}")
            when = "cached" if s.cached else f"~{fmt_seconds(s.seconds)}"
            out.append(f"  {s.name}: {what}, {when}")
        out.append(f"  total: ~{fmt_seconds(self.seconds)} ({self.seconds / 3600:.2f} GPU-hours), peak "
                   f"~{fmt_bytes(self.peak_bytes)}" + (f" of {fmt_bytes(self.free_bytes)} free"
                                                       if self.free_bytes else ""))
        return out + [f"  note: {n}" for n in self.notes]

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_bytes": self.peak_bytes, "seconds": self.seconds, "images": self.images}


def fmt_bytes(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:.0f} MB"


def fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def fits(peak_bytes: int, free_bytes: int | None) -> bool:
    return free_bytes is None or peak_bytes + RESERVE <= free_bytes


def choose_mode(mode: str, free_bytes: int | None, stage_for) -> str:
    """`auto` -> the fastest mode whose attribution stage fits `free_bytes` (cad.memory.resolve); `stage_for(mode)`
    makes the stage. Without a free-memory figure (a CPU run) fast."""
    from cad.memory import resolve

    if free_bytes is None:
        return resolve(mode)
    return resolve(mode, fits=lambda m: fits(stage_for(m).peak_bytes, free_bytes))


def what_would_fit(arch: str, free_bytes: int, *, resolution: int, dtype: str, stage_for, gpus: int = 1) -> str:
    """The alternatives to name when no mode fits: another resolution, a device map over GPUs, more GPUs."""
    low = stage_for("low", resolution)
    hints = []
    for r in (resolution * 3 // 4 // 64 * 64, resolution // 2 // 64 * 64):
        if r >= 256 and fits(stage_for("low", r).peak_bytes, free_bytes):
            hints.append(f"model.resolution={r} (~{fmt_bytes(stage_for('low', r).peak_bytes)} in memory=low)")
            break
    need = math.ceil((low.peak_bytes + RESERVE) / max(free_bytes, 1))
    hints.append(f"model.device_map=balanced over {max(need, 2)} GPUs of this size (the weights split, "
                 f"~{fmt_bytes(low.peak_bytes / max(need, 2))} each)")
    hints.append(f"a GPU with at least {fmt_bytes(low.peak_bytes + RESERVE)} free")
    return "; or ".join(hints)


def visible_gpu() -> tuple[str | None, int | None]:
    """(name, free bytes) of the current CUDA device, or (None, None) without one."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    free, _ = torch.cuda.mem_get_info()
    return torch.cuda.get_device_name(), int(free)
