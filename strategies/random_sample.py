"""The ``random`` strategy: a uniformly random unlabeled volume (the baseline to beat)."""

from __future__ import annotations

import random
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy


def pick_random(candidates: list[str], *, rng: random.Random) -> str | None:
    """One of ``candidates`` chosen uniformly (``None`` when there are none)."""
    if not candidates:
        return None
    return rng.choice(sorted(candidates))


class RandomSample(Strategy):
    """Uniformly random choice among unlabeled images.

    Request keys (optional): ``seed`` for a reproducible pick.
    """

    def __init__(self) -> None:
        super().__init__("Uniformly random unlabeled volume")
        self._rng = random.Random()

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        rng = random.Random(request["seed"]) if "seed" in request else self._rng
        image_id = pick_random(datastore.get_unlabeled_images(), rng=rng)
        if image_id is None:
            return None
        return {"id": image_id, "strategy": "random"}
