"""The ``foreground_random`` strategy: random volumes, drawn toward those with more foreground.

nnActive's Foreground Aware Random baseline (Lüth et al., 2025) draws each query from one of
three areas chosen at random: anywhere in the image, on the foreground, or on its border, so
two queries in three land on the structures to segment.  Recent medical active-learning studies
find it the baseline hardest to beat.  At the level of whole volumes the same split reads: with
probability ``uniform_share`` (1/3) a uniformly random unlabeled volume, otherwise one drawn with
probability proportional to its foreground size.

nnActive reads the foreground from the ground truth; the server has only the model's prediction
(the stored score's ``foreground_fraction``, a volume without a score weighing as the mean of
the scored ones), while the simulator passes the truth as nnActive does.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from activelabel.store.scores import ScoreStore

UNIFORM_SHARE = 1.0 / 3.0
"""nnActive's share of queries drawn anywhere (one of its three areas)."""


def pick_foreground_random(
    candidates: Sequence[str],
    foreground: Mapping[str, float],
    *,
    rng: random.Random,
    uniform_share: float = UNIFORM_SHARE,
) -> str | None:
    """One of ``candidates``: uniform with probability ``uniform_share``, else weighted by foreground.

    Args:
        candidates: unlabeled volume ids.
        foreground: id -> foreground size (voxels or a fraction; only ratios matter).  Ids
            missing here weigh as the mean of the known ones.
        rng: the random source (seeded for reproducible picks).
        uniform_share: probability of a uniform draw, in [0, 1].

    Returns:
        The picked id, or ``None`` when there are no candidates.
    """
    if not 0.0 <= uniform_share <= 1.0:
        raise ValueError(f"uniform_share must be in [0, 1], got {uniform_share}")
    ordered = sorted(candidates)
    if not ordered:
        return None
    uniform = rng.random() < uniform_share
    known = [max(0.0, float(foreground[c])) for c in ordered if c in foreground]
    fallback = sum(known) / len(known) if known else 1.0
    weights = [max(0.0, float(foreground.get(c, fallback))) for c in ordered]
    if uniform or sum(weights) <= 0.0:
        return rng.choice(ordered)
    return rng.choices(ordered, weights=weights, k=1)[0]


class ForegroundRandom(Strategy):
    """Foreground-aware random choice among unlabeled images (the strong baseline).

    Request keys (optional): ``seed`` for a reproducible pick.

    Args:
        scores: the score store whose latest ``foreground_fraction`` per image is its weight
            (the model's predicted foreground); used when ``foreground`` is not given.
        foreground: fixed id -> foreground size (the simulator passes the truth's).
        uniform_share: probability of a uniform draw instead of a weighted one.
    """

    def __init__(
        self,
        *,
        scores: ScoreStore | None = None,
        foreground: Mapping[str, float] | None = None,
        uniform_share: float = UNIFORM_SHARE,
    ) -> None:
        super().__init__("Random unlabeled volume, two draws in three weighted by foreground size (nnActive)")
        if scores is None and foreground is None:
            raise ValueError("ForegroundRandom needs a score store or a foreground map")
        self.scores = scores
        self.foreground = dict(foreground) if foreground is not None else None
        self.uniform_share = uniform_share
        self._rng = random.Random()

    def _foreground(self, candidates: Sequence[str]) -> dict[str, float]:
        if self.foreground is not None:
            return self.foreground
        assert self.scores is not None
        wanted = set(candidates)
        # One read of the store (linear in the pool, as for ``diverse``), not one query per candidate.
        return {i: s.uncertainty.foreground_fraction for i, s in self.scores.all().items() if i in wanted}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        rng = random.Random(request["seed"]) if "seed" in request else self._rng
        candidates = datastore.get_unlabeled_images()
        image_id = pick_foreground_random(
            candidates, self._foreground(candidates), rng=rng, uniform_share=self.uniform_share
        )
        if image_id is None:
            return None
        return {"id": image_id, "strategy": "foreground_random"}
