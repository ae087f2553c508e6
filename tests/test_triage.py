"""Triage of auto-labels by predicted quality: threshold, outcome, curve and effort."""

from __future__ import annotations

import pytest
import torch

from activelabel.ml.uncertainty import SampleAccumulator, volume_uncertainty
from activelabel.scoring.triage import (
    NOTHING_ACCEPTED,
    Triage,
    auto_label_triage,
    automation_accuracy_curve,
    calibrate,
    curve_automation_at,
    expert_effort,
    quality_threshold,
    rank_correlation,
    triage_decision,
    triage_outcome,
)

# (quality, true Dice): the two least trusted auto-labels are the two bad ones.
PAIRS = [(0.95, 0.9), (0.9, 0.85), (0.85, 0.82), (0.6, 0.5), (0.4, 0.3)]


def test_threshold_is_the_lowest_quality_that_keeps_the_target_accuracy() -> None:
    assert quality_threshold(PAIRS, dice_threshold=0.8, accuracy=0.95) == 0.85
    assert quality_threshold(PAIRS, dice_threshold=0.8, accuracy=0.7) == 0.6  # top 4: 3 pass (0.75)
    assert quality_threshold(PAIRS, dice_threshold=0.8, accuracy=0.6) == 0.4  # all 5: 3 pass (0.6)
    assert quality_threshold([(0.9, 0.1)], dice_threshold=0.8, accuracy=0.95) == NOTHING_ACCEPTED
    assert quality_threshold([], dice_threshold=0.8, accuracy=0.95) == NOTHING_ACCEPTED


def test_triage_accepts_the_trusted_sends_back_the_rest_and_counts_failed_audits() -> None:
    scored = {f"v{i}": pair for i, pair in enumerate(PAIRS)}
    outcome = triage_outcome(scored, threshold=0.6, dice_threshold=0.8, labeled=5)
    assert (outcome["auto_accepted"], outcome["sent_back"], outcome["failed_audit"]) == (4, 1, 1)
    assert outcome["automation"] == pytest.approx(4 / 10)
    assert outcome["accuracy"] == pytest.approx(3 / 4)
    assert triage_outcome(scored, threshold=NOTHING_ACCEPTED, dice_threshold=0.8, labeled=5)["accuracy"] is None


def test_curve_ranks_by_quality_and_reads_automation_at_an_accuracy() -> None:
    curve = automation_accuracy_curve(PAIRS, dice_threshold=0.8, labeled=5)
    assert [round(p["accuracy"], 3) for p in curve] == [1.0, 1.0, 1.0, 0.75, 0.6]
    assert curve_automation_at(curve, 0.95) == pytest.approx(3 / 10)
    assert curve_automation_at(curve, 0.7) == pytest.approx(4 / 10)
    assert curve_automation_at([], 0.9) == 0.0


def test_rank_correlation_of_a_perfect_ranking_is_one_and_undefined_without_spread() -> None:
    assert rank_correlation(PAIRS) == pytest.approx(1.0)
    assert rank_correlation(PAIRS[:2]) is None
    assert rank_correlation([(0.5, 0.1), (0.5, 0.2), (0.5, 0.3)]) is None


def test_effort_counts_hand_labels_and_audits_against_labeling_everything() -> None:
    effort = expert_effort(labeled=10, audited=90, pool=100, label_minutes=20, audit_seconds=30)
    assert effort["minutes"] == pytest.approx(10 * 20 + 90 * 0.5)
    assert effort["effort_saved"] == pytest.approx(1 - 245 / 2000)


def test_sample_agreement_is_one_for_identical_samples_and_drops_when_they_disagree() -> None:
    accumulator = SampleAccumulator()
    logits = torch.zeros(3, 4, 4, 4)
    logits[1, :2] = 5.0
    accumulator.add(torch.softmax(logits, dim=0))
    accumulator.add(torch.softmax(logits, dim=0))
    assert accumulator.sample_agreement() == 1.0
    other = torch.zeros(3, 4, 4, 4)
    other[1, 1:3] = 5.0
    accumulator.add(torch.softmax(other, dim=0))
    # Pairs: (a, a) Dice 1; (a, other) twice: class 1 overlaps half (Dice 0.5), class 2 empty (1.0).
    assert accumulator.sample_agreement() == pytest.approx((1.0 + 0.75 + 0.75) / 3)


def test_calibration_reports_the_threshold_and_the_accuracy_it_gives() -> None:
    calibration = calibrate(PAIRS, dice_threshold=0.8, accuracy=0.95)
    assert (calibration.threshold, calibration.expected_accuracy, calibration.volumes) == (0.85, 1.0, 5)
    assert calibrate(PAIRS, dice_threshold=0.8, accuracy=0.0).threshold == 0.0  # triage off: accept all
    assert calibrate([], dice_threshold=0.8, accuracy=0.95).expected_accuracy is None


def test_triage_decision_sends_back_below_the_threshold_and_accepts_without_calibration() -> None:
    calibration = calibrate(PAIRS, dice_threshold=0.8, accuracy=0.95).to_dict()
    assert triage_decision(0.9, calibration).triage is Triage.ACCEPTED
    assert triage_decision(0.85, calibration).accepted
    assert triage_decision(0.84, calibration).triage is Triage.SENT_BACK
    assert triage_decision(None, calibration).triage is Triage.SENT_BACK  # unknown quality is not trusted
    uncalibrated = triage_decision(0.1, None)
    assert (uncalibrated.triage, uncalibrated.accepted, uncalibrated.quality_threshold) == (
        Triage.UNCALIBRATED,
        True,
        None,
    )


class _Labels:
    """The one datastore call :func:`auto_label_triage` makes."""

    def __init__(self, info: dict) -> None:
        self.info = info

    def get_label_info(self, image_id: str, tag: str) -> dict:
        return self.info.get(image_id, {})


def test_auto_label_triage_reads_what_the_infer_task_recorded() -> None:
    datastore = _Labels(
        {
            "a": {"params": {"quality": 0.91, "triage": "accepted"}},
            "b": {"params": {"quality": 0.42, "triage": "sent_back"}},
            "c": {"params": {"model_version": 1}},
            "d": {"params": {"quality": "x", "triage": "bogus"}},
        }
    )
    a, b, c, d = (auto_label_triage(datastore, image_id, tag="auto") for image_id in "abcd")
    assert (a.quality, a.triage, a.accepted) == (0.91, Triage.ACCEPTED, True)
    assert (b.quality, b.triage, b.accepted) == (0.42, Triage.SENT_BACK, False)
    assert (c.quality, c.triage, c.accepted) == (None, None, True)  # made before triage was recorded
    assert (d.quality, d.triage) == (None, None)


def test_scores_carry_the_sample_agreement_of_the_stacked_and_the_running_samples() -> None:
    first, second = torch.zeros(3, 4, 4, 4), torch.zeros(3, 4, 4, 4)
    first[1, :2], second[1, 1:3] = 5.0, 5.0
    probs = torch.stack([torch.softmax(first, dim=0), torch.softmax(second, dim=0)])
    accumulator = SampleAccumulator()
    for sample in probs:
        accumulator.add(sample)
    assert volume_uncertainty(probs).agreement == pytest.approx(0.75)
    assert accumulator.result().agreement == pytest.approx(0.75)
