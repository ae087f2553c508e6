"""After a new model: re-score the volumes clinicians will be served next, so their pre-segmentations are ready.

A new model version makes every stored pre-segmentation stale.  Scoring the whole pool again
takes a while; the volumes that matter first are the ones the ranking strategies serve next,
the top of the (previous model's) uncertainty ranking.  This refreshes that head of the
queue: at least ``minimum`` volumes and twice the number of clinicians holding a lease, so
every active clinician finds their next two volumes ready.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from activelabel.labelmap import LabelMap
from activelabel.ml.transforms import Preset
from activelabel.ml.uncertainty import UncertaintyMetric
from activelabel.scoring.scorer import ScoringOptions, ScoringReport, score_pool
from activelabel.store.leases import Lease
from activelabel.store.presegmentations import PresegmentationStore
from activelabel.store.scores import ScoreStore


def refresh_count(leases: Mapping[str, Lease], *, minimum: int) -> int:
    """How many candidates to refresh: ``minimum``, or two per clinician holding a lease if more."""
    clinicians = {lease.client_id for lease in leases.values()}
    return max(minimum, 2 * len(clinicians))


def next_candidates(
    unlabeled: Iterable[str], *, scores: ScoreStore, metric: UncertaintyMetric, leased: Iterable[str], count: int
) -> list[str]:
    """The ``count`` unleased unlabeled ids a ranking strategy serves first: ranked ones, then unscored ones."""
    taken = set(leased)
    free = [image_id for image_id in unlabeled if image_id not in taken]
    ranked = [score.image_id for score in scores.ranked(free, metric)]
    seen = set(ranked)
    return (ranked + sorted(image_id for image_id in free if image_id not in seen))[:count]


def refresh_top_candidates(
    images: Mapping[str, str],
    *,
    network: nn.Module,
    model_version: int,
    preset: Preset,
    labels: LabelMap,
    scores: ScoreStore,
    presegmentations: PresegmentationStore,
    options: ScoringOptions,
    metric: UncertaintyMetric,
    leases: Mapping[str, Lease],
    minimum: int,
) -> ScoringReport:
    """Score (with pre-segmentations) the head of the ranking among ``images`` (unlabeled id -> path)."""
    count = refresh_count(leases, minimum=minimum)
    todo = next_candidates(images, scores=scores, metric=metric, leased=leases, count=count)
    return score_pool(
        {image_id: images[image_id] for image_id in todo},
        network=network,
        model_version=model_version,
        preset=preset,
        store=scores,
        options=options,
        labels=labels,
        presegmentations=presegmentations,
    )
