"""Scoring a generated folder: item order, batching, metric keys, protocols, missing images."""

from __future__ import annotations

import pytest
import torch

from cad.generate import generate
from evaluation.benchmarks import load_benchmark
from evaluation.metrics import ClassifierAccuracy
from evaluation.metrics.base import Metric, to_float_images
from evaluation.score import score, score_protocols

COLORS3 = ["red", "green", "blue"]


class MeanChannel(Metric):
    """A real (if simple) metric: mean of each RGB channel, recording the items it saw in order."""

    name = "mean_channel"
    higher_is_better = {"red": True}

    def reset(self):
        super().reset()
        self.seen, self.sums, self.batches = [], torch.zeros(3), []

    def update(self, images, items):
        self._seen(images)
        x = to_float_images(images)
        self.seen += [i.id for i in items]
        self.batches.append(len(items))
        self.sums += x.mean(dim=(2, 3)).sum(0)

    def compute(self):
        n = len(self.seen)
        return {"red": float(self.sums[0] / n), "green": float(self.sums[1] / n)}


def _channel_logits(x):  # (N,3,H,W) -> logits over red/green/blue: the brightest channel wins
    return x.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def generated(tiny_pipe_factory, tmp_path_factory):
    bench = load_benchmark({"name": "rgb", "version": 1, "source": {
        "generator": "toy", "template": "a {color} shape", "label": "color", "seeds_per_prompt": 2}})
    bench = type(bench)(bench.name, bench.version, tuple(i for i in bench if i.label in COLORS3), bench.meta)
    out = tmp_path_factory.mktemp("rgb")
    generate(tiny_pipe_factory(0), bench, out, steps=2, guidance=3.0, batch_size=6, progress=False,
             info={"model": "tiny"})
    return bench, out


def test_score_feeds_items_in_order_and_prefixes_keys(generated):
    bench, out = generated
    mean = MeanChannel()
    acc = ClassifierAccuracy("red", classifier=_channel_logits, class_names=COLORS3)
    result = score(out, bench, {"mean": mean, "acc": acc}, batch_size=4)
    assert mean.seen == [i.id for i in bench] and mean.batches == [4, 2]
    assert set(result) >= {"rgb/red", "rgb/green", "rgb/acc_target", "rgb/acc_others", "rgb/acc/red"}
    # the same accuracy computed directly from the PNGs
    from PIL import Image

    imgs = [Image.open(out / f"{i.id}.png").convert("RGB") for i in bench]
    pred = _channel_logits(to_float_images(imgs)).argmax(1).tolist()
    hits = [COLORS3[p] == i.label for p, i in zip(pred, bench)]
    assert result["rgb/acc_target"] == pytest.approx(sum(hits[:2]) / 2)
    assert result["rgb/acc_others"] == pytest.approx(sum(hits[2:]) / 4)
    again = score(out, bench, [mean], batch_size=6)  # reset first: rescoring repeats, whatever the batch size
    assert again == pytest.approx({k: v for k, v in result.items() if k in ("rgb/red", "rgb/green")})


def test_protocols_join_generation_meta(generated):
    bench, out = generated
    mean = MeanChannel()
    score(out, bench, mean)
    proto = score_protocols(out, [mean])
    assert proto["generation"]["identity"]["steps"] == 2 and proto["generation"]["model"] == "tiny"
    assert proto["metrics"]["mean_channel"]["n_images"] == len(bench)


def test_missing_images_and_key_clashes(generated, tmp_path):
    bench, out = generated
    with pytest.raises(FileNotFoundError, match=r"6 of 6 images are missing.*cad\.generate"):
        score(tmp_path, bench, MeanChannel())
    with pytest.raises(ValueError, match="both report 'rgb/red'"):
        score(out, bench, [MeanChannel(), MeanChannel()])
    with pytest.raises(TypeError, match="not a metric"):
        score(out, bench, [object()])
