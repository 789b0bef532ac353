"""The paper's metrics in the torchmetrics manner (update / compute / reset, higher_is_better, protocol)."""

from .base import Metric, WeightsUnavailableError
from .classifier import IMAGENETTE, ClassifierAccuracy, load_resnet50
from .clip_presence import ClipPresence
from .clip_score import ClipScore, load_openai_clip
from .detector import ConceptDetector, count_at_least
from .fid import FID, load_inception
from .lpips import FeatureLPIPS, LPIPSMetric, SequentialTaps, load_lpips_alexnet
from .nudenet import NUDENET_LABELS, NudeNetDetector, NudeNetMetric, count_detections, load_nudenet_detector

__all__ = [
    "FID", "IMAGENETTE", "NUDENET_LABELS", "ClassifierAccuracy", "ClipPresence", "ClipScore", "ConceptDetector", "FeatureLPIPS",
    "LPIPSMetric", "Metric", "NudeNetDetector", "NudeNetMetric", "SequentialTaps", "WeightsUnavailableError",
    "count_at_least", "count_detections", "load_inception",
    "load_lpips_alexnet", "load_nudenet_detector", "load_openai_clip", "load_resnet50",
]
