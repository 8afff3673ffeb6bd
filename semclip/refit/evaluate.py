"""How one model does on the hold-out set: classification and pixel metrics."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from semclip.data.dataset import GOOD
from semclip.metrics import PixelScoreHistogram, classification_metrics
from semclip.model import ImageScores, SemclipModel
from semclip.refit.decode import HoldoutSet

__all__ = ["HoldoutMetrics", "evaluate"]


@dataclass(frozen=True)
class HoldoutMetrics:
    """How one model did on a hold-out set; ``None`` where nothing could be measured."""

    n_images: int  # hold-out images scored
    n_failed: int  # images the model could not score (counted as wrong)
    accuracy: float | None
    f1: float | None  # macro F1 over the hold-out's classes
    precision: float | None
    recall: float | None
    pixel_f1_max: float | None  # over all pixels of images with pixel truth; None: no masks
    n_masks: int  # defect images with a mask
    labels: tuple[str, ...] = ()
    per_class_f1: dict[str, float | None] = field(default_factory=dict)
    per_class_recall: dict[str, float | None] = field(default_factory=dict)
    # Per hold-out image, in hold-out order: what the paired bootstrap of the gate resamples.
    truth: tuple[str, ...] = ()
    predicted: tuple[str, ...] = ()  # "<failed>" where the model could not score the image
    model_classes: tuple[str, ...] = ()  # the classes the model knows (the gate's minimum)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def loggable(self, prefix: str) -> dict[str, float | None]:
        """Flat numeric metrics for MLflow, names prefixed (``candidate.f1``), and per class
        (``candidate.holdout_f1_bridge``, ``candidate.holdout_recall_bridge``)."""
        keys = ("accuracy", "f1", "precision", "recall", "pixel_f1_max", "n_images", "n_masks")
        out = {f"{prefix}.{k}": _maybe_float(getattr(self, k)) for k in keys}
        for name, values in (("f1", self.per_class_f1), ("recall", self.per_class_recall)):
            for label, value in values.items():
                out[f"{prefix}.holdout_{name}_{_metric_safe(label)}"] = _maybe_float(value)
        return out

    def holdout_counts(self) -> dict[str, int]:
        """Hold-out images per true class."""
        counts: dict[str, int] = {}
        for label in self.truth:
            counts[label] = counts.get(label, 0) + 1
        return counts


def evaluate(model: SemclipModel, holdout: HoldoutSet) -> HoldoutMetrics:
    """Classification and pixel metrics of ``model`` on ``holdout``.

    Macro metrics run over the hold-out's own classes (so two models with different class
    lists are scored on the same terms); a class the model does not know is always wrong.
    Pixel F1-max pools all pixels of the images with pixel truth (good images all
    negative), at each image's own resolution; ``None`` when no defect image has a mask.
    """
    labels = holdout.labels
    if not len(holdout):
        return HoldoutMetrics(
            0, 0, None, None, None, None, None, 0, labels, model_classes=tuple(model.classes)
        )
    scored = model.score(list(holdout.images), uris=[s.image_uri for s in holdout.shots])
    truth, predicted, failed = [], [], 0
    pixels = PixelScoreHistogram()
    n_masks = sum(
        m is not None and s.label != GOOD for s, m in zip(holdout.shots, holdout.masks, strict=True)
    )
    for shot, mask, result in zip(holdout.shots, holdout.masks, scored, strict=True):
        truth.append(shot.label)
        if not isinstance(result, ImageScores):
            failed += 1
            predicted.append("<failed>")
            continue
        predicted.append(model.classes[int(np.argmax(result.probs))])
        if n_masks and mask is not None:
            pixels.update(result.full_map(model.preprocess.databar), mask)
    cls = classification_metrics(truth, predicted, list(labels))
    return HoldoutMetrics(
        n_images=len(holdout),
        n_failed=failed,
        accuracy=cls["accuracy"],
        f1=cls["f1"],
        precision=cls["precision"],
        recall=cls["recall"],
        pixel_f1_max=pixels.f1_max()[0] if n_masks else None,
        n_masks=n_masks,
        labels=labels,
        per_class_f1={k: v["f1"] for k, v in cls["per_class"].items()},
        per_class_recall={k: v["recall"] for k, v in cls["per_class"].items()},
        truth=tuple(truth),
        predicted=tuple(predicted),
        model_classes=tuple(model.classes),
    )


def _metric_safe(label: str) -> str:
    """A class name as MLflow accepts it in a metric key (letters, digits, _ - . / space)."""
    return re.sub(r"[^\w\-. /]", "_", label)


def _maybe_float(value: Any) -> float | None:
    return None if value is None else float(value)
