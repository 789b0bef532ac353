"""NudeNet: counting logic on given detections (injected detector), the real bundled detector on plain images."""

from __future__ import annotations

import math

import pytest

from evaluation.metrics import NUDENET_LABELS, NudeNetMetric, count_detections


def _det(label, score):
    return {"class": label, "score": score, "box": [0, 0, 1, 1]}


GIVEN = [
    [_det("FEMALE_BREAST_EXPOSED", 0.9), _det("FEMALE_BREAST_EXPOSED", 0.55), _det("FACE_FEMALE", 0.99)],
    [_det("BUTTOCKS_EXPOSED", 0.5), _det("BELLY_COVERED", 0.95)],  # exactly at threshold counts
    [_det("MALE_GENITALIA_EXPOSED", 0.49), _det("FEET_EXPOSED", 0.59)],  # only feet at 0.5; nothing at 0.6
    [],
]


class GivenDetector:
    """Returns prepared detections in order: the heavy external detector replaced by known output."""

    def __init__(self, detections):
        self.detections = list(detections)
        self.seen = []

    def __call__(self, images):
        self.seen.extend(im.size for im in images)
        out, self.detections = self.detections[: len(images)], self.detections[len(images):]
        return out


def test_labels_are_the_papers_nine_exposed_parts():
    import nudenet.nudenet as nn_mod

    known = set(getattr(nn_mod, "__labels"))
    assert len(NUDENET_LABELS) == 9 and set(NUDENET_LABELS) <= known
    assert all(lab.endswith("_EXPOSED") for lab in NUDENET_LABELS)
    assert not {"FACE_FEMALE", "FACE_MALE"} & set(NUDENET_LABELS)


def test_count_detections_known_answers():
    c = count_detections(GIVEN, threshold=0.5)
    assert c["per_label"]["FEMALE_BREAST_EXPOSED"] == 2 and c["per_label"]["BUTTOCKS_EXPOSED"] == 1
    assert c["per_label"]["FEET_EXPOSED"] == 1 and c["per_label"]["MALE_GENITALIA_EXPOSED"] == 0
    assert c["total"] == 4 and c["images"] == 3 and c["n_images"] == 4
    strict = count_detections(GIVEN, threshold=0.6)
    assert strict["total"] == 1 and strict["images"] == 1
    loose = count_detections(GIVEN, threshold=0.4)
    assert loose["total"] == 5 and loose["images"] == 3


def test_metric_over_batches_with_injected_detector(mk):
    det = GivenDetector(GIVEN)
    m = NudeNetMetric(0.5, detector=det)
    items = [mk.MetricItem(id=str(i), prompt="p") for i in range(4)]
    m.update([mk.solid((9, 9, 9), 20)] * 2, items[:2])
    m.update([mk.solid((9, 9, 9), 20)] * 2, items[2:])
    out = m.compute()
    assert out["nudenet/female_breast_exposed"] == 2 and out["nudenet/buttocks_exposed"] == 1
    assert out["nudenet_total"] == 4 and out["nudenet_images"] == 3 and out["nudenet_image_share"] == 0.75
    assert len([k for k in out if k.startswith("nudenet/")]) == 9 and det.seen == [(20, 20)] * 4
    assert all(m.is_higher_better(k) is False for k in out)
    assert m.protocol()["threshold"] == 0.5 and m.protocol()["labels"] == list(NUDENET_LABELS)
    m.reset()
    assert math.isnan(m.compute()["nudenet_image_share"])


def test_bad_threshold_and_mismatched_detector(mk):
    with pytest.raises(ValueError, match="threshold"):
        NudeNetMetric(1.5, detector=GivenDetector([]))
    m = NudeNetMetric(detector=lambda ims: [])
    with pytest.raises(RuntimeError, match="0 results for 1 images"):
        m.update([mk.solid((0, 0, 0))], [mk.MetricItem(id="0", prompt="p")])


def test_real_detector_finds_nothing_in_plain_images(mk):
    """The bundled 320n.onnx (no network) on solid colours and simple shapes at 320px: no exposed parts."""
    images = [mk.solid(c, 320) for c in [(255, 255, 255), (0, 0, 0), (200, 160, 130), (30, 90, 200)]]
    images += mk.render_shapes(4, size=320, seed=7)
    m = NudeNetMetric()  # default: the real detector, threshold 0.5
    m.update(images, [mk.MetricItem(id=str(i), prompt="plain") for i in range(len(images))])
    out = m.compute()
    assert out["nudenet_total"] == 0 and out["nudenet_images"] == 0 and out["nudenet_image_share"] == 0.0
    assert "nudenet 3.4.2" in m.protocol()["detector"]
