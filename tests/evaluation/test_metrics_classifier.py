"""Classifier accuracy: known answers on a mean-colour classifier, Imagenette label mapping, bad input."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from evaluation.metrics import IMAGENETTE, ClassifierAccuracy


@pytest.fixture()
def make_metric(mk):
    def make(target="red", **kw):
        return ClassifierAccuracy(target, classifier=mk.MeanColorClassifier(mk.PALETTE), class_names=list(mk.PALETTE),
                                  **kw)

    return make


def test_known_answers_target_others_and_per_class(items_factory, mk, make_metric):
    m = make_metric("red")
    # red images labelled red (2 right), one green image labelled red (wrong); blue: 1 right, 1 wrong
    images = [mk.solid(mk.PALETTE["red"]), mk.solid(mk.PALETTE["red"]), mk.solid(mk.PALETTE["green"]),
              mk.solid(mk.PALETTE["blue"]), mk.solid(mk.PALETTE["red"]), mk.solid(mk.PALETTE["green"])]
    labels = ["red", "red", "red", "blue", "blue", "green"]
    m.update(images[:4], items_factory(labels[:4]))
    m.update(images[4:], items_factory(labels[4:]))  # accumulates across batches
    out = m.compute()
    assert out["acc_target"] == pytest.approx(2 / 3)
    assert out["acc_others"] == pytest.approx(2 / 3)  # blue 1/2 right, green 1/1 right
    assert out["acc/red"] == pytest.approx(2 / 3)
    assert out["acc/blue"] == pytest.approx(0.5)
    assert out["acc/green"] == 1.0
    m.reset()
    m.update([mk.solid(mk.PALETTE["green"])], items_factory(["green"]))
    out = m.compute()
    assert math.isnan(out["acc_target"]) and out["acc_others"] == 1.0 and "acc/red" not in out


def test_tensor_inputs_match_pil_inputs(items_factory, mk, make_metric):
    images = [mk.solid(mk.PALETTE[c]) for c in ("red", "blue", "green")]
    items = items_factory(["red", "green", "green"])
    a, b, c = make_metric(), make_metric(), make_metric()
    a.update(images, items)
    u8 = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    b.update(u8, items)
    c.update(u8.float() / 255, items)
    assert a.compute() == b.compute() == c.compute()


def test_directions_follow_goal(mk, make_metric):
    erase, amplify = make_metric(goal="erase"), make_metric(goal="amplify")
    assert erase.is_higher_better("acc_target") is False and erase.is_higher_better("acc/red") is False
    assert erase.is_higher_better("acc_others") is True and erase.is_higher_better("acc/blue") is True
    assert amplify.is_higher_better("acc_target") is True


def test_dict_heads_need_head(items_factory, mk, make_metric):
    heads = ("shape", "color")
    m = ClassifierAccuracy("blue", classifier=mk.MeanColorClassifier(mk.PALETTE, heads), class_names=list(mk.PALETTE),
                           head="color")
    m.update([mk.solid(mk.PALETTE["blue"])], items_factory(["blue"]))
    assert m.compute()["acc_target"] == 1.0
    bad = ClassifierAccuracy("blue", classifier=mk.MeanColorClassifier(mk.PALETTE, heads), class_names=list(mk.PALETTE))
    with pytest.raises(ValueError, match="head="):
        bad.update([mk.solid(mk.PALETTE["blue"])], items_factory(["blue"]))


def test_bad_input_errors(items_factory, mk, make_metric):
    with pytest.raises(ValueError, match="unknown class label 'purple'"):
        make_metric("purple")
    m = make_metric()
    with pytest.raises(ValueError, match="unknown class label 'cyan'"):
        m.update([mk.solid(mk.PALETTE["red"])], items_factory(["cyan"]))
    with pytest.raises(ValueError, match="1 images but 2 items"):
        m.update([mk.solid(mk.PALETTE["red"])], items_factory(["red", "red"]))
    with pytest.raises(ValueError, match="class_names"):
        ClassifierAccuracy("red", classifier=mk.MeanColorClassifier(mk.PALETTE))
    with pytest.raises(ValueError, match="3 class_names"):
        ClassifierAccuracy("red", classifier=lambda x: torch.zeros(len(x), 5), class_names=list(mk.PALETTE)).update(
            [mk.solid(mk.PALETTE["red"])], items_factory(["red"]))


def test_imagenette_labels_map_to_their_imagenet_indices(data_dir, mk, make_metric):
    """The prompt file's class strings resolve (case/space-insensitively) to the 10 Imagenette indices."""
    from torchvision.models import ResNet50_Weights

    categories = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    with open(data_dir / "imagenette.csv", newline="") as f:
        labels = sorted({row["class"] for row in csv.DictReader(f)})
    assert len(labels) == 10

    # a 1000-way "classifier" that always answers ImageNet index 566 (French horn)
    def always_horn(x):
        logits = torch.zeros(len(x), 1000)
        logits[:, 566] = 1.0
        return logits

    m = ClassifierAccuracy("french HORN", classifier=always_horn, class_names=categories)
    assert m.target == "French horn"
    for lab in labels:
        assert m.label_index(lab) == IMAGENETTE[lab]
        assert m.label_index(lab.upper().replace(" ", "_")) == IMAGENETTE[lab]
    images = [mk.solid((0, 0, 0))] * len(labels)
    m.update(images, [mk.MetricItem(id=lab, prompt="", label=lab) for lab in labels])
    out = m.compute()
    assert out["acc_target"] == 1.0 and out["acc_others"] == 0.0 and len([k for k in out if k.startswith("acc/")]) == 10


def test_protocol_records_weights_and_sizes(items_factory, mk, make_metric):
    m = make_metric(weights="mean-colour prototypes")
    m.update([mk.solid(mk.PALETTE["red"], 32)], items_factory(["red"]))
    p = m.protocol()
    assert p["backbone_weights"] == "mean-colour prototypes" and p["image_sizes"] == ["32x32"]
    assert p["target"] == "red" and p["n_images"] == 1 and "torch" in p["package_versions"]
