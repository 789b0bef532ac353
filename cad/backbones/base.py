"""The model-family adapter: everything cad needs to know about a diffusers pipeline, in one small class.

Objectives, attribution, generation, edits and fingerprints talk only to a `Backbone`, never to `pipe.unet`:
a family (SD 1.x/2.x, SDXL, SD 3, FLUX) is one subclass in one module of this package, found by its
`family` name or by the pipeline class it wraps. A subclass says

- how the pipeline loads (`pipeline_class`, `load_kwargs`) and which modules are the denoiser and the text
  encoders (`denoiser_attr`, `text_encoder_attrs`; the fingerprint hashes these and the VAE);
- how a prompt becomes conditioning (`encode`) and how the denoiser is called (`predict`);
- the attribution schedule (`scheduler`), noising (`add_noise`) and the denoising target by prediction type
  (`target`: epsilon, v_prediction or flow velocity);
- its component-space presets (`spaces`).

The guided step (classifier-free guidance, or none for guidance-distilled models) is written once, here.
Every tensor that crosses this interface is an *unpacked* latent (N, C, h, w): families that pack latents
(FLUX) pack inside `predict`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from cad.backbones.digests import module_fingerprint, module_fingerprint_and_identity, module_identity
from cad.errors import UserError

# Families register themselves here when their module is imported (see cad.backbones.get_family).
REGISTRY: dict[str, type[Backbone]] = {}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")
# Sampling schedulers a model config may name (model.scheduler); "default" is the family's choice.
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "pndm": "PNDMScheduler",
              "dpm": "DPMSolverMultistepScheduler", "flow_euler": "FlowMatchEulerDiscreteScheduler"}


def check_scheduler(scheduler: str | None) -> None:
    if scheduler not in (None, "default", *SCHEDULERS):
        raise ValueError(f"unknown scheduler {scheduler!r}; use one of {sorted(SCHEDULERS)}, 'default' (the "
                         "family's) or null (the model's own)")


class ModelLoadError(UserError, RuntimeError):
    """The pipeline's weights could not be found or read."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


@dataclass
class Conditioning:
    """What the denoiser needs besides (x, t): `batched` tensors share dim 0 with x (prompt embeddings,
    pooled embeddings, SDXL time ids); `shared` ones do not (FLUX's text position ids)."""

    batched: dict[str, torch.Tensor]
    shared: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return next(iter(self.batched.values())).shape[0]

    def repeat(self, n: int) -> Conditioning:
        """n copies of a single prompt's conditioning (n rows)."""
        if len(self) != 1:
            raise ValueError(f"repeat() needs a 1-row conditioning, got {len(self)} rows")
        return Conditioning({k: v.expand(n, *v.shape[1:]) for k, v in self.batched.items()}, dict(self.shared))

    def take(self, n: int) -> Conditioning:
        """The conditioning for a batch of n: repeated from one row, or as is when it has n rows."""
        if len(self) == n:
            return self
        return self.repeat(n)

    @staticmethod
    def cat(parts: Iterable[Conditioning]) -> Conditioning:
        parts = list(parts)
        return Conditioning({k: torch.cat([p.batched[k] for p in parts]) for k in parts[0].batched},
                            dict(parts[0].shared))


class Backbone:
    """A diffusers pipeline seen through the operations of CAD (see the module docstring)."""

    family: ClassVar[str] = ""
    pipeline_class: ClassVar[str] = ""                 # the diffusers pipeline class this family loads
    pipeline_classes: ClassVar[tuple[str, ...]] = ()   # every pipeline class it wraps (auto-detection)
    denoiser_attr: ClassVar[str] = "unet"
    denoiser_classes: ClassVar[tuple[str, ...]] = ()   # its denoiser's class names (for bare modules)
    text_encoder_attrs: ClassVar[tuple[str, ...]] = ("text_encoder",)
    uses_cfg: ClassVar[bool] = True                    # False: guidance-distilled (no unconditional batch)
    default_scheduler: ClassVar[str | None] = None     # sampling scheduler swapped in at load (None: the model's)
    # Component-space presets: name -> (regex over denoiser parameter names, admitted tensor ranks).
    spaces: ClassVar[dict[str, tuple[str, tuple[int, ...] | None]]] = {}
    default_space: ClassVar[str] = "ff"
    # Preset names this family deliberately lacks, with the reason get_space gives (e.g. no cross-attention
    # module in an MMDiT), so a user asking for one learns why instead of "unknown space".
    absent_spaces: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.family:
            REGISTRY[cls.family] = cls

    def __init__(self, pipe):
        self.pipe = pipe

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.prediction_type}, {self.dtype})"

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def load_kwargs(cls) -> dict:
        """Extra from_pretrained arguments of this family (e.g. no safety checker)."""
        return {}

    @classmethod
    def load(cls, source: str | os.PathLike, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
             scheduler: str | None = "default", local_files_only: bool | None = None,
             device_map: str | None = None) -> Backbone:
        """The family's pipeline from a hub id or a local folder (save_pretrained layout), as a Backbone.

        device_map="balanced" (a model larger than one GPU): diffusers' pipeline-level device map places each
        component on one of the visible GPUs, and `device` is not used; the Backbone's `device` is then the
        denoiser's, where its inputs go."""
        import diffusers

        torch_dtype = resolve_dtype(dtype)
        check_scheduler(scheduler)  # before the (slow) load
        check_device_map(device_map)
        source = str(source)
        is_dir = Path(source).expanduser().is_dir()
        if local_files_only is None:
            local_files_only = offline()
        pipeline_cls = getattr(diffusers, cls.pipeline_class)
        try:
            pipe = pipeline_cls.from_pretrained(str(Path(source).expanduser()) if is_dir else source,
                                                **_dtype_kwarg(torch_dtype), local_files_only=local_files_only,
                                                **({"device_map": device_map} if device_map else {}),
                                                **cls.load_kwargs())
        except (OSError, ValueError) as e:
            if is_dir:  # a local folder: name the file that does not read; downloading is no fix for it
                from cad.weight_files import LOCAL_FOLDER_FIX, folder_problems

                problems = folder_problems(source)
                what = ("; ".join(problems) if problems else
                        f"{type(e).__name__}: {e} (is it a complete {cls.pipeline_class} folder in save_pretrained "
                        "layout: model_index.json and one subfolder per component?)")
                raise ModelLoadError(f"could not load {cls.pipeline_class} from the local folder {source}: {what}\n"
                                     f"Fix: {LOCAL_FOLDER_FIX}.") from e
            where = "the Hugging Face hub cache"
            raise ModelLoadError(
                f"could not load {cls.pipeline_class} weights for {source!r} from {where} "
                f"(local_files_only={local_files_only}): {type(e).__name__}: {e}\n"
                "Fix: download the model once where there is network (e.g. `huggingface-cli download "
                f"{source}` or `{cls.pipeline_class}.from_pretrained(...).save_pretrained(folder)`) and pass that "
                "folder's path as the model, or allow network access (unset HF_HUB_OFFLINE)."
            ) from e
        bb = cls(pipe)
        bb.set_scheduler(scheduler)
        if not device_map:  # a device-mapped pipeline stays where the map put it (diffusers refuses .to())
            pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return bb

    def set_scheduler(self, scheduler: str | None) -> None:
        """Swap the pipeline's sampling scheduler by name ("default": the family's; None keeps the model's own)."""
        if scheduler == "default":
            scheduler = self.default_scheduler
        if scheduler is None:
            return
        import diffusers

        check_scheduler(scheduler)
        self.pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(self.pipe.scheduler.config)

    # ---- modules ------------------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_attr)

    @property
    def text_encoders(self) -> dict[str, torch.nn.Module]:
        return {a: m for a in self.text_encoder_attrs if (m := getattr(self.pipe, a, None)) is not None}

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def name(self) -> str:
        """The hub id or path the pipeline came from ("<in-memory>" for pipelines built in code)."""
        config = getattr(self.pipe, "config", None) or {}
        name = config.get("_name_or_path") if hasattr(config, "get") else None
        return str(name) if name else "<in-memory>"

    def fingerprint_modules(self) -> dict[str, torch.nn.Module | None]:
        """Every module the images and attributions depend on: denoiser, each text encoder, VAE."""
        out: dict[str, torch.nn.Module | None] = {self.denoiser_attr: self.denoiser}
        for attr in self.text_encoder_attrs:
            out[attr] = getattr(self.pipe, attr, None)
        out["vae"] = getattr(self.pipe, "vae", None)
        return out

    def denoiser_fingerprint(self) -> str:
        return module_fingerprint(self.denoiser)

    def denoiser_fingerprint_and_identity(self) -> tuple[str, str]:
        return module_fingerprint_and_identity(self.denoiser)

    def denoiser_identity(self) -> str:
        """The dtype-independent identity edits record as `made_for` (cad.backbones.base.module_identity)."""
        return module_identity(self.denoiser)

    @staticmethod
    def group_of(name: str):
        """Where denoiser parameter `name` sits in the forward pass (a cad.backbones.groups.ComponentGroup);
        each family sets its own (cad/backbones/groups.py holds the UNet and MMDiT shapes)."""
        raise NotImplementedError("this model family defines no component grouping; set `group_of` on its "
                                  "Backbone (cad/backbones/groups.py: unet_group, mmdit_group)")

    @classmethod
    def group_names(cls, names, level: str = "module") -> dict[str, list[str]]:
        """{group label: names in it}, groups in forward order (names keep their given order inside a group)."""
        keyed = [(cls.group_of(n), i, n) for i, n in enumerate(names)]
        keyed.sort(key=lambda g: (g[0].order, g[1]))
        out: dict[str, list[str]] = {}
        for g, _, n in keyed:
            out.setdefault(g.label(level), []).append(n)
        return out

    def component_groups(self, space="ff", level: str = "module") -> dict[str, list[str]]:
        """The tensors of a component space grouped by the denoiser's structure, in forward order."""
        from cad.components import get_space

        return self.group_names(list(get_space(space, self.family).select(self.denoiser)), level)

    def fingerprint(self, denoiser_fp: str | None = None) -> str:
        """A hash over all weights in `fingerprint_modules` (the denoiser's own hash may be passed in)."""
        h = hashlib.blake2b(digest_size=16)
        for attr, module in self.fingerprint_modules().items():
            if attr == self.denoiser_attr:
                fp = denoiser_fp or module_fingerprint(module)
                h.update(fp.encode())
            else:
                h.update(f"|{attr}:{module_fingerprint(module) if module is not None else '-'}".encode())
        return h.hexdigest()

    # ---- prediction ---------------------------------------------------------------------------------
    @property
    def prediction_type(self) -> str:
        """What the denoiser outputs: "epsilon", "v_prediction" or "flow" (velocity noise - x_0)."""
        return str(self.pipe.scheduler.config.get("prediction_type", "epsilon"))

    def encode(self, prompt: str, n: int = 1, *, height: int | None = None, width: int | None = None,
               guidance: float | None = None) -> Conditioning:
        """The conditioning of `prompt`, n rows (no CFG pairing: unconditional is just another prompt).

        height/width: the image size, for families whose conditioning depends on it (SDXL's time ids).
        guidance: the guidance the prediction is made at, for guidance-distilled families that take it as an
        input (FLUX [dev]); None: the family's default. CFG families ignore it."""
        raise NotImplementedError

    def conditioning(self, prompt: str, n: int = 1, *, height: int | None = None, width: int | None = None,
                     guidance: float | None = None) -> Conditioning:
        """`encode`, answered from the prompt cache while `prompts_cached()` is active: an attribution encodes
        each prompt once, then runs its gradient passes with the text encoders off the accelerator."""
        cache = self.__dict__.get("_prompt_cache")
        if cache is None:
            return self.encode(prompt, n, height=height, width=width, guidance=guidance)
        key = (prompt, n, height, width, guidance)
        if key not in cache:
            if self.__dict__.get("_encoders_away"):
                raise RuntimeError(f"prompt {prompt!r} {key[1:]} was not encoded before the text encoders were "
                                   "moved off the device; encode it inside prompts_cached() before offloading")
            cache[key] = self.encode(prompt, n, height=height, width=width, guidance=guidance)
        return cache[key]

    @contextlib.contextmanager
    def prompts_cached(self):
        """Within the block, `conditioning` encodes each (prompt, n, size, guidance) once."""
        outer = self.__dict__.get("_prompt_cache")
        if outer is None:
            self._prompt_cache = {}
        try:
            yield self
        finally:
            if outer is None:
                self.__dict__.pop("_prompt_cache", None)

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The denoiser's output (in `prediction_type`) for unpacked latents x (N, C, h, w) at timestep t."""
        raise NotImplementedError

    @staticmethod
    def combine(pred_uncond: torch.Tensor, pred_cond: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guidance, the one formula every family shares."""
        return pred_uncond + guidance * (pred_cond - pred_uncond)

    def cfg_active(self, guidance: float) -> bool:
        """Whether a guided step needs the unconditional prediction (diffusers' rule: guidance > 1)."""
        return self.uses_cfg and guidance > 1.0

    def guided_prediction(self, sched, x, t, cond: Conditioning, uncond: Conditioning | None,
                          guidance: float) -> torch.Tensor:
        """The prediction a sampler steps with: CFG with cond and uncond in one batched call, or cond alone."""
        n = x.shape[0]
        if not self.cfg_active(guidance) or uncond is None:
            return self.predict(self.scale_input(sched, x, t), t, cond.take(n))
        both = Conditioning.cat([uncond.take(n), cond.take(n)])
        inp = self.scale_input(sched, torch.cat([x, x]), t)
        pred_u, pred_c = self.predict(inp, t, both).chunk(2)
        return self.combine(pred_u, pred_c, guidance)

    @torch.no_grad()
    def guided_step(self, sched, x, t, cond: Conditioning, uncond: Conditioning | None, guidance: float):
        """One sampling step of the model's own guided trajectory."""
        return self.step(sched, self.guided_prediction(sched, x, t, cond, uncond, guidance), t, x)

    # ---- schedule and noise -------------------------------------------------------------------------
    def scheduler(self, steps: int, *, height: int | None = None, width: int | None = None):
        """A private scheduler for attribution set to `steps` (pipe.scheduler is untouched)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return self.make_scheduler(steps, height=height, width=width)

    def make_scheduler(self, steps: int, *, height: int | None = None, width: int | None = None):
        """The family's attribution scheduler (DDIM, flow-matching Euler, ...) set to `steps` >= 1."""
        raise NotImplementedError

    def scale_input(self, sched, x, t):
        scale = getattr(sched, "scale_model_input", None)
        return scale(x, t) if scale is not None else x

    def step(self, sched, pred, t, x):
        return sched.step(pred, t, x).prev_sample

    def add_noise(self, sched, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t from clean latents: DDPM-style sqrt(abar) x0 + sqrt(1 - abar) eps, or (1 - s) x0 + s eps for flow."""
        tt = t.detach().cpu().reshape(1).repeat(x0.shape[0])
        if self.prediction_type == "flow":
            return sched.scale_noise(x0, tt, noise)
        return sched.add_noise(x0, noise, tt)

    def target(self, sched, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoising target of the training loss, by prediction type (J_amplify regresses onto it)."""
        kind = self.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return sched.get_velocity(x0, noise, t.detach().cpu().reshape(1).repeat(x0.shape[0]))
        if kind == "flow":
            return noise - x0
        raise ValueError(f"unknown prediction type {kind!r}; expected one of {PREDICTION_TYPES}")

    # ---- latents ------------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    def default_size(self) -> int:
        """The model's native image side in pixels."""
        return int(self.denoiser.config.sample_size) * self.vae_scale_factor

    def latent_shape(self, n: int, height: int | None = None, width: int | None = None) -> tuple[int, ...]:
        vsf = self.vae_scale_factor
        return (n, self.latent_channels, (height or self.default_size()) // vsf, (width or self.default_size()) // vsf)

    def initial_latents(self, sched, n: int, generator: torch.Generator, height=None, width=None) -> torch.Tensor:
        """x_T drawn on the CPU from `generator` (same numbers on every device), scaled as the pipeline does."""
        x = torch.randn(self.latent_shape(n, height, width), generator=generator, dtype=torch.float32)
        return (x * getattr(sched, "init_noise_sigma", 1.0)).to(self.device, self.dtype)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled latents (float32, CPU) of images in [-1, 1], sampling the VAE posterior with `generator`."""
        vae = self.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        z = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.sample(generator=generator)
        return ((z.float() - shift) * vae.config.scaling_factor).cpu()

    def call_kwargs(self, guidance: float) -> dict:
        """Arguments of the pipeline's own __call__ for a sampling guidance (generation)."""
        return {"guidance_scale": float(guidance)}

    @torch.no_grad()
    def sample_latents(self, prompt: str, n: int, *, steps: int, guidance: float, height: int, width: int,
                       generator: torch.Generator) -> torch.Tensor:
        """n images of `prompt` from the pipeline's own sampler, as unpacked latents (float32, CPU)."""
        out = self.pipe(prompt, num_images_per_prompt=n, num_inference_steps=steps, height=height, width=width,
                        generator=generator, output_type="latent", **self.call_kwargs(guidance))
        return out.images.float().cpu()

    @classmethod
    def size_multiple(cls, vae_factor: int, denoiser_config: Mapping | None = None) -> tuple[int, str]:
        """(the multiple every image side must be, why), from config values alone, so that experiments check
        a resolution before the model loads. diffusers' UNet pipelines accept multiples of 8 only."""
        return math.lcm(int(vae_factor), 8), "the diffusers pipeline accepts multiples of 8 only"

    def check_size(self, height: int, width: int) -> None:
        """Raise a ValueError naming the fix when the pipeline cannot render this size."""
        unit, why = self.size_multiple(self.vae_scale_factor, self.denoiser.config)
        for side, v in (("height", height), ("width", width)):
            if int(v) < unit or int(v) % unit:
                raise ValueError(f"{side}={v} is not a positive multiple of {unit} ({why}) of this {self.family} "
                                 f"model; use e.g. {self.default_size()}")


DEVICE_MAPS = ("balanced",)


def check_device_map(device_map: str | None) -> None:
    """Refuse a device map diffusers cannot honour here, before any weights load: only its pipeline-level
    "balanced", and only where GPUs are visible (on a CPU diffusers would silently load everything there)."""
    if not device_map:
        return
    if device_map not in DEVICE_MAPS:
        raise ModelLoadError(f"model.device_map={device_map!r} is not a pipeline-level device map; use "
                             "model.device_map=balanced (each component on one of the visible GPUs) or null")
    if not torch.cuda.is_available():
        raise ModelLoadError("model.device_map=balanced spreads the pipeline over GPUs, but no CUDA device is "
                             "visible here; set model.device_map=null to load it on one device (device=cpu), "
                             "or run where the GPUs are")


def _dtype_kwarg(torch_dtype: torch.dtype) -> dict:
    """diffusers renamed from_pretrained's `torch_dtype` to `dtype`; pass whichever this version reads."""
    import inspect

    from diffusers.utils import deprecation_utils

    new_name = hasattr(deprecation_utils, "_resolve_dtype") or "dtype" in inspect.signature(
        __import__("diffusers").DiffusionPipeline.from_pretrained).parameters
    return {"dtype": torch_dtype} if new_name else {"torch_dtype": torch_dtype}
