"""The two concept objectives, evaluated (and optionally differentiated) with the model's own denoiser.

Every model access goes through a `cad.backbones.Backbone` (a pipeline is wrapped on entry), so the same
code serves SD 1.x/2.x, SDXL, SD 3 and FLUX; eps below stands for the denoiser's prediction in its own
parameterisation (noise, v or flow velocity).

Sign convention (the one used everywhere in cad): J is the quantity being *maximised* and attribution
scores are alpha_i = w_i * dJ/dw_i, the first-order estimate of J(w) - J(w with w_i = 0).

- J_erase = sum_t || eps(x_t, t, c) - sg(eps(x_t, t, c_base)) ||^2, t over a DDIM schedule, x_t on the
  model's own classifier-free-guided sampling trajectory for the target prompt c. Large J_erase means the
  prompt moves the noise prediction away from the base prompt: the concept is present. CAD-Erase zeroes
  the top positive alpha of J_erase (zeroing them lowers J_erase).
- J_amplify = - sum_t || eps - eps(x_t, t, c) ||^2 with x_t = add_noise(x_0, eps, t) on latents x_0 of
  concept images: the negative denoising loss. CAD-Amplify zeroes the top negative alpha of J_amplify
  (zeroing them raises J_amplify, i.e. lowers the denoising loss on the concept).

Both are summed over timesteps and averaged over samples (trajectories, or images x noise draws), so a
value does not grow with K. Squared norms and gradients are computed in float32 whatever the model dtype.

Measurement uses exactly the attribution's x_t and eps for a fixed seed. For erase, both the x_t of the
*unedited* model's trajectory and its base-prompt predictions sg(eps(x_t, t, c_base)) are held fixed (an
`erase_reference`): the stop-gradient makes the base prediction a constant target in the attribution, so
the edited model is measured against that same target. J(edited) - J(original) is then the change the
first-order sum of ablated alphas linearises, with neither trajectory drift nor a moving target mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from cad.backbones import Backbone, Conditioning, wrap
from cad.progress import progress as progress_bar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class ObjectiveResult:
    """J's value, its float32 gradient per chosen parameter (None without params), and the UNet calls used."""

    value: float
    grads: dict[str, torch.Tensor] | None
    unet_calls: int
    terms: list[float] = field(default_factory=list)
    trajectory: list[torch.Tensor] | None = None
    targets: list[torch.Tensor] | None = None
    # with bucket_ends: the float32 gradient sums as they stood after each bucket's last step (cumulative)
    snapshots: list[dict[str, torch.Tensor]] | None = None


class Gradients:
    """d(sum of the losses added)/d(params), in float32 whatever the model's dtype.

    float32 parameters accumulate in their own `.grad` through backward(): autograd adds each tensor's
    gradient in place as soon as it is computed, so an attribution never holds a second full-size set of
    gradients beside the sum (peak memory: the sum, one tensor's gradient and the activations). Other dtypes
    take autograd.grad into separate float32 buffers. `result()` hands the sums over and puts back whatever
    `.grad` the parameters had, so nothing is left behind.

    With `stream=True` (memory="low") half-precision parameters accumulate through backward() too, and a
    post-accumulate hook adds each tensor's gradient into its float32 sum the moment autograd writes it, then drops
    it: at most one half-precision gradient tensor is alive instead of a full set (5.7 GB for FLUX in bf16).
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], bucket_ends=(), stream: bool = False):
        self.params = params
        self._hooks = []
        # Timestep buckets read the running sum at their ends instead of keeping B sums: the full gradient is
        # then accumulated exactly as without buckets (bit for bit), and each bucket is a difference of two reads.
        self.bucket_ends, self.snapshots, self._steps = frozenset(bucket_ends), [], 0
        self.in_place = all(p.dtype == torch.float32 for p in params.values())
        if self.in_place:
            self._saved = {n: p.grad for n, p in params.items()}
            for p in params.values():
                p.grad = None
        else:
            self.buffers = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                            for n, p in params.items()}
            if stream:
                self._saved = {n: p.grad for n, p in params.items()}
                for name, p in params.items():
                    p.grad = None
                    self._hooks.append(p.register_post_accumulate_grad_hook(self._folder(name)))
        self.streaming = bool(self._hooks)

    def _folder(self, name: str):
        def fold(p: torch.Tensor) -> None:
            self.buffers[name].add_(p.grad)  # float32 += half, promoted in place: no float32 copy of the gradient
            p.grad = None
        return fold

    def add(self, loss: torch.Tensor) -> None:
        if self.in_place or self.streaming:
            # inputs=: only these tensors receive gradients, even where other parameters require grad.
            torch.autograd.backward(loss, inputs=list(self.params.values()))
            return
        grads = torch.autograd.grad(loss, list(self.params.values()), allow_unused=True)
        for name, g in zip(self.params, grads):
            if g is not None:
                self.buffers[name] += g.float()

    def end_step(self) -> None:
        """Mark the end of one timestep's terms; at a bucket end, keep a float32 copy of the running sum."""
        self._steps += 1
        if self._steps in self.bucket_ends:
            self.snapshots.append({n: self._running(n, p) for n, p in self.params.items()})

    def _running(self, name: str, p: torch.nn.Parameter) -> torch.Tensor:
        if not self.in_place:
            return self.buffers[name].clone()
        if p.grad is None:  # no term has reached this tensor yet
            return torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        return p.grad.detach().clone()

    def result(self) -> dict[str, torch.Tensor]:
        if self.streaming:
            for h in self._hooks:
                h.remove()
            for n, p in self.params.items():
                p.grad = self._saved[n]
            return self.buffers
        if not self.in_place:
            return self.buffers
        out = {}
        for n, p in self.params.items():
            out[n] = p.grad if p.grad is not None else torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            p.grad = self._saved[n]
        return out


def gradients(params: dict | None, bucket_ends=(), stream: bool = False) -> Gradients | None:
    return Gradients(params, bucket_ends, stream) if params is not None else None


def schedule_length(steps: int, schedule_steps: int | None) -> int:
    """The length of the schedule an objective takes `steps` timesteps from (None: exactly `steps`)."""
    if schedule_steps is None:
        return steps
    if schedule_steps < steps:
        raise ValueError(f"schedule_steps={schedule_steps} < steps={steps}: the objective takes `steps` timesteps "
                         "of a schedule of schedule_steps; raise schedule_steps or lower steps")
    return schedule_steps


def erase_term(bb: Backbone, sched, x, t, cond: Conditioning, base: Conditioning, params, acc: Gradients | None,
               pred_base=None, micro_batch: int | None = None, weight: float = 1.0):
    """One step's || f(x,t,c) - sg(f(x,t,c_base)) ||^2 (mean over the batch), f the denoiser's prediction
    (noise, v or flow velocity); 2 denoiser calls, or 1 when the base prediction `pred_base` is given (a
    fixed target from a reference pass).

    Returns (term, cond prediction detached, base prediction) so a trajectory reuses both for its guided step.
    `micro_batch` (memory="low"): at most that many rows per gradient pass, each chunk's mean weighted by its
    share of the batch, so the term and its gradient are the batch mean's up to float32 summation order.
    """
    n = x.shape[0]
    if micro_batch and n > micro_batch:
        parts = [erase_term(bb, sched, x[s:s + micro_batch], t, cond, base, params, acc,
                            pred_base=None if pred_base is None else pred_base[s:s + micro_batch],
                            weight=weight * min(micro_batch, n - s) / n)
                 for s in range(0, n, micro_batch)]
        return (sum(p[0] for p in parts), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]))
    inp = bb.scale_input(sched, x, t)
    if pred_base is None:
        with torch.no_grad():
            pred_base = bb.predict(inp, t, base.take(n))
    with torch.set_grad_enabled(params is not None):
        pred_cond = bb.predict(inp, t, cond.take(n))
        term = (pred_cond.float() - pred_base.float()).pow(2).flatten(1).sum(1).mean()
        if weight != 1.0:
            term = term * weight
    if acc is not None:
        acc.add(term)
    return term.detach(), pred_cond.detach(), pred_base


def erase_objective(pipe, prompt: str, *, base_prompt: str = "", negative_prompt: str = "", steps: int = 50,
                    guidance: float = 3.0, num_samples: int = 1, seed: int = 0, params: dict | None = None,
                    trajectory: list[torch.Tensor] | None = None, targets: list[torch.Tensor] | None = None,
                    height=None, width=None, progress: bool = False,
                    schedule_steps: int | None = None, bucket_ends=(), micro_batch: int | None = None,
                    stream: bool = False, rows: tuple[int, int] | None = None) -> ObjectiveResult:
    """J_erase along K guided trajectories run as one batch (the `trajectory` estimator when params are given).

    `pipe` is a diffusers pipeline of any supported family or a cad Backbone. For flow-matching families the
    gap is between velocity predictions; for guidance-distilled ones (FLUX) the trajectory steps with the
    conditional prediction alone (no CFG batch).

    At each step the gradient pass on the target prompt also supplies the conditional eps of the CFG step,
    and the base-prompt eps doubles as the unconditional eps when base_prompt == negative_prompt, so a
    pass costs 2 UNet calls per step (3 otherwise). With `trajectory` (the x_t of an earlier pass), J is
    evaluated on those latents and nothing is sampled; with `targets` too (that pass's base predictions),
    the base prompt is not re-evaluated either (1 call per step). The result carries both lists.

    `schedule_steps` (None: `steps`): the trajectory runs the first `steps` timesteps of a schedule of that
    length (the reference code's truncated 50-step schedule) instead of a `steps`-step schedule.
    `micro_batch` and `stream` are memory="low"'s (cad.memory): the gradient passes in chunks of trajectories,
    half-precision gradients folded into float32 one tensor at a time.
    `rows=(lo, hi)` (cad.distributed): this process runs only trajectories lo..hi-1 of the K, their x_T drawn as
    with all K, and their terms weighted by their share of K: the ranks' terms and gradients sum to one
    process's (to float32 summation order).
    """
    bb, k = wrap(pipe), num_samples
    lo, hi = rows or (0, k)
    share = (hi - lo) / k
    sched = bb.scheduler(schedule_length(steps, schedule_steps), height=height, width=width)
    timesteps = sched.timesteps[:steps]
    size = dict(height=height, width=width, guidance=guidance)
    cond, base = bb.conditioning(prompt, **size), bb.conditioning(base_prompt, **size)
    use_cfg = bb.cfg_active(guidance)
    uncond = base if negative_prompt == base_prompt else bb.conditioning(negative_prompt, **size)
    if trajectory is not None and len(trajectory) != len(timesteps):
        raise ValueError(f"trajectory has {len(trajectory)} latents but the objective visits {steps} steps")
    if targets is not None and (trajectory is None or len(targets) != len(trajectory)):
        raise ValueError("targets (base predictions) need the trajectory they were computed on, one per step")
    x = None if trajectory is not None else bb.initial_latents(
        sched, k, torch.Generator("cpu").manual_seed(seed), height, width)[lo:hi]
    acc, calls, terms, visited, bases = gradients(params, bucket_ends, stream), 0, [], [], []
    for i, t in enumerate(progress_bar(timesteps, desc="attribution J_erase", unit="step", enabled=progress, leave=False)):
        x_t = trajectory[i][lo:hi].to(bb.device, bb.dtype) if trajectory is not None else x
        visited.append(x_t)
        if hi == lo:  # more processes than trajectories: this one adds nothing
            terms.append(0.0)
            if acc is not None:
                acc.end_step()
            continue
        fixed = targets[i][lo:hi].to(bb.device, bb.dtype) if targets is not None else None
        term, eps_c, eps_b = erase_term(bb, sched, x_t, t, cond, base, params, acc, pred_base=fixed,
                                        micro_batch=micro_batch, weight=share)
        calls += 1 if fixed is not None else 2
        bases.append(eps_b)
        terms.append(float(term))
        if acc is not None:
            acc.end_step()
        if trajectory is None:
            with torch.no_grad():
                if use_cfg:
                    if uncond is base:
                        eps_u = eps_b
                    else:
                        eps_u = bb.predict(bb.scale_input(sched, x_t, t), t, uncond.take(hi - lo))
                        calls += 1
                    eps = bb.combine(eps_u, eps_c, guidance)
                else:
                    eps = eps_c
                x = bb.step(sched, eps, t, x_t)
    return ObjectiveResult(sum(terms), acc.result() if acc else None, calls, terms, visited, bases,
                           acc.snapshots if acc else None)


def amplify_objective(pipe, latents: torch.Tensor, prompt: str, *, steps: int = 50, num_samples: int = 1,
                      seed: int = 0, params: dict | None = None, batch_size: int = 8,
                      progress: bool = False, schedule_steps: int | None = None,
                      bucket_ends=(), micro_batch: int | None = None, stream: bool = False,
                      rows: tuple[int, int] | None = None) -> ObjectiveResult:
    """J_amplify = -sum_t mean_{images, draws} || target - f(add_noise(x_0, eps, t), t, c) ||^2: minus the
    family's training loss, with target eps (epsilon models), v (v-prediction) or eps - x_0 (flow matching,
    x_t = (1 - sigma) x_0 + sigma eps).

    eps is drawn on the CPU from one generator seeded with `seed`, in a fixed order (timestep, draw,
    image), so two calls with the same seed see the same noise whatever the model weights. With
    `schedule_steps` (None: `steps`) the timesteps are the `steps` lowest-noise ones of a schedule of that
    length, as the reference code's `timesteps[-t]` loop (compute_negative_neurons.py) takes them.
    `rows=(lo, hi)` (cad.distributed): this process takes only images lo..hi-1, with the noise drawn for all of
    them as above and the loss still normalised by all N: the ranks' terms and gradients sum to one process's.
    """
    bb = wrap(pipe)
    if latents.ndim != 4 or latents.shape[1] != bb.latent_channels:
        raise ValueError(f"latents must be (N, {bb.latent_channels}, h, w); got {tuple(latents.shape)}"
                         " (encode images with concept_latents first)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = latents.shape[0]
    lo, hi = rows or (0, n)
    vsf = bb.vae_scale_factor
    sched = bb.scheduler(schedule_length(steps, schedule_steps), height=latents.shape[2] * vsf,
                         width=latents.shape[3] * vsf)
    timesteps = sched.timesteps[len(sched.timesteps) - steps:]
    cond = bb.conditioning(prompt, height=latents.shape[2] * vsf, width=latents.shape[3] * vsf)
    gen = torch.Generator("cpu").manual_seed(seed)
    x0 = latents.detach().float().cpu()
    if micro_batch:  # memory="low": fewer images per gradient pass; the loss is normalised by n either way
        batch_size = min(batch_size, micro_batch)
    acc, calls, terms = gradients(params, bucket_ends, stream), 0, []
    for t in progress_bar(timesteps, desc="attribution J_amplify", unit="step", enabled=progress, leave=False):
        term = 0.0
        for _ in range(num_samples):
            noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32)
            for s in range(lo, hi, batch_size):
                end = min(s + batch_size, hi)
                e, x0b = noise[s:end], x0[s:end]
                x_t = bb.add_noise(sched, x0b, e, t).to(bb.device, bb.dtype)
                target = bb.target(sched, x0b, e, t).to(bb.device)
                with torch.set_grad_enabled(params is not None):
                    pred = bb.predict(bb.scale_input(sched, x_t, t), t, cond.take(e.shape[0]))
                    loss = -(target.float() - pred.float()).pow(2).flatten(1).sum(1).sum() / (n * num_samples)
                calls += 1
                if acc is not None:
                    acc.add(loss)
                term += float(loss.detach())
        terms.append(term)
        if acc is not None:
            acc.end_step()
    return ObjectiveResult(sum(terms), acc.result() if acc else None, calls, terms, None,
                           snapshots=acc.snapshots if acc else None)


def load_images(images) -> torch.Tensor | list:
    """A folder of image files -> sorted list of PIL images; lists and tensors pass through."""
    if isinstance(images, (str, Path)):
        from PIL import Image

        folder = Path(images).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"concept image folder {folder} does not exist; pass a folder of images")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        return [Image.open(p).convert("RGB") for p in files]
    return images


@torch.no_grad()
def concept_latents(pipe, images=None, *, prompt: str | None = None, num_images: int = 8, seed: int = 0,
                    steps: int = 50, guidance: float = 7.5, batch_size: int = 4, height=None,
                    width=None) -> torch.Tensor:
    """Scaled VAE latents (float32, CPU) of concept images: a folder, a list of PIL images, a tensor in
    [0, 1] of shape (N, 3, H, W), or - with images=None - images the pipeline itself generates for `prompt`.

    Images enter the VAE in [-1, 1]; latents are multiplied by vae.config.scaling_factor. Encoding
    samples the VAE posterior with a generator seeded by `seed`.
    """
    bb = wrap(pipe)
    h = height or bb.default_size()
    w = width or bb.default_size()
    gen = torch.Generator("cpu").manual_seed(seed)
    if images is None:
        if not prompt:
            raise ValueError("amplify needs concept images: pass images= (folder, PIL list, tensor) or a prompt")
        out = []
        for s in range(0, num_images, batch_size):
            m = min(batch_size, num_images - s)
            out.append(bb.sample_latents(prompt, m, steps=steps, guidance=guidance, height=h, width=w,
                                         generator=gen))
        return torch.cat(out)
    images = load_images(images)
    if isinstance(images, torch.Tensor):
        x = images.float()
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"image tensor must be (N, 3, H, W) or (3, H, W); got {tuple(images.shape)}")
        if x.min() < 0 or x.max() > 1:
            raise ValueError("image tensors must hold values in [0, 1] (as torchvision's ToTensor gives)")
        if x.shape[-2:] != (h, w):
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        x = x * 2 - 1
    elif isinstance(images, (list, tuple)) and images:
        x = bb.pipe.image_processor.preprocess(list(images), height=h, width=w).float()  # -> [-1, 1]
    else:
        raise TypeError(f"images must be a folder path, a non-empty list of PIL images or a tensor; got {type(images)}")
    return torch.cat([bb.encode_images(x[s:s + batch_size], gen) for s in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def erase_reference(pipe, prompt: str, **kw) -> ObjectiveResult:
    """The unedited model's pass for this seed: J, the x_t it visits (.trajectory) and its base-prompt
    predictions (.targets), on the CPU, to measure edited models against."""
    res = erase_objective(pipe, prompt, **kw)
    res.trajectory = [x.detach().cpu() for x in res.trajectory]
    res.targets = [e.detach().cpu() for e in res.targets]
    return res


def erase_trajectory(pipe, prompt: str, **kw) -> list[torch.Tensor]:
    """Only the x_t of erase_reference (kept for callers that pass `trajectory=` to measure_erase_objective)."""
    return erase_reference(pipe, prompt, **kw).trajectory


@torch.no_grad()
def measure_erase_objective(pipe, prompt: str, *, base_prompt: str = "", negative_prompt: str = "",
                            steps: int = 50, guidance: float = 3.0, num_samples: int = 1, seed: int = 0,
                            edit=None, reference: ObjectiveResult | None = None, base_target: str = "fixed",
                            trajectory: list[torch.Tensor] | None = None, height=None, width=None,
                            schedule_steps: int | None = None) -> float:
    """J_erase without gradients, equal to attribute(...).meta["objective_value"] for the same arguments.

    With `edit`, the x_t of the reference pass (the pipeline as given, i.e. unedited; computed here unless
    passed from erase_reference) are held fixed, and
    - base_target="fixed" (default): so are its base predictions, the constant target of the stop-gradient;
      only eps(x_t, t, c) is re-evaluated with the edit. This is the J whose first-order change is
      -sum(ablated alpha) (AttributionScores.predicted_change): use it for fidelity studies.
    - base_target="edited": both predictions come from the edited model, i.e. the edited model's own
      concept gap on those x_t (how far the prompt still moves eps away from the base prompt).
    A bare `trajectory` (x_t only, from erase_trajectory) stands for a reference whose base predictions
    are recomputed here, before the edit is applied.
    """
    if base_target not in ("fixed", "edited"):
        raise ValueError(f"base_target must be 'fixed' or 'edited', got {base_target!r}")
    kw = dict(base_prompt=base_prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
              num_samples=num_samples, seed=seed, height=height, width=width, schedule_steps=schedule_steps)
    if reference is None and trajectory is not None:
        reference = erase_objective(pipe, prompt, trajectory=trajectory, **kw)
    if reference is None:
        reference = erase_reference(pipe, prompt, **kw)
        if edit is None:
            return reference.value
    fixed = dict(trajectory=reference.trajectory, targets=reference.targets if base_target == "fixed" else None)
    if edit is None:
        return erase_objective(pipe, prompt, **fixed, **kw).value
    with edit.applied(pipe):
        return erase_objective(pipe, prompt, **fixed, **kw).value


@torch.no_grad()
def measure_amplify_objective(pipe, latents, prompt: str, *, steps: int = 50, num_samples: int = 1,
                              seed: int = 0, edit=None, batch_size: int = 8, schedule_steps: int | None = None) -> float:
    """J_amplify without gradients on latents (or images, encoded first by the unedited VAE), same noise
    as attribute(...) for the same seed; with `edit`, evaluated with the edit applied."""
    if not (isinstance(latents, torch.Tensor) and latents.ndim == 4
            and latents.shape[1] == wrap(pipe).latent_channels):
        latents = concept_latents(pipe, latents, seed=seed)
    kw = dict(steps=steps, num_samples=num_samples, seed=seed, batch_size=batch_size, schedule_steps=schedule_steps)
    if edit is None:
        return amplify_objective(pipe, latents, prompt, **kw).value
    with edit.applied(pipe):
        return amplify_objective(pipe, latents, prompt, **kw).value
