"""Overlap metrics between label maps (plain NumPy, any number of dimensions)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from activelabel.labelmap import NOT_ANNOTATED


def dice(prediction: np.ndarray, truth: np.ndarray, value: int) -> float:
    """Dice coefficient of one label value; 1.0 when both maps lack the label.

    Voxels the truth leaves :data:`~activelabel.labelmap.NOT_ANNOTATED` (a partial label) are
    left out of both maps.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape} vs truth {truth.shape}")
    truth = np.asarray(truth)
    annotated = truth != NOT_ANNOTATED
    pred = (np.asarray(prediction) == value) & annotated
    true = truth == value
    total = int(pred.sum()) + int(true.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, true).sum()) / total


def dice_per_label(prediction: np.ndarray, truth: np.ndarray, labels: dict[str, int]) -> dict[str, float]:
    """Dice of every named label value."""
    return {name: dice(prediction, truth, value) for name, value in labels.items()}


def mean_dice(scores: Iterable[float]) -> float:
    """Mean of per-label Dice scores (NaN when there are none)."""
    values = list(scores)
    return float(np.mean(values)) if values else float("nan")


def agreement(prediction: np.ndarray, submitted: np.ndarray, labels: dict[str, int]) -> float:
    """Mean Dice between a model's pre-segmentation and the label a clinician submitted."""
    return mean_dice(dice_per_label(prediction, submitted, labels).values())
