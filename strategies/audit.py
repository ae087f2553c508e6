"""The ``audit`` strategy: an auto-labeled volume that no reviewer has judged yet."""

from __future__ import annotations

import random
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from activelabel.store.audit import AuditLog, auto_version, awaiting_audit
from activelabel.store.label_versions import AUTO_TAG
from activelabel.strategies.random_sample import pick_random


class AuditSample(Strategy):
    """A uniformly random unlabeled volume whose ``auto`` label has no audit verdict yet.

    Random, so that the acceptance rate of the audited sample estimates that of all
    auto labels.  Leases apply as for every strategy (the app wraps the datastore).

    Request keys (optional): ``seed`` for a reproducible pick.

    Args:
        audits: the audit log (verdicts so far).
    """

    def __init__(self, *, audits: AuditLog) -> None:
        super().__init__("Random auto-labeled volume awaiting audit (accept, reject or correct it)")
        self.audits = audits
        self._rng = random.Random()

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        rng = random.Random(request["seed"]) if "seed" in request else self._rng
        candidates = awaiting_audit(datastore, self.audits, datastore.get_unlabeled_images())
        image_id = pick_random(candidates, rng=rng)
        if image_id is None:
            return None
        return {
            "id": image_id,
            "strategy": "audit",
            "label_tag": AUTO_TAG,
            "auto_version": auto_version(datastore, image_id),
            "awaiting_audit": len(candidates),
        }
