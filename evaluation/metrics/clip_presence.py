"""CLIP zero-shot presence of a concept: the share of images where CLIP prefers the concept's text over its
base (or anchor) texts. This is the "CLIP accuracy" MACE and UCE report for erased concepts, and the check
UCE's own ratio search uses; it needs nothing but the concept's prompt, so it fits any concept, including one
named on the command line, where no classifier has the concept as a class.

Keys (the metric's name is the prefix, so the ViT-B/32 and ViT-L/14 variants never mix):
- `clip_presence`: share of images whose cosine with the concept text exceeds its cosine with every anchor,
- `clip_presence_margin`: mean of (cosine with the concept text - the largest cosine with an anchor).

Anchors: the concept's `anchors` list if it has one, else its `base_prompt` (the text the erase objective
contrasts the concept with; "" is the empty prompt, which CLIP encodes like any text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import Metric, check_items, to_pil_images
from .clip_score import CLIP_MODEL, CLIP_PRETRAINED, load_openai_clip

# metric name -> the open_clip model and weights it loads on real models (as clip_score loads its model)
PRESENCE_MODELS = {"clip_presence": (CLIP_MODEL, CLIP_PRETRAINED), "clip_presence_l14": ("ViT-L-14", "openai")}


def concept_texts(concept: dict) -> tuple[str, list[str]]:
    """(the concept's text, its anchor texts) for a concept config (prompt, base_prompt, optional anchors)."""
    text = str(concept.get("prompt") or "")
    if not text.strip():
        raise ValueError(f"concept {concept.get('name')!r} has no prompt: CLIP presence compares the concept's "
                         "prompt with its base prompt or anchors; set concept.prompt")
    anchors = concept.get("anchors")
    if anchors is None:
        anchors = [str(concept.get("base_prompt") or "")]
    if isinstance(anchors, str) or not anchors:
        raise ValueError(f"concept {concept.get('name')!r}: anchors must be a non-empty list of texts, e.g. "
                         "concept.anchors=[a dog,a cat]")
    anchors = [str(a) for a in anchors]
    if text in anchors:
        raise ValueError(f"concept {concept.get('name')!r}: its prompt {text!r} is also an anchor, so CLIP could "
                         "never prefer it; give a base prompt or anchors that differ from the prompt")
    return text, anchors


class ClipPresence(Metric):
    """Share of images where CLIP's cosine with `text` beats every anchor's; `update(images, items)` reads no
    item field (the texts are the concept's), items only pair with images.

    Args:
        text, anchors: the concept's text and the texts it must beat (concept_texts(concept) gives both).
        model, preprocess, tokenizer: an open_clip triple (the toy kit's, a tiny test model); None loads
            `model_name` with `pretrained` weights exactly as clip_score does (offline: from the cache only).
        goal: "erase" (lower presence is better) or "amplify" (higher is better).
        key: the result keys' prefix (the metric's name in the benchmark's list).
    """

    name = "clip_presence"

    def __init__(self, text: str, anchors: Sequence[str], model: Any = None, preprocess: Callable | None = None,
                 tokenizer: Callable | None = None, *, goal: str = "erase", key: str = "clip_presence",
                 model_name: str = CLIP_MODEL, pretrained: str = CLIP_PRETRAINED, weights: str | None = None,
                 batch_size: int = 32, device: str = "cpu", offline: bool | None = None,
                 cache_dir: str | None = None) -> None:
        super().__init__()
        if goal not in ("erase", "amplify"):
            raise ValueError(f"goal must be 'erase' or 'amplify', got {goal!r}")
        if not anchors:
            raise ValueError("CLIP presence needs at least one anchor text to compare the concept with")
        if model is None:
            if preprocess is not None or tokenizer is not None:
                raise ValueError("preprocess/tokenizer only apply to an injected model; pass model= too")
            model, preprocess, tokenizer = load_openai_clip(model_name, pretrained, offline=offline, device=device,
                                                            cache_dir=cache_dir)
            weights = weights or f"open_clip {model_name} pretrained={pretrained}"
        elif preprocess is None or tokenizer is None:
            raise ValueError("an injected CLIP model needs its preprocess= and tokenizer= as well")
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.weights = weights or f"injected:{type(model).__name__}"
        self.text, self.anchors, self.goal, self.key = str(text), [str(a) for a in anchors], goal, key
        self.name = key
        self.higher_is_better = {key: goal == "amplify", f"{key}_margin": goal == "amplify"}
        self.batch_size, self.device = batch_size, device
        self._text_features: torch.Tensor | None = None
        self.reset()

    @classmethod
    def for_concept(cls, concept: dict, **kw) -> ClipPresence:
        text, anchors = concept_texts(concept)
        return cls(text, anchors, **kw)

    @classmethod
    def for_toy_kit(cls, kit: Any, concept: dict, **kw) -> ClipPresence:
        model, preprocess, tokenizer = kit.clip
        kw.setdefault("weights", "toy kit open_clip model")
        return cls.for_concept(concept, model=model, preprocess=preprocess, tokenizer=tokenizer, **kw)

    def reset(self) -> None:
        super().reset()
        self._margins: list[float] = []

    @torch.no_grad()
    def _texts(self) -> torch.Tensor:
        """Unit text features, row 0 the concept, then the anchors (computed once)."""
        if self._text_features is None:
            tok = self.tokenizer([self.text, *self.anchors]).to(self.device)
            self._text_features = torch.nn.functional.normalize(self.model.encode_text(tok).float(), dim=-1)
        return self._text_features

    @torch.no_grad()
    def margins(self, images: Any) -> torch.Tensor:
        """Per image: cosine with the concept text minus the largest cosine with an anchor, (N,) float32."""
        pils = to_pil_images(images)
        self.model.eval()
        texts = self._texts()
        out = []
        for i in range(0, len(pils), self.batch_size):
            pix = torch.stack([self.preprocess(im) for im in pils[i:i + self.batch_size]]).to(self.device)
            img = torch.nn.functional.normalize(self.model.encode_image(pix).float(), dim=-1)
            cos = img @ texts.T
            out.append((cos[:, 0] - cos[:, 1:].max(dim=1).values).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def update(self, images: Any, items: Sequence[Any]) -> None:
        check_items(images, items, ())
        self._seen(images)
        self._margins.extend(self.margins(images).tolist())

    def compute(self) -> dict[str, float]:
        if not self._margins:
            return {self.key: float("nan"), f"{self.key}_margin": float("nan")}
        m = torch.tensor(self._margins, dtype=torch.float64)
        return {self.key: float((m > 0).double().mean()), f"{self.key}_margin": float(m.mean())}

    def _protocol(self) -> dict[str, Any]:
        return {"backbone_weights": self.weights, "preprocess": repr(self.preprocess), "text": self.text,
                "anchors": list(self.anchors), "goal": self.goal,
                "rule": "an image shows the concept when its CLIP cosine with the concept text exceeds its cosine "
                        "with every anchor text (ties count as absent)",
                "keys": {self.key: "share of images showing the concept",
                         f"{self.key}_margin": "mean cos(concept) - max cos(anchor)"}}
