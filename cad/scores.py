"""Attribution scores: float32 alpha per parameter name, saved as safetensors with a JSON sidecar.

Scores belong to one model: the sidecar records the model (hub id or path) and a fingerprint of its UNet
weights, and loading against another model (other fingerprint, names or shapes) raises
ScoresMismatchError instead of silently editing the wrong weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cad.io import atomic_write_bytes, atomic_write_json, stable_hash

SCORES_FILE = "scores.safetensors"
META_FILE = "meta.json"
# Meta keys that describe how scores were made (not when or how fast): they name the artifact.
CONFIG_KEYS = ("model", "unet_fingerprint", "concept", "objective", "estimator", "steps", "guidance",
               "num_samples", "seed", "base_prompt", "negative_prompt", "space", "images", "dtype")


class ScoresMismatchError(ValueError):
    """Scores were computed on another model than the one they are being used with."""


@dataclass
class AttributionScores:
    """alpha_i = w_i * dJ/dw_i per chosen UNet tensor (float32, CPU), with what made them in `meta`."""

    scores: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        bad = [n for n, s in self.scores.items() if not isinstance(s, torch.Tensor)]
        if bad:
            raise TypeError(f"scores must be tensors; not for {bad[:3]}")
        self.scores = {n: s.detach().float().cpu() for n, s in self.scores.items()}

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> list[str]:
        return list(self.scores)

    @property
    def numel(self) -> int:
        return sum(s.numel() for s in self.scores.values())

    @property
    def key(self) -> str:
        """A short hash of the configuration that produced these scores (for content-addressed folders)."""
        config = {k: self.meta.get(k) for k in CONFIG_KEYS}
        if self.meta.get("retain"):  # a retain ranking (cad.retain) is another artifact than the plain alpha
            config["retain"] = self.meta["retain"]
        return stable_hash(config)

    def predicted_change(self, masks: dict[str, torch.Tensor]) -> float:
        """First-order estimate of J(edited) - J(original) when the masked weights are zeroed: -sum alpha."""
        if self.meta.get("retain"):
            raise ValueError("these scores are a retain ranking (alpha divided by retain importance), not alpha; "
                             "predict with the target concept's own attribution scores")
        total = 0.0
        for name, m in masks.items():
            if name not in self.scores:
                raise KeyError(f"mask for {name!r} has no score; the edit was not built from these scores")
            total += float(self.scores[name][m.to(torch.bool).cpu()].double().sum())
        return -total

    def save(self, folder: str | Path) -> Path:
        """Write scores.safetensors and meta.json into `folder` (atomically); returns the folder."""
        from safetensors.torch import save

        folder = Path(folder)
        blob = save({n: s.contiguous() for n, s in self.scores.items()},
                    metadata={"cad_meta": json.dumps(self.meta, sort_keys=True, default=str)})
        atomic_write_bytes(folder / SCORES_FILE, blob)
        atomic_write_json(folder / META_FILE, self.meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path, unet=None) -> AttributionScores:
        """Read scores from `folder`; with `unet` (or a pipeline) check they were computed on that model."""
        from safetensors.torch import load_file

        folder = Path(folder)
        path = folder / SCORES_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {SCORES_FILE} in {folder}; compute scores with cad.attribute(...).save()")
        meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
        out = cls(load_file(str(path)), meta)
        if unet is not None:
            out.check(unet)
        return out

    def check(self, unet) -> None:
        """Raise ScoresMismatchError unless every score tensor exists in `unet` with the same shape and
        the UNet's weight fingerprint is the one recorded at attribution time."""
        from cad.loading import unet_fingerprint

        unet = getattr(unet, "unet", unet)
        params = dict(unet.named_parameters())
        fix = ("recompute the scores on this model with cad.attribute(...), or load the model the scores "
               f"were computed on ({self.meta.get('model', '<unknown>')})")
        missing = [n for n in self.scores if n not in params]
        if missing:
            raise ScoresMismatchError(f"{len(missing)} score tensors are not parameters of this UNet "
                                      f"(e.g. {missing[0]!r}); {fix}")
        wrong = [(n, tuple(s.shape), tuple(params[n].shape)) for n, s in self.scores.items()
                 if s.shape != params[n].shape]
        if wrong:
            n, a, b = wrong[0]
            raise ScoresMismatchError(f"score {n!r} has shape {a} but the UNet's parameter has {b}; {fix}")
        recorded = self.meta.get("unet_fingerprint")
        actual = unet_fingerprint(unet)
        if recorded != actual:
            raise ScoresMismatchError(
                f"scores were computed on a UNet with fingerprint {recorded} (model "
                f"{self.meta.get('model', '<unknown>')}) but this UNet's fingerprint is {actual} "
                f"(an edited or different model is another model); {fix}")
