"""Triage of auto-labels by predicted quality, and the expert effort it leaves.

Every auto-label carries a quality estimate that needs no truth (the mean pairwise Dice of its
MC-dropout samples, :meth:`activelabel.ml.uncertainty.SampleAccumulator.sample_agreement`).
A threshold calibrated on volumes whose truth is known decides which auto-labels are accepted
(and audited) and which go back to the labeling pool.  The functions here are plain
arithmetic over ``(quality, true Dice)`` pairs, so the simulator and the benchmark share them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Pair = tuple[float, float]
"""(predicted quality, true Dice) of one auto-label."""

NOTHING_ACCEPTED = 1.01
"""A threshold above every quality (which lie in [0, 1]): no auto-label is accepted."""


def quality_threshold(calibration: Sequence[Pair], *, dice_threshold: float, accuracy: float) -> float:
    """The lowest quality whose auto-labels at or above it reach ``accuracy`` on ``calibration``.

    The calibration volumes are ranked by quality; the threshold is the quality of the
    deepest rank whose top-ranked share with Dice >= ``dice_threshold`` is still at least
    ``accuracy``.  :data:`NOTHING_ACCEPTED` when no rank qualifies or there is no calibration.
    """
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
