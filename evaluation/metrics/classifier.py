"""Top-1 classifier accuracy on the erased class and on the others: the paper's Imagenette protocol.

The real backbone is torchvision's ResNet-50 with `ResNet50_Weights.IMAGENET1K_V2` and its own transforms;
any classifier can be injected (the toy world's multi-head classifier, a tiny net in tests). An image counts
as correct when the argmax over the classifier's classes is the class named by its item's `.label`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import (
    Metric,
    WeightsUnavailableError,
    check_items,
    fetch_torch_hub_weights,
    normalize_name,
    to_float_images,
)

# The 10 Imagenette classes and their ImageNet-1k indices (names as torchvision's categories spell them).
IMAGENETTE: dict[str, int] = {
    "tench": 0, "English springer": 217, "cassette player": 482, "chain saw": 491, "church": 497,
    "French horn": 566, "garbage truck": 569, "gas pump": 571, "golf ball": 574, "parachute": 701,
}
RESNET50_WEIGHTS = "ResNet50_Weights.IMAGENET1K_V2"


def resnet50_weights_file(offline: bool | None = None):
    """The ResNet-50 weights file in the torch hub cache (downloaded unless offline); what the preflight checks."""
    from torchvision.models import ResNet50_Weights

    return fetch_torch_hub_weights(ResNet50_Weights.IMAGENET1K_V2.url, f"ResNet-50 ({RESNET50_WEIGHTS})", offline)


def load_resnet50(weights_path: str | None = None, *, offline: bool | None = None, device: str = "cpu"):
    """torchvision ResNet-50 (IMAGENET1K_V2) -> (model, preprocess, class_names).

    Weights come from `weights_path` if given, else the torch hub cache (TORCH_HOME), downloading them
    unless offline. Raises WeightsUnavailableError naming the file and how to provide it.
    """
    from torchvision.models import ResNet50_Weights, resnet50

    weights = ResNet50_Weights.IMAGENET1K_V2
    path = weights_path or resnet50_weights_file(offline)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsUnavailableError(f"could not read ResNet-50 weights from {path}: {err}; pass the "
                                      f"torchvision file {weights.url.rsplit('/', 1)[-1]} as weights_path") from err
    model = resnet50(weights=None)
    model.load_state_dict(state)
    return model.eval().to(device), weights.transforms(), list(weights.meta["categories"])


class ClassifierAccuracy(Metric):
    """Accuracy on `target` (the erased class), pooled over the other classes, and per class.

    Args:
        target: the erased (or amplified) class, a name from `class_names` (case/space-insensitive).
        classifier: callable float images (N,3,H,W) after `preprocess` -> logits (N,C), or a dict of such
            logits per head (then pass `head`). None loads the real ResNet-50.
        class_names: the name of each logit column; item labels are matched against these.
        preprocess: callable on float images in [0,1] (N,3,H,W) -> classifier input (identity if None).
        head: which entry of a dict-valued classifier output to read (toy classifier: shape/style/color).
        goal: "erase" (lower target accuracy is better) or "amplify" (higher is better).
        weights: a description of the injected classifier's weights, recorded in the protocol.
    """

    name = "classifier_accuracy"

    def __init__(self, target: str, *, classifier: Callable | None = None, class_names: Sequence[str] | None = None,
                 preprocess: Callable | None = None, head: str | None = None, goal: str = "erase",
                 weights: str | None = None, batch_size: int = 32, device: str = "cpu",
                 offline: bool | None = None) -> None:
        super().__init__()
        if goal not in ("erase", "amplify"):
            raise ValueError(f"goal must be 'erase' or 'amplify', got {goal!r}")
        if classifier is None:
            if class_names is not None or preprocess is not None:
                raise ValueError("class_names/preprocess only apply to an injected classifier; pass classifier= too")
            classifier, preprocess, class_names = load_resnet50(offline=offline, device=device)
            weights = weights or f"torchvision resnet50 {RESNET50_WEIGHTS}"
        elif class_names is None:
            raise ValueError("an injected classifier needs class_names= (the name of each logit column)")
        self.classifier, self.preprocess, self.head = classifier, preprocess, head
        self.class_names = [str(c) for c in class_names]
        self._index = {}
        for i, c in enumerate(self.class_names):
            self._index.setdefault(normalize_name(c), i)
        self.target = self.class_names[self.label_index(target)]
        self.goal, self.batch_size, self.device = goal, batch_size, device
        self.weights = weights or f"injected:{type(classifier).__name__}"
        self.higher_is_better = {"acc_target": goal == "amplify", "acc_others": True, "acc/": True,
                                 f"acc/{self.target}": goal == "amplify"}
        self.reset()

    @classmethod
    def for_toy_kit(cls, kit: Any, target: str, **kw) -> ClassifierAccuracy:
        """The toy world's classifier, reading the head of the target's kind (shape, style or color)."""
        from cad.toy.world import KINDS, kind_of

        head = kind_of(target)
        # the weights' sha256 (the kit manifest's), never the kit's folder: rows are keyed by what made them, and
        # a kit moved or copied elsewhere must not split a table
        digest = ((getattr(kit, "manifest", None) or {}).get("files") or {}).get("classifier/model.safetensors")
        kw.setdefault("weights", f"toy kit classifier sha256:{digest[:16]}" if digest else "toy kit classifier")
        return cls(target, classifier=kit.classifier, class_names=KINDS[head], head=head, **kw)

    def label_index(self, label: str) -> int:
        key = normalize_name(label)
        if key not in self._index:
            shown = ", ".join(self.class_names[:12]) + (" ..." if len(self.class_names) > 12 else "")
            raise ValueError(f"unknown class label {label!r}; the classifier knows: {shown}")
        return self._index[key]

    def reset(self) -> None:
        super().reset()
        self._correct = [0] * len(self.class_names)
        self._total = [0] * len(self.class_names)

    @torch.no_grad()
    def predict(self, images: Any) -> torch.Tensor:
        """Top-1 class indices (N,) for a batch."""
        x = to_float_images(images)
        if isinstance(self.classifier, torch.nn.Module):
            self.classifier.eval()
        preds = []
        for chunk in x.split(self.batch_size):
            inp = self.preprocess(chunk) if self.preprocess is not None else chunk
            out = self.classifier(inp.to(self.device))
            if isinstance(out, dict):
                if self.head is None or self.head not in out:
                    raise ValueError(f"the classifier returns heads {sorted(out)}: pass head= one of them")
                out = out[self.head]
            if out.ndim != 2 or out.shape[1] != len(self.class_names):
                raise ValueError(f"classifier logits have shape {tuple(out.shape)} but {len(self.class_names)} "
                                 "class_names were given")
            preds.append(out.argmax(dim=1).cpu())
        return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)

    def update(self, images: Any, items: Sequence[Any]) -> None:
        items = check_items(images, items, ("label",))
        labels = [self.label_index(it.label) for it in items]  # fail on a bad label before the forward pass
        self._seen(images)
        for lab, pred in zip(labels, self.predict(images).tolist()):
            self._total[lab] += 1
            self._correct[lab] += int(pred == lab)

    def compute(self) -> dict[str, float]:
        t = self.class_names.index(self.target)
        others = [i for i in range(len(self.class_names)) if i != t]
        # empty groups give NaN (e.g. a benchmark without target prompts), never a ZeroDivisionError
        out = {
            "acc_target": _ratio(self._correct[t], self._total[t]),
            "acc_others": _ratio(sum(self._correct[i] for i in others), sum(self._total[i] for i in others)),
        }
        for i, c in enumerate(self.class_names):
            if self._total[i]:
                out[f"acc/{c}"] = self._correct[i] / self._total[i]
        return out

    def _protocol(self) -> dict[str, Any]:
        return {"backbone_weights": self.weights, "target": self.target, "goal": self.goal, "head": self.head,
                "criterion": "top-1 argmax over the classifier's classes equals the item label",
                "preprocess": repr(self.preprocess), "n_classes": len(self.class_names)}


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")
