"""The ``most_uncertain`` strategy: the unlabeled volume with the highest stored score."""

from __future__ import annotations

import random
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from activelabel.ml.uncertainty import UncertaintyMetric
from activelabel.store.leases import unlabeled_check
from activelabel.store.scores import ScoreStore
from activelabel.strategies.random_sample import pick_random


class MostUncertain(Strategy):
    """Highest epistemic uncertainty among unlabeled images.

    Stale scores (from an older model) still rank: they are the best estimate until the
    scorer catches up.  Unlabeled images without any score are served at random only when
    no unlabeled image has a score, and the answer says so.  The pick walks the score
    index from the top, so its cost does not grow with the pool; ``ranked`` in the answer
    is the number of scored images.

    Request keys (optional): ``metric`` — ``entropy``, ``mutual_information`` or ``variance``.

    Args:
        scores: the score store written by the ``epistemic`` scoring method.
        metric: the default metric.
    """

    def __init__(self, *, scores: ScoreStore, metric: UncertaintyMetric) -> None:
        super().__init__(f"Highest epistemic uncertainty among unlabeled volumes (default metric: {metric.value})")
        self.scores = scores
        self.metric = metric
        self._rng = random.Random()

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["metric"] = self.metric.value
        info["metrics"] = [m.value for m in UncertaintyMetric]
        return info

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        try:
            metric = UncertaintyMetric(request.get("metric", self.metric))
        except ValueError:
            choices = ", ".join(m.value for m in UncertaintyMetric)
            raise ValueError(f"unknown metric {request.get('metric')!r}; choose one of: {choices}") from None
        top = self.scores.top(metric, accept=unlabeled_check(datastore))
        if top is None:
            image_id = pick_random(datastore.get_unlabeled_images(), rng=self._rng)
            if image_id is None:
                return None
            return {
                "id": image_id,
                "strategy": "most_uncertain",
                "metric": metric.value,
                "score": None,
                "fallback": "random (no unlabeled image has been scored yet)",
            }
        return {
            "id": top.image_id,
            "strategy": "most_uncertain",
            "metric": metric.value,
            "score": top.uncertainty.score(metric),
            "rank": 1,
            "ranked": self.scores.count(),
            "model_version": top.model_version,
        }
