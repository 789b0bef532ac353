"""Attribution scores: float32 alpha per parameter name, saved as safetensors with a JSON sidecar.

Scores belong to one model: their identity (model, UNet fingerprint, concept, settings) lives inside the
safetensors metadata, with a sha256 of the tensors, and meta.json is a readable copy of it. Loading checks
that the two agree (a hand-edited sidecar is an error, not the truth), that the file is whole, and, given a
UNet, that it is the model the scores were computed on (other fingerprint, names or shapes raise
ScoresMismatchError instead of silently editing the wrong weights; `force=True` allows an intended transfer
to another model of the same architecture).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cad.errors import UserError
from cad.io import ArtifactCorruptError, as_json, atomic_write_bytes, atomic_write_json, stable_hash

log = logging.getLogger("cad.scores")

SCORES_FILE = "scores.safetensors"
META_FILE = "meta.json"
# Meta keys that describe how scores were made (not when or how fast): they name the artifact.
CONFIG_KEYS = ("model", "unet_fingerprint", "concept", "objective", "estimator", "steps", "guidance",
               "num_samples", "seed", "base_prompt", "negative_prompt", "space", "images", "dtype")


class ScoresMismatchError(UserError, ValueError):
    """Scores were computed on another model than the one they are being used with, or their sidecar
    disagrees with the identity embedded in the safetensors file."""


class ScoresCorruptError(ArtifactCorruptError):
    """scores.safetensors or meta.json is truncated, unreadable or does not match its content hash."""


def content_sha256(scores: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (in name order): what the file must decode to."""
    h = hashlib.sha256()
    for name in sorted(scores):
        t = scores[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_scores_meta(folder: str | Path) -> tuple[dict, bool]:
    """(meta, embedded) of a scores folder without loading the tensors: the identity embedded in
    scores.safetensors (checked against meta.json when both exist), else meta.json alone (embedded=False:
    scores written by another tool). Raises ScoresCorruptError / ScoresMismatchError naming the file and fix."""
    from safetensors import safe_open

    folder = Path(folder)
    path = folder / SCORES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {SCORES_FILE} in {folder}; compute scores with cad.attribute(...).save()")
    fix = f"delete {folder} and rerun (the scores are recomputed), or recompute them with cad.attribute(...).save()"
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error type for truncated or garbage headers
        raise ScoresCorruptError(f"{path} is truncated or not a safetensors file ({err}); {fix}") from err
    embedded = None
    if "cad_meta" in header:
        try:
            embedded = json.loads(header["cad_meta"])
        except json.JSONDecodeError as err:
            raise ScoresCorruptError(f"{path}: its embedded identity is not JSON ({err}); {fix}") from err
    sidecar = None
    side_path = folder / META_FILE
    if side_path.is_file():
        try:
            sidecar = json.loads(side_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ScoresCorruptError(f"{side_path} is truncated or not JSON ({err}); delete it (the identity "
                                     f"embedded in {SCORES_FILE} is used and it is rewritten on save) or {fix}") from err
    if embedded is None:
        return (sidecar or {}), False
    if sidecar is not None and as_json(sidecar) != as_json(embedded):
        diff = sorted(k for k in set(sidecar) | set(embedded) if as_json(sidecar.get(k)) != as_json(embedded.get(k)))
        raise ScoresMismatchError(
            f"{side_path} disagrees with the identity embedded in {path} (keys {diff[:5]}): the sidecar was edited "
            f"or belongs to other scores. The embedded identity is authoritative: delete {side_path} to use it, "
            f"or {fix}")
    return embedded, True


@dataclass
class AttributionScores:
    """alpha_i = w_i * dJ/dw_i per chosen UNet tensor (float32, CPU), with what made them in `meta`."""

    scores: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    # cad.attribute(time_buckets=B): the alpha of each group of timesteps (not saved with these scores)
    partials: list[AttributionScores] | None = field(default=None, repr=False, compare=False)

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
        if self.meta.get("schedule_steps") not in (None, self.meta.get("steps")):
            # `steps` timesteps of a longer schedule (the reference protocol) are other timesteps
            config["schedule_steps"] = self.meta["schedule_steps"]
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
        tensors = {n: s.contiguous() for n, s in self.scores.items()}
        # The identity travels inside the file (meta.json is a copy for people); the content hash catches
        # bit rot and hand-made files that a well-formed header would not reveal.
        blob = save(tensors, metadata={"cad_meta": json.dumps(self.meta, sort_keys=True, default=str),
                                       "cad_content_sha256": content_sha256(tensors)})
        atomic_write_bytes(folder / SCORES_FILE, blob)
        atomic_write_json(folder / META_FILE, self.meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path, unet=None, *, force: bool = False) -> AttributionScores:
        """Read scores from `folder`; with `unet` (or a pipeline) check they were computed on that model.

        The identity comes from inside scores.safetensors (meta.json must agree with it); the tensors must hash
        to the recorded content sha256. Scores without an embedded identity (made by another tool) are refused
        unless `force=True`. `force=True` also accepts a UNet with another fingerprint (an intended transfer
        between models of one architecture; names and shapes must still match)."""
        from safetensors import safe_open

        folder = Path(folder)
        meta, embedded = read_scores_meta(folder)
        path = folder / SCORES_FILE
        fix = f"delete {folder} and rerun (the scores are recomputed)"
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except Exception as err:
            raise ScoresCorruptError(f"{path} cannot be read ({err}); {fix}") from err
        recorded = header.get("cad_content_sha256")
        if recorded and content_sha256(tensors) != recorded:
            raise ScoresCorruptError(f"{path}: the tensors do not match the content sha256 recorded at save time "
                                     f"(the file was modified or corrupted); {fix}")
        if not embedded:
            if not force:
                raise ScoresMismatchError(
                    f"{path} carries no embedded cad identity (written by another tool, or hand-made), so nothing "
                    f"ties it to a model; recompute the scores with cad.attribute(...).save(), or load with "
                    "force=True (method.allow_other_model=true) if you trust it")
            log.warning("loading %s without an embedded identity (force=True)", path)
        out = cls(tensors, meta)
        if unet is not None:
            out.check(unet, force=force)
        return out

    def check(self, unet, *, force: bool = False) -> None:
        """Raise ScoresMismatchError unless every score tensor exists in `unet` with the same shape and
        the UNet's weight fingerprint is the one recorded at attribution time (`force=True`: a fingerprint
        mismatch is only logged, for intended transfers to another model of the same architecture)."""
        from cad.backbones import denoiser_of
        from cad.loading import unet_fingerprint

        unet = denoiser_of(unet)
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
            if force:
                log.warning("using scores of UNet %s (model %s) on UNet %s: force=True (an intended transfer)",
                            recorded, self.meta.get("model", "<unknown>"), actual)
                return
            raise ScoresMismatchError(
                f"scores were computed on a UNet with fingerprint {recorded} (model "
                f"{self.meta.get('model', '<unknown>')}) but this UNet's fingerprint is {actual} "
                f"(an edited or different model is another model); {fix}, or pass force=True "
                "(method.allow_other_model=true) for an intended transfer")
