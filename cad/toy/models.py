"""The toy world's evaluators: a 3-head classifier, its FID feature module, and a tiny open_clip CLIP.

All three are trained on the world (cad/toy/train.py) and shipped in the kit, so the paper's metrics
(classifier accuracy, FID, CLIP score) run on the toy world with the same code as on real models.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cad.toy.world import COLORS, SHAPES, STYLES

HEADS: dict[str, int] = {"shape": len(SHAPES), "style": len(STYLES), "color": len(COLORS)}
CLIP_MODEL_NAME = "cad-toy-clip"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class ToyClassifier(nn.Module):
    """Images in [0, 1], float (N, 3, H, W) -> {'shape','style','color'} logits. Other sizes are resized to
    `image_size` (antialiased), so 64x64 generations score like 32x32 ones."""

    def __init__(self, width: int = 32, image_size: int = 32):
        super().__init__()
        self.config = {"width": width, "image_size": image_size}
        self.image_size = image_size
        w = width
        self.body = nn.Sequential(_block(3, w), nn.AvgPool2d(2), _block(w, 2 * w), nn.AvgPool2d(2),
                                  _block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = 4 * w
        self.heads = nn.ModuleDict({k: nn.Linear(self.num_features, n) for k, n in HEADS.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected float images (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.body(x * 2 - 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {k: head(f) for k, head in self.heads.items()}


class ToyFidFeatures(nn.Module):
    """FID feature module for torchmetrics: uint8 (N, 3, H, W) -> (N, num_features) float, the classifier's
    penultimate features (a frozen copy, so training or editing elsewhere cannot change FID)."""

    def __init__(self, classifier: ToyClassifier):
        super().__init__()
        self.classifier = copy.deepcopy(classifier).eval().requires_grad_(False)
        self.num_features = classifier.num_features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"FID features take uint8 images (N, 3, H, W), got {images.dtype}; "
                            "convert with (img * 255).round().to(torch.uint8)")
        return self.classifier.features(images.float() / 255.0)


def clip_config(width: int = 64, embed_dim: int = 64, vocab_size: int = 150, context_length: int = 16,
                image_size: int = 32) -> dict:
    """An open_clip model config at toy size (ViT with 4x4 patches; text tower over the world vocabulary).
    The world tokenizer's EOS has the highest id, so open_clip's default argmax pooling finds it."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": width, "patch_size": 4,
                       "head_width": 32, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": width,
                     "heads": 4, "layers": 2, "mlp_ratio": 2.0},
    }


def register_clip_config(config: dict, name: str = CLIP_MODEL_NAME) -> str:
    """Make `name` known to open_clip.create_model (open_clip reads model configs from its registry)."""
    import json
    import tempfile
    from pathlib import Path

    import open_clip

    # open_clip reads the file into its registry at once; a later rescan skips the removed file and keeps it
    with tempfile.TemporaryDirectory(prefix="cad-toy-clip-") as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)
    return name
