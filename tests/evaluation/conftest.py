"""Fixtures for the metric tests: items, rendered images with known content, tiny injected backbones."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

PALETTE = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@dataclass(frozen=True)
class MetricItem:
    """Only the attributes the metrics read (evaluation.benchmarks.Item has the same ones)."""

    id: str
    prompt: str
    seed: int = 0
    label: str | None = None


def solid(color: tuple[int, int, int], size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def render_shapes(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    """Deterministic simple scenes (a coloured ellipse or box on a coloured background)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        im = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
        d = ImageDraw.Draw(im)
        x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
        x1, y1 = x0 + rng.randrange(4, size // 2), y0 + rng.randrange(4, size // 2)
        fill = tuple(rng.randrange(256) for _ in range(3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x0, y0, x1, y1), fill=fill)
        out.append(im)
    return out


class MeanColorClassifier(nn.Module):
    """Logits = -distance of the image's mean colour to each class prototype: answers known by construction.
    With `heads`, returns a dict of logits per head like the toy world's classifier."""

    def __init__(self, prototypes: dict[str, tuple[int, int, int]], heads: tuple[str, ...] | None = None):
        super().__init__()
        self.register_buffer("protos", torch.tensor(list(prototypes.values()), dtype=torch.float32) / 255.0)
        self.heads = heads

    def forward(self, x: torch.Tensor):
        logits = -torch.cdist(x.mean((-2, -1)), self.protos)
        return {h: logits for h in self.heads} if self.heads else logits


class TinyFeatures(nn.Module):
    """uint8 (N,3,H,W) -> (N,8): a seeded random conv net, the shape of an FID feature extractor."""

    def __init__(self, seed: int = 0, dim: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.5)
            self.conv.bias.copy_(torch.randn(dim, generator=g) * 0.1)
        self.num_features = dim

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8, "FID features take uint8 images"
        return torch.tanh(self.conv(x.float() / 255.0)).mean((-2, -1))


class TinyPyramid(nn.Module):
    """Two conv stages returning both feature maps, the shape LPIPS reads."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())

    def forward(self, x):
        fa = self.a(x)
        return [fa, self.b(fa)]


@pytest.fixture()
def items_factory():
    def make(labels, prompt="a picture"):
        return [MetricItem(id=f"{i:05d}", prompt=f"{prompt} of {lab}", seed=i, label=lab)
                for i, lab in enumerate(labels)]

    return make


@pytest.fixture(scope="session")
def tiny_clip():
    """A real open_clip CLIP at toy size (random weights) with open_clip's bundled OpenAI BPE tokenizer."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    ).eval()
    preprocess = open_clip.image_transform(32, is_train=False)
    return model, preprocess, open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="session")
def mk():
    """The helpers above as one namespace (test modules cannot import a conftest reliably)."""
    from types import SimpleNamespace

    return SimpleNamespace(PALETTE=PALETTE, MetricItem=MetricItem, solid=solid, render_shapes=render_shapes,
                           MeanColorClassifier=MeanColorClassifier, TinyFeatures=TinyFeatures,
                           TinyPyramid=TinyPyramid)
