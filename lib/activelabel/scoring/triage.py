"""Triage of auto-labels by predicted quality, and the expert effort it leaves.

Every auto-label carries a quality estimate that needs no truth (the mean pairwise Dice of its
MC-dropout samples, :func:`activelabel.ml.uncertainty.sample_agreement`).  A threshold
calibrated on volumes whose truth is known (the last training's validation volumes) decides
which auto-labels are accepted (and audited) and which go back to the labeling pool.  The
server's trainer, the simulator and the benchmark share these functions; apart from
:func:`quality_and_dice` they are plain arithmetic over ``(quality, true Dice)`` pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn

from activelabel.ml.inference import mc_dropout_samples
from activelabel.ml.metrics import dice_per_label, mean_dice

Pair = tuple[float, float]
"""(predicted quality, true Dice) of one auto-label."""

NOTHING_ACCEPTED = 1.01
"""A threshold above every quality (which lie in [0, 1]): no auto-label is accepted."""


DICE_THRESHOLD = 0.8
"""An auto-label passes its audit when its Dice against the truth is at least this."""

TARGET_ACCURACY = 0.95
"""Share of accepted auto-labels that should pass their audit (the published target)."""


def quality_and_dice(
    network: nn.Module,
    volume: Mapping[str, Any],
    *,
    inferer: Inferer,
    samples: int,
    channels: Mapping[str, int],
) -> Pair:
    """(predicted quality, true Dice) of the auto-label of one pre-processed labeled volume.

    The quality is the mean pairwise Dice of ``samples`` (at least 2) MC-dropout samples, the
    auto-label the samples' mean prediction, its Dice the mean over ``channels`` (label name ->
    channel index) against ``volume["label"]``.
    """
    with torch.inference_mode():
        accumulator, _ = mc_dropout_samples(network, volume["image"], inferer, samples=max(2, samples))
    prediction = accumulator.mean_probs().argmax(dim=0).numpy()
    truth = np.asarray(volume["label"][0])
    return accumulator.sample_agreement(), mean_dice(dice_per_label(prediction, truth, channels).values())


@dataclass(frozen=True)
class Calibration:
    """The quality threshold of one model, from volumes whose truth is known.

    Attributes:
        threshold: auto-labels with quality at or above it are accepted; the rest go back to the pool.
        expected_accuracy: share of the calibration volumes at or above the threshold that
            pass the audit (``None`` when none is).
        volumes: calibration volumes.
        dice_threshold: the audit's pass mark.
        accuracy: the target the threshold was chosen for.
    """

    threshold: float
    expected_accuracy: float | None
    volumes: int
    dice_threshold: float
    accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(pairs: Sequence[Pair], *, dice_threshold: float, accuracy: float) -> Calibration:
    """The :func:`quality_threshold` of ``pairs`` and the accuracy it gives on them."""
    threshold = quality_threshold(pairs, dice_threshold=dice_threshold, accuracy=accuracy)
    kept = [dice for quality, dice in pairs if quality >= threshold]
    expected = sum(d >= dice_threshold for d in kept) / len(kept) if kept else None
    return Calibration(threshold, expected, len(pairs), dice_threshold, accuracy)


class Triage(str, Enum):
    """What triage decided for one auto-label."""

    ACCEPTED = "accepted"
    """Quality at or above the calibrated threshold: counts as automated, awaits its audit."""
    SENT_BACK = "sent_back"
    """Quality below the threshold: the volume stays in the labeling pool for an expert."""
    UNCALIBRATED = "uncalibrated"
    """The model had no validation volumes to calibrate on: accepted, as before triage existed."""


@dataclass(frozen=True)
class TriageDecision:
    """The triage of one auto-label and the calibration behind it."""

    triage: Triage
    quality_threshold: float | None
    expected_accuracy: float | None

    @property
    def accepted(self) -> bool:
        return self.triage is not Triage.SENT_BACK

    def to_dict(self) -> dict[str, Any]:
        return {
            "triage": self.triage.value,
            "quality_threshold": self.quality_threshold,
            "expected_accuracy": self.expected_accuracy,
        }


def triage_decision(quality: float | None, calibration: Mapping[str, Any] | None) -> TriageDecision:
    """Accept an auto-label of ``quality`` when it reaches the ``calibration``'s threshold.

    A label of unknown quality is sent back when there is a calibration; without one every
    label is accepted (:attr:`Triage.UNCALIBRATED`).
    """
    if not calibration:
        return TriageDecision(Triage.UNCALIBRATED, None, None)
    threshold = float(calibration["threshold"])
    accepted = quality is not None and quality >= threshold
    return TriageDecision(
        Triage.ACCEPTED if accepted else Triage.SENT_BACK, threshold, calibration.get("expected_accuracy")
    )


@dataclass(frozen=True)
class AutoLabelTriage:
    """What the live auto-label of a volume carries: its quality and triage (``None`` when unrecorded)."""

    quality: float | None
    triage: Triage | None

    @property
    def accepted(self) -> bool:
        """Counts as automated: accepted, uncalibrated, or made before triage was recorded."""
        return self.triage is not Triage.SENT_BACK


def auto_label_triage(datastore: Any, image_id: str, *, tag: str) -> AutoLabelTriage:
    """The triage the infer task recorded in the params of ``image_id``'s ``tag`` label."""
    params = (datastore.get_label_info(image_id, tag) or {}).get("params") or {}
    if not isinstance(params, Mapping):
        return AutoLabelTriage(None, None)
    quality = params.get("quality")
    try:
        triage = Triage(params["triage"]) if "triage" in params else None
    except ValueError:
        triage = None
    return AutoLabelTriage(float(quality) if isinstance(quality, (int, float)) else None, triage)


def quality_threshold(calibration: Sequence[Pair], *, dice_threshold: float, accuracy: float) -> float:
    """The lowest quality whose auto-labels at or above it reach ``accuracy`` on ``calibration``.

    The calibration volumes are ranked by quality; the threshold is the quality of the
    deepest rank whose top-ranked share with Dice >= ``dice_threshold`` is still at least
    ``accuracy``.  :data:`NOTHING_ACCEPTED` when no rank qualifies or there is no calibration;
    0 (accept all) for an ``accuracy`` of 0.
    """
    if accuracy <= 0:
        return 0.0  # triage off: every auto-label is accepted
    ranked = sorted(calibration, key=lambda pair: -pair[0])
    threshold = NOTHING_ACCEPTED
    passed = 0
    for count, (quality, dice) in enumerate(ranked, start=1):
        passed += dice >= dice_threshold
        if passed / count >= accuracy:
            threshold = quality
    return float(threshold)


def triage_outcome(
    scored: Mapping[str, Pair], *, threshold: float, dice_threshold: float, labeled: int
) -> dict[str, Any]:
    """What triage at ``threshold`` does to the auto-labels ``scored`` (volume id -> pair).

    Accepted auto-labels are audited; those below ``dice_threshold`` fail the audit and are
    labeled by hand, like those below the threshold, which go straight back to the pool.
    """
    accepted = [dice for quality, dice in scored.values() if quality >= threshold]
    failed = sum(dice < dice_threshold for dice in accepted)
    pool = labeled + len(scored)
    return {
        "threshold": threshold,
        "auto_accepted": len(accepted),
        "sent_back": len(scored) - len(accepted),
        "failed_audit": int(failed),
        "automation": len(accepted) / pool if pool else 0.0,
        "accuracy": (len(accepted) - failed) / len(accepted) if accepted else None,
    }


def automation_accuracy_curve(pairs: Sequence[Pair], *, dice_threshold: float, labeled: int) -> list[dict[str, float]]:
    """Automation against audited accuracy when the best-ranked ``k`` auto-labels are accepted.

    One point per ``k`` (1 .. all), ranked by quality: automation is ``k`` over the pool
    (``labeled`` plus the auto-labeled), accuracy the share of the ``k`` with Dice >=
    ``dice_threshold``.
    """
    ranked = sorted(pairs, key=lambda pair: -pair[0])
    pool = labeled + len(ranked)
    curve: list[dict[str, float]] = []
    passed = 0
    for count, (quality, dice) in enumerate(ranked, start=1):
        passed += dice >= dice_threshold
        curve.append({"automation": count / pool, "accuracy": passed / count, "quality": float(quality)})
    return curve


def curve_automation_at(curve: Sequence[Mapping[str, float]], accuracy: float) -> float:
    """The largest automation on ``curve`` whose accuracy is at least ``accuracy`` (0 if none)."""
    return max((point["automation"] for point in curve if point["accuracy"] >= accuracy), default=0.0)


def rank_correlation(pairs: Sequence[Pair]) -> float | None:
    """Spearman correlation of predicted quality and true Dice (``None`` under 3 pairs or no spread)."""
    if len(pairs) < 3:
        return None
    quality = np.array([p[0] for p in pairs], dtype=np.float64)
    dice = np.array([p[1] for p in pairs], dtype=np.float64)
    if np.ptp(quality) == 0 or np.ptp(dice) == 0:
        return None
    from scipy import stats

    return float(stats.spearmanr(quality, dice).statistic)


def expert_effort(
    *, labeled: int, audited: int, pool: int, label_minutes: float, audit_seconds: float
) -> dict[str, float]:
    """Expert minutes spent against labeling the whole pool by hand.

    Args:
        labeled: volumes labeled by hand (chosen by the strategy, sent back by triage, or
            re-labeled after a failed audit).
        audited: auto-labels an expert audited.
        pool: volumes in the pool.
        label_minutes: minutes per hand label.
        audit_seconds: seconds per audit.
    """
    minutes = labeled * label_minutes + audited * audit_seconds / 60.0
    manual = pool * label_minutes
    return {
        "minutes": minutes,
        "manual_minutes": manual,
        "effort_fraction": minutes / manual if manual else 0.0,
        "effort_saved": 1.0 - minutes / manual if manual else 0.0,
        "labeled": labeled,
        "audited": audited,
        "label_minutes": label_minutes,
        "audit_seconds": audit_seconds,
    }
