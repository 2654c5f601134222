"""Log loss and accuracy as DCASE 2021 Task 1a reports them (numpy only).

The overall values are macro averages: the mean over classes of the class-wise log loss (mean
of -ln p(true class) over that class's clips) and of the class-wise accuracy (recall). The
micro log loss (mean over all clips, what ``sklearn.metrics.log_loss`` computes) is given too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from asc_deploy.labels import NUM_CLASSES

PROB_FLOOR = 1e-15  # probabilities are clipped to [PROB_FLOOR, 1] so that a 0 gives a finite loss


def classwise_log_loss_accuracy(probs: np.ndarray, labels: np.ndarray, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """Scores of predicted class probabilities ``probs`` (clips, num_classes) against class
    indices ``labels`` (clips,).

    Returns a dict of plain Python values: ``logloss`` and ``accuracy`` (means of the
    class-wise values over the classes present), ``micro_logloss`` and ``micro_accuracy``
    (means over clips), ``class_logloss`` and ``class_accuracy`` (lists of num_classes floats,
    NaN for a class without clips), ``class_count`` (clips per class) and ``count``.
    Accuracies are fractions in [0, 1]; log losses are in nats.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[1] != num_classes or labels.shape != (probs.shape[0],):
        raise ValueError(f"expected probs (clips, {num_classes}) and labels (clips,), got {probs.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be class indices in [0, {num_classes})")
    losses = -np.log(np.clip(probs[np.arange(len(labels)), labels], PROB_FLOOR, 1.0))
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    count = np.bincount(labels, minlength=num_classes)
    present = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        class_logloss = np.bincount(labels, weights=losses, minlength=num_classes) / count
        class_accuracy = np.bincount(labels, weights=correct, minlength=num_classes) / count
    return {
        "logloss": float(class_logloss[present].mean()) if present.any() else float("nan"),
        "accuracy": float(class_accuracy[present].mean()) if present.any() else float("nan"),
        "micro_logloss": float(losses.mean()) if labels.size else float("nan"),
        "micro_accuracy": float(correct.mean()) if labels.size else float("nan"),
        "class_logloss": class_logloss.tolist(),
        "class_accuracy": class_accuracy.tolist(),
        "class_count": count.tolist(),
        "count": int(labels.size),
    }


def groupwise(probs: np.ndarray, labels: np.ndarray, groups: Sequence[Any], num_classes: int = NUM_CLASSES) -> dict[Any, dict[str, Any]]:
    """:func:`classwise_log_loss_accuracy` per group (e.g. recording device), groups sorted.

    ``groups`` (clips,) holds each clip's group; every group is scored on its own clips.
    """
    groups = np.asarray(groups, dtype=object)
    probs, labels = np.asarray(probs), np.asarray(labels)
    return {
        group: classwise_log_loss_accuracy(probs[groups == group], labels[groups == group], num_classes)
        for group in sorted(set(groups.tolist()), key=str)
    }


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Calibration of the top-1 confidence: expected calibration error and the per-bin table.

    Clips are binned by their highest probability into ``bins`` equal-width bins over [0, 1];
    ``ece`` is the clip-weighted mean of |accuracy - mean confidence| over bins. Returns ``ece``
    and per bin ``bin_confidence``, ``bin_accuracy`` (NaN for empty bins) and ``bin_count``.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        bin_accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(bin_accuracy[filled] - bin_confidence[filled])) / max(1, labels.size))
    return {"ece": ece, "bin_confidence": bin_confidence.tolist(), "bin_accuracy": bin_accuracy.tolist(), "bin_count": count.tolist()}
