"""The ``audit`` strategy: an accepted auto-label that no reviewer has judged yet, least trusted first."""

from __future__ import annotations

import random
from enum import Enum
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from activelabel.scoring.triage import auto_label_triage
from activelabel.store.audit import AuditLog, auto_version, awaiting_audit
from activelabel.store.label_versions import AUTO_TAG
from activelabel.store.validation import InputRejected
from activelabel.strategies.random_sample import pick_random


class AuditOrder(str, Enum):
    """Which awaiting auto-label an auditor gets next."""

    LEAST_TRUSTED = "least_trusted"
    """Lowest predicted quality first: the auto-labels most likely to fail are checked first."""
    RANDOM = "random"
    """Uniformly random: the acceptance rate of the audited sample estimates that of all accepted labels."""


class AuditSample(Strategy):
    """An auto-labeled volume that triage accepted and no audit has judged yet.

    Auto-labels that triage sent back (predicted quality below the model's calibrated
    threshold) are not offered: those volumes stay in the labeling pool.  Auto-labels of
    unknown quality (made before triage was recorded) rank as the least trusted.  Leases apply
    as for every strategy (the app wraps the datastore).

    Request keys (optional): ``order`` (``least_trusted``, the default, or ``random``), and
    ``seed`` for a reproducible random pick.

    Args:
        audits: the audit log (verdicts so far).
    """

    def __init__(self, *, audits: AuditLog) -> None:
        super().__init__("Accepted auto-label awaiting audit, least trusted first (accept, reject or correct it)")
        self.audits = audits
        self._rng = random.Random()

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        order = _order(request.get("order", AuditOrder.LEAST_TRUSTED.value))
        waiting = awaiting_audit(datastore, self.audits, datastore.get_unlabeled_images())
        triage = {image_id: auto_label_triage(datastore, image_id, tag=AUTO_TAG) for image_id in waiting}
        candidates = [image_id for image_id in waiting if triage[image_id].accepted]
        if order is AuditOrder.RANDOM:
            rng = random.Random(request["seed"]) if "seed" in request else self._rng
            image_id = pick_random(candidates, rng=rng)
        else:
            ranked = sorted(candidates, key=lambda i: (triage[i].quality if triage[i].quality is not None else -1.0, i))
            image_id = ranked[0] if ranked else None
        if image_id is None:
            return None
        return {
            "id": image_id,
            "strategy": "audit",
            "label_tag": AUTO_TAG,
            "auto_version": auto_version(datastore, image_id),
            "quality": triage[image_id].quality,
            "order": order.value,
            "awaiting_audit": len(candidates),
        }


def _order(value: Any) -> AuditOrder:
    try:
        return AuditOrder(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(o.value for o in AuditOrder)
        raise InputRejected(f"order must be one of {choices}, got {value!r}") from None
