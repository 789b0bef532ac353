"""CLIP score: cosine between the image and its prompt in open_clip's ViT-B-32 (OpenAI weights).

Two numbers, named so they cannot be confused:
- `clip_score_cos_mean`: the raw mean cosine (about 0.3 for matching pairs; what the paper's code reports),
- `clip_score_100`: mean of 100 * max(cos, 0), the torchmetrics CLIPScore convention.
torchmetrics' own CLIPScore goes through transformers (broken with transformers 5), so open_clip is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .base import Metric, WeightsUnavailableError, check_items, offline_mode, to_pil_images

CLIP_MODEL, CLIP_PRETRAINED = "ViT-B-32", "openai"


def _cached_open_clip_file(model_name: str, pretrained: str, cache_dir: str | None) -> str | None:
    """A local file holding `pretrained` weights if open_clip's download paths already cached one (no network)."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        raise ValueError(f"open_clip knows no pretrained tag {pretrained!r} for {model_name}; "
                         f"choose one of {open_clip.list_pretrained_tags_by_model(model_name)} or pass a file path")
    hub = cfg.get("hf_hub", "")
    if hub:
        model_id, filename = os.path.split(hub)
        for name in ([filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
            hit = try_to_load_from_cache(model_id, name, cache_dir=cache_dir)
            if isinstance(hit, str):
                return hit
    url = cfg.get("url", "")
    if url:
        local = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.is_file():
            return str(local)
    return None


def load_openai_clip(model_name: str = CLIP_MODEL, pretrained: str = CLIP_PRETRAINED, *,
                     cache_dir: str | None = None, offline: bool | None = None, device: str = "cpu",
                     quick_gelu: bool = True):
    """open_clip model with OpenAI weights -> (model, preprocess, tokenizer).

    `pretrained` is an open_clip tag ("openai") or a local weights file. Offline (HF_HUB_OFFLINE=1 or
    offline=True) only the HF / open_clip caches are consulted, never the network. OpenAI weights were
    trained with QuickGELU, which a bare file path does not tell open_clip: set quick_gelu=False for others.
    """
    import open_clip

    how = (f"Pre-download on a machine with internet (python -c \"import open_clip; open_clip.create_model_and_"
           f"transforms('{model_name}', pretrained='{pretrained}')\") and copy the HF cache (HF_HOME) here, "
           f"or pass pretrained=<path to the .bin/.safetensors/.pt file>.")
    source = pretrained
    if not os.path.isfile(pretrained) and offline_mode(offline):
        source = _cached_open_clip_file(model_name, pretrained, cache_dir)
        if source is None:
            raise WeightsUnavailableError(f"open_clip {model_name} '{pretrained}' weights are not in the local "
                                          f"cache and offline mode is on (HF_HUB_OFFLINE=1 or offline=True). {how}")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=source, cache_dir=cache_dir, device=device,
            force_quick_gelu=quick_gelu)
    except Exception as err:
        raise WeightsUnavailableError(f"could not load open_clip {model_name} '{pretrained}' weights: {err}. {how}") from err
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)


class ClipScore(Metric):
    """Mean image-prompt cosine in CLIP space; `update(images, items)` reads each item's `.prompt`.

    Args:
        model, preprocess, tokenizer: an open_clip triple (toy kit, tiny test model); None loads ViT-B-32/openai.
        weights: description of an injected model's weights for the protocol.
        offline, cache_dir: passed to load_openai_clip when no model is injected.
    """

    name = "clip_score"
    higher_is_better = {"clip_score_cos_mean": True, "clip_score_100": True}

    def __init__(self, model: Any = None, preprocess: Callable | None = None, tokenizer: Callable | None = None, *,
                 weights: str | None = None, batch_size: int = 32, device: str = "cpu",
                 offline: bool | None = None, cache_dir: str | None = None) -> None:
        super().__init__()
        if model is None:
            if preprocess is not None or tokenizer is not None:
                raise ValueError("preprocess/tokenizer only apply to an injected model; pass model= too")
            model, preprocess, tokenizer = load_openai_clip(offline=offline, device=device, cache_dir=cache_dir)
            weights = weights or f"open_clip {CLIP_MODEL} pretrained={CLIP_PRETRAINED}"
        elif preprocess is None or tokenizer is None:
            raise ValueError("an injected CLIP model needs its preprocess= and tokenizer= as well")
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.weights = weights or f"injected:{type(model).__name__}"
        self.batch_size, self.device = batch_size, device
        self.reset()

    @classmethod
    def for_toy_kit(cls, kit: Any, **kw) -> ClipScore:
        model, preprocess, tokenizer = kit.clip
        kw.setdefault("weights", "toy kit open_clip model")
        return cls(model, preprocess, tokenizer, **kw)

    def reset(self) -> None:
        super().reset()
        self._cos: list[float] = []

    @torch.no_grad()
    def cosines(self, images: Any, prompts: Sequence[str]) -> torch.Tensor:
        """Cosine between each image and its prompt, (N,) float32."""
        pils = to_pil_images(images)
        self.model.eval()
        out = []
        for i in range(0, len(pils), self.batch_size):
            pix = torch.stack([self.preprocess(im) for im in pils[i:i + self.batch_size]]).to(self.device)
            tok = self.tokenizer(list(prompts[i:i + self.batch_size])).to(self.device)
            img = torch.nn.functional.normalize(self.model.encode_image(pix).float(), dim=-1)
            txt = torch.nn.functional.normalize(self.model.encode_text(tok).float(), dim=-1)
            out.append((img * txt).sum(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def update(self, images: Any, items: Sequence[Any]) -> None:
        items = check_items(images, items, ("prompt",))
        self._seen(images)
        self._cos.extend(self.cosines(images, [str(it.prompt) for it in items]).tolist())

    def compute(self) -> dict[str, float]:
        if not self._cos:
            return {"clip_score_cos_mean": float("nan"), "clip_score_100": float("nan")}
        cos = torch.tensor(self._cos, dtype=torch.float64)
        return {"clip_score_cos_mean": float(cos.mean()), "clip_score_100": float((100 * cos.clamp(min=0)).mean())}

    def _protocol(self) -> dict[str, Any]:
        return {"backbone_weights": self.weights, "preprocess": repr(self.preprocess),
                "text_truncation": "open_clip tokenizer context (77 tokens)",
                "keys": {"clip_score_cos_mean": "mean raw cosine", "clip_score_100": "mean 100*max(cos,0)"}}
