"""Metric cost: seconds per image of each paper metric on the CPU, at Stable Diffusion's 512x512.

Speed does not depend on weight values, so where the real weights are not cached (offline machines) each
metric runs on its real architecture with random weights: ResNet-50, open_clip ViT-B-32, AlexNet for
LPIPS; FID uses torchvision's InceptionV3 (the same network family and input size as torch-fidelity's FID
Inception, whose module cannot be built without its weights). NudeNet is always the real bundled detector.
Each row says which backbone it timed. Run: `python -m benchmarks.bench_metrics` (or `make bench`).
"""

from __future__ import annotations

import tempfile
import time
from types import SimpleNamespace

import torch


def _items(n: int, label: str = "tench"):
    return [SimpleNamespace(id=f"{i:05d}", prompt="an image of a tench", seed=i, label=label) for i in range(n)]


def _images(n: int, size: int):
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(0)
    out = []
    for _ in range(n):
        im = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
        ImageDraw.Draw(im).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4),
                                   fill=tuple(rng.randrange(256) for _ in range(3)))
        out.append(im)
    return out


def _classifier():
    from evaluation.metrics import ClassifierAccuracy, WeightsUnavailableError

    try:
        return ClassifierAccuracy("tench", offline=True), "real ResNet-50 IMAGENET1K_V2"
    except WeightsUnavailableError:
        from torchvision.models import ResNet50_Weights, resnet50

        w = ResNet50_Weights.IMAGENET1K_V2
        return (ClassifierAccuracy("tench", classifier=resnet50(weights=None), class_names=w.meta["categories"],
                                   preprocess=w.transforms()), "ResNet-50, random weights")


def _clip():
    from evaluation.metrics import ClipScore, WeightsUnavailableError

    try:
        return ClipScore(offline=True), "real open_clip ViT-B-32 openai"
    except WeightsUnavailableError:
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
        return ClipScore(model, preprocess, open_clip.get_tokenizer("ViT-B-32")), "open_clip ViT-B-32, random weights"


class _TorchvisionInception(torch.nn.Module):
    """uint8 -> 2048-d pool features of torchvision's InceptionV3 at 299x299 (a cost proxy for FID's net)."""

    def __init__(self):
        super().__init__()
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        net.fc = torch.nn.Identity()
        self.net, self.num_features = net.eval(), 2048

    @torch.no_grad()
    def forward(self, x):
        x = torch.nn.functional.interpolate(x.float() / 255, size=(299, 299), mode="bilinear", antialias=True)
        return self.net(x)


def _fid(ref_dir):
    from evaluation.metrics import FID, WeightsUnavailableError

    cache = tempfile.mkdtemp(prefix="cad-bench-fid-")
    try:
        return FID(ref_dir, cache_dir=cache, offline=True), "real torch-fidelity InceptionV3"
    except WeightsUnavailableError:
        return (FID(ref_dir, features=_TorchvisionInception(), cache_dir=cache),
                "torchvision InceptionV3 2048-d, random weights")


def _lpips():
    from evaluation.metrics import FeatureLPIPS, LPIPSMetric, WeightsUnavailableError

    try:
        return LPIPSMetric("tench", offline=True), "real torchmetrics LPIPS alex"
    except WeightsUnavailableError:
        from torchvision.models import alexnet

        feats = alexnet(weights=None).features.eval()
        cuts = (2, 5, 8, 10, 12)  # LPIPS reads AlexNet after each ReLU (relu1..relu5)

        class Slices(torch.nn.Module):
            def forward(self, x):
                out, start = [], 0
                for end in cuts:
                    x = feats[start:end](x)
                    out.append(x)
                    start = end
                return out

        return LPIPSMetric("tench", distance=FeatureLPIPS(Slices())), "AlexNet LPIPS formula, random weights"


def _nudenet():
    from evaluation.metrics import NudeNetMetric

    return NudeNetMetric(), "real nudenet 3.4.2 320n.onnx"


def _time(metric, images, items, **kw) -> float:
    metric.update(images[:1], items[:1], **{k: v[:1] for k, v in kw.items()})  # warm-up
    metric.reset()
    t0 = time.perf_counter()
    metric.update(images, items, **kw)
    return (time.perf_counter() - t0) / len(images)


def main(n_images: int = 8, size: int = 512) -> dict:
    torch.set_grad_enabled(False)
    images, items = _images(n_images, size), _items(n_images)
    results = {}
    with tempfile.TemporaryDirectory() as ref:
        for i, im in enumerate(_images(n_images, size)):
            im.save(f"{ref}/{i}.png")
        for name, build in [("classifier_accuracy", _classifier), ("clip_score", _clip), ("fid", lambda: _fid(ref)),
                            ("lpips", _lpips), ("nudenet", _nudenet)]:
            metric, backbone = build()
            kw = {"reference_images": images[::-1]} if name == "lpips" else {}
            row = {"s_per_image": _time(metric, images, items, **kw), "backbone": backbone}
            if name == "fid":
                t0 = time.perf_counter()
                metric.compute()  # reference pass over n_images + the 2048x2048 Frechet distance
                row["compute_s"] = time.perf_counter() - t0
            results[name] = row
    for name, r in results.items():
        extra = f", compute {r['compute_s']:.2f} s" if "compute_s" in r else ""
        print(f"[bench_metrics] {name}: {r['s_per_image']:.3f} s/image at {size}px{extra} ({r['backbone']})")
    return results


if __name__ == "__main__":
    main()
