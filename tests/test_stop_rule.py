"""The stop rule on signal histories with known answers."""

from __future__ import annotations

from activelabel.server.stop_rule import RoundSignals, StopRule, replay


def _history(agreements: list[float], val: list[float]) -> list[RoundSignals]:
    return [
        RoundSignals(labeled=5 * (i + 1), agreement=a, val_dice=v)
        for i, (a, v) in enumerate(zip(agreements, val, strict=True))
    ]


def test_plateau_at_high_agreement_stops() -> None:
    decision = StopRule().evaluate(_history([0.70, 0.85, 0.855], [0.70, 0.84, 0.845]), per_round=5)
    assert decision.stop
    assert decision.estimated_labels_needed == 0
    assert "agreement 0.855" in decision.reason


def test_plateau_at_low_agreement_does_not_stop() -> None:
    decision = StopRule().evaluate(_history([0.50, 0.51, 0.512], [0.5, 0.5, 0.5]), per_round=5)
    assert not decision.stop
    assert "below 0.8" in decision.reason


def test_still_improving_does_not_stop_and_estimates_labels() -> None:
    decision = StopRule().evaluate(_history([0.60, 0.80, 0.88], [0.7, 0.9, 0.95]), per_round=5)
    assert not decision.stop
    assert decision.estimated_labels_needed is not None
    assert decision.estimated_labels_needed >= 5
    assert decision.estimated_labels_needed % 5 == 0


def test_validation_dice_still_rising_prevents_a_stop() -> None:
    decision = StopRule().evaluate(_history([0.85, 0.86, 0.86], [0.75, 0.85, 0.95]), per_round=5)
    assert not decision.stop


def test_too_few_rounds_give_no_verdict() -> None:
    decision = StopRule().evaluate(_history([0.9], [0.9]), per_round=5)
    assert not decision.stop
    assert decision.estimated_labels_needed is None


def test_agreement_caught_up_with_validation_dice_stops_below_the_plateau_threshold() -> None:
    decision = StopRule().evaluate(_history([0.66, 0.78], [0.82, 0.81]), per_round=5)
    assert decision.stop
    assert "within 0.05 of validation Dice 0.810" in decision.reason


def test_agreement_far_below_validation_dice_does_not_stop() -> None:
    decision = StopRule().evaluate(_history([0.66, 0.70], [0.82, 0.81]), per_round=5)
    assert not decision.stop
    assert "0.110 below validation Dice" in decision.reason


def test_small_gap_below_the_floor_does_not_stop() -> None:
    decision = StopRule().evaluate(_history([0.40, 0.62], [0.60, 0.64]), per_round=5)
    assert not decision.stop


def test_replay_finds_the_first_stopping_round() -> None:
    history = [RoundSignals(labeled=5, agreement=None, val_dice=0.4), *_history([0.6, 0.7, 0.79, 0.8], [0.8] * 4)]
    assert replay(StopRule(), history, per_round=5) == 3
    assert replay(StopRule(max_gap=0.0), history, per_round=5) == 4  # gap 0 only in the last round
    assert replay(StopRule(max_gap=0.0, floor=0.9), history, per_round=5) is None
