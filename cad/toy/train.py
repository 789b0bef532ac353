"""Trainers for the toy kit: VAE, text encoder + UNet (jointly), the 3-head classifier and the tiny CLIP.

Each trainer is a plain function over tensors, seeded through its own torch.Generator / numpy Generator so a
given recipe on a given thread count reproduces the same weights. Gradients are float32 throughout.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cad.toy.render import caption_from
from cad.toy.world import COLORS, SHAPES, STYLES


def _cosine(opt: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def _optimise(opt, sched, loss: torch.Tensor, clip_params: list | None = None) -> None:
    """One optimiser step of every trainer: backward, optional gradient clipping (norm 1), step, lr schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
    opt.step()
    sched.step()


def _bar(steps: int, desc: str, progress: bool):
    return tqdm(range(steps), desc=desc, disable=not progress, mininterval=2.0, leave=False)


def train_vae(vae, images: torch.Tensor, *, steps: int, batch: int, lr: float, kl_weight: float, seed: int,
              progress: bool = True) -> dict:
    """Reconstruction (L1 + MSE) plus a KL term small enough that colours and textures survive."""
    g = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = _cosine(opt, steps, max(1, steps // 20))
    x_all = images * 2 - 1
    loss = torch.tensor(0.0)
    for _ in (bar := _bar(steps, "vae", progress)):
        idx = torch.randint(len(x_all), (batch,), generator=g)
        x = x_all[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * post.kl().mean()
        _optimise(opt, sched, loss)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vae.eval().requires_grad_(False)
    return {"final_loss": loss.item()}


@torch.no_grad()
def encode(vae, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of images in [0, 1] (unscaled latents)."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        post = vae.encode(images[i : i + batch] * 2 - 1).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, seed: int, batch: int = 256) -> torch.Tensor:
    """VAE round trip (posterior sample, as the diffusion model sees it) back to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(images), batch):
        post = vae.encode(images[i : i + batch] * 2 - 1).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        out.append(((vae.decode(z).sample + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def sample_captions(labels: np.ndarray, rng: np.random.Generator, p_drop: float, p_empty: float) -> list[str]:
    """Captions for label rows (shape, style, color) with words dropped and a share of empty captions."""
    out = []
    for s, st, c in labels:
        if rng.random() < p_empty:
            out.append("")
            continue
        keep = rng.random(3) >= p_drop
        out.append(caption_from(SHAPES[s] if keep[0] else None, STYLES[st] if keep[1] else None,
                                COLORS[c] if keep[2] else None))
    return out


class _TokenCache:
    """Captions come from a small closed set, so tokenize each once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in set(captions) if c not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[c] for c in captions])


def train_denoiser(unet, text_encoder, tokenizer, noise_scheduler, latent_mean: torch.Tensor,
                   latent_std: torch.Tensor, scaling_factor: float, labels: np.ndarray, *, steps: int,
                   batch: int, lr: float, p_drop: float, p_empty: float, ema_decay: float, seed: int,
                   progress: bool = True) -> dict:
    """Epsilon-prediction training of UNet and text encoder together; EMA weights are copied in at the end."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    tokens = _TokenCache(tokenizer)
    modules = [unet, text_encoder]
    params = [p for m in modules for p in m.parameters()]
    for m in modules:
        m.train().requires_grad_(True)
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = _cosine(opt, steps, max(1, steps // 20))
    n_train = noise_scheduler.config.num_train_timesteps
    loss = torch.tensor(0.0)
    for step in (bar := _bar(steps, "unet+text", progress)):
        idx = torch.randint(len(latent_mean), (batch,), generator=g)
        z0 = (latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=g))
        z0 = z0 * scaling_factor
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(n_train, (batch,), generator=g)
        zt = noise_scheduler.add_noise(z0, noise, t)
        ids = tokens(sample_captions(labels[idx.numpy()], rng, p_drop, p_empty))
        cond = text_encoder(ids)[0]
        pred = unet(zt, t, cond).sample
        loss = F.mse_loss(pred, noise)
        _optimise(opt, sched, loss, clip_params=params)
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    for m in modules:
        m.eval().requires_grad_(False)
    return {"final_loss": loss.item()}


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild noise and brightness jitter: generated images are a little off the rendered distribution."""
    n = x.shape[0]
    gain = 1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    sigma = 0.04 * torch.rand(n, 1, 1, 1, generator=g)
    return (x * gain + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def train_classifier(classifier, images: torch.Tensor, recon: torch.Tensor, labels: np.ndarray, *, steps: int,
                     batch: int, lr: float, seed: int, progress: bool = True) -> dict:
    """Cross-entropy on all three heads, half of each batch rendered and half VAE-reconstructed images."""
    g = torch.Generator().manual_seed(seed)
    y_all = torch.as_tensor(labels)
    classifier.train().requires_grad_(True)
    opt = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=1e-4)
    sched = _cosine(opt, steps, max(1, steps // 20))
    loss = torch.tensor(0.0)
    for _ in (bar := _bar(steps, "classifier", progress)):
        i1 = torch.randint(len(images), (batch // 2,), generator=g)
        i2 = torch.randint(len(recon), (batch - batch // 2,), generator=g)
        x = _augment(torch.cat([images[i1], recon[i2]]), g)
        y = torch.cat([y_all[i1], y_all[i2]])
        logits = classifier(x)
        loss = sum(F.cross_entropy(logits[k], y[:, j]) for j, k in enumerate(("shape", "style", "color")))
        _optimise(opt, sched, loss)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    classifier.eval().requires_grad_(False)
    return {"final_loss": loss.item()}


def train_clip(model, tokenize, images: torch.Tensor, labels: np.ndarray, *, steps: int, batch: int, lr: float,
               p_drop: float, seed: int, progress: bool = True) -> dict:
    """Symmetric InfoNCE between rendered images (CLIP-normalised) and their captions."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = _cosine(opt, steps, max(1, steps // 20))
    loss = torch.tensor(0.0)
    for _ in (bar := _bar(steps, "clip", progress)):
        idx = torch.randint(len(images), (batch,), generator=g)
        x = (_augment(images[idx], g) - mean) / std
        captions = sample_captions(labels[idx.numpy()], rng, p_drop, 0.0)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tokenize(captions)), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        # Identical captions in a batch are not negatives of each other: use soft targets over equal captions.
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                      + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())
        _optimise(opt, sched, loss)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    model.eval().requires_grad_(False)
    return {"final_loss": loss.item()}
