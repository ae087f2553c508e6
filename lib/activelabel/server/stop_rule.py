"""When to stop labeling: a rule over signals that a real deployment has.

The signals per round are the agreement between the model's pre-segmentation and what the
expert submitted (mean Dice over the round's new labels), the validation Dice on labeled
data, and the mean uncertainty of the unlabeled pool.  Labeling stops paying once the
experts mostly confirm the model: either the volumes the strategy now picks (the ones it finds
hardest) are segmented about as well as the labeled validation volumes, or agreement is high
and neither it nor validation Dice still improves.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RoundSignals:
    """What the server knows after a round of labeling."""

    labeled: int
    agreement: float | None
    val_dice: float | None
    pool_uncertainty: float | None = None


@dataclass(frozen=True)
class StopDecision:
    """The rule's verdict and its reasoning."""

    stop: bool
    reason: str
    estimated_labels_needed: int | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class StopRule:
    """Stop when the model's picks have caught up with its validation Dice, or on a high plateau.

    Two ways to stop, both judged on the latest round of submissions:

    * caught up: agreement is at least ``floor`` and within ``max_gap`` of the validation Dice.
      Uncertainty strategies pick the volumes the model finds hardest, so their agreement sits
      below validation Dice until the model has no weak spots left; an absolute agreement
      threshold never fires where the achievable Dice is itself below it.
    * plateau: agreement is at least ``min_agreement`` and neither agreement nor validation
      Dice improved by ``min_gain`` over the last ``patience`` rounds.

    Attributes:
        min_agreement: agreement (Dice of pre-segmentation vs submission) needed for a plateau stop.
        min_gain: a signal whose improvement per round is below this has plateaued.
        patience: consecutive plateaued rounds required.
        max_gap: validation Dice minus agreement at or below which the picks have caught up.
        floor: agreement below which the rule never stops, however small the gap.
    """

    min_agreement: float = 0.8
    min_gain: float = 0.01
    patience: int = 1
    max_gap: float = 0.05
    floor: float = 0.7

    def evaluate(self, history: Sequence[RoundSignals], *, per_round: int) -> StopDecision:
        """Decide from the signals of every round so far (oldest first)."""
        rounds = [r for r in history if r.agreement is not None]
        if len(rounds) < self.patience + 1:
            return StopDecision(False, f"need {self.patience + 1} rounds of submissions to judge a plateau", None)
        agreement = rounds[-1].agreement or 0.0
        gains = [_gain(a.agreement, b.agreement) for a, b in itertools.pairwise(rounds)]
        val_gains = [_gain(a.val_dice, b.val_dice) for a, b in itertools.pairwise(rounds)]
        recent, recent_val = gains[-self.patience :], val_gains[-self.patience :]
        plateau = all(g < self.min_gain for g in recent) and all(g < self.min_gain for g in recent_val)
        val_dice = rounds[-1].val_dice
        if val_dice is not None and agreement >= self.floor and val_dice - agreement <= self.max_gap:
            return StopDecision(
                True,
                f"agreement {agreement:.3f} is within {self.max_gap} of validation Dice {val_dice:.3f}: "
                "the volumes the model finds hardest are segmented about as well as the labeled ones",
                0,
            )
        if agreement >= self.min_agreement and plateau:
            return StopDecision(
                True,
                f"agreement {agreement:.3f} >= {self.min_agreement} and neither agreement nor validation Dice "
                f"improved by {self.min_gain} over the last {self.patience} round(s)",
                0,
            )
        needed = _labels_until_plateau(gains, min_gain=self.min_gain, per_round=per_round)
        if agreement < self.min_agreement:
            gap = "" if val_dice is None else f" and {val_dice - agreement:.3f} below validation Dice"
            reason = f"agreement {agreement:.3f} is below {self.min_agreement}{gap}"
        else:
            reason = f"agreement still improves by {gains[-1]:.3f} per round"
        return StopDecision(False, reason, needed)


def _gain(before: float | None, after: float | None) -> float:
    if before is None or after is None:
        return 0.0
    return after - before


def _labels_until_plateau(gains: Sequence[float], *, min_gain: float, per_round: int) -> int | None:
    """Labels until the per-round gain drops below ``min_gain``, if gains shrink geometrically."""
    positive = [g for g in gains if g > 0]
    if not positive:
        return per_round  # no measurable progress yet: one more round tells more
    last = positive[-1]
    if last < min_gain:
        return per_round
    ratio = positive[-1] / positive[-2] if len(positive) >= 2 and positive[-2] > 0 else 0.5
    ratio = min(max(ratio, 0.05), 0.95)
    rounds = math.ceil(math.log(min_gain / last) / math.log(ratio))
    return max(1, rounds) * per_round


def signals_from_submissions(
    submissions: Sequence[tuple[float | None, float | None]], *, window: int
) -> list[RoundSignals]:
    """Group ``(agreement, val_dice)`` of consecutive submissions into rounds of ``window``.

    Submissions without an agreement (no pre-segmentation was stored) are left out; an
    incomplete last window is not a round yet.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    scored = [(a, v) for a, v in submissions if a is not None]
    rounds = []
    for end in range(window, len(scored) + 1, window):
        chunk = scored[end - window : end]
        rounds.append(
            RoundSignals(
                labeled=end,
                agreement=float(sum(a for a, _ in chunk) / window),  # type: ignore[misc]
                val_dice=chunk[-1][1],
            )
        )
    return rounds


def replay(rule: StopRule, history: Sequence[RoundSignals], *, per_round: int) -> int | None:
    """Index of the first round of ``history`` at which ``rule`` stops, or ``None``."""
    return next(
        (i for i in range(len(history)) if rule.evaluate(history[: i + 1], per_round=per_round).stop),
        None,
    )
