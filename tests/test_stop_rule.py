"""The stop rule on signal histories with known answers."""

from __future__ import annotations

from activelabel.simulation.stop_rule import RoundSignals, StopRule


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
    decision = StopRule().evaluate(_history([0.60, 0.80, 0.88], [0.6, 0.8, 0.88]), per_round=5)
    assert not decision.stop
    assert decision.estimated_labels_needed is not None
    assert decision.estimated_labels_needed >= 5
    assert decision.estimated_labels_needed % 5 == 0


def test_validation_dice_still_rising_prevents_a_stop() -> None:
    decision = StopRule().evaluate(_history([0.85, 0.86, 0.86], [0.6, 0.7, 0.8]), per_round=5)
    assert not decision.stop


def test_too_few_rounds_give_no_verdict() -> None:
    decision = StopRule().evaluate(_history([0.9], [0.9]), per_round=5)
    assert not decision.stop
    assert decision.estimated_labels_needed is None
