"""The ``diverse`` strategy: uncertain volumes that are unlike those already labeled.

Pure uncertainty sampling tends to pick near-duplicates (the same hard anatomy many times).
This strategy weighs each candidate's uncertainty by its distance, in the model's bottleneck
feature space, to the nearest labeled volume; asking for a batch one volume at a time (each
pick counted as labeled, as a lease does) spreads the batch out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from activelabel.ml.uncertainty import UncertaintyMetric
from activelabel.store.scores import ScoreStore


def cosine_distances(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Distance ``1 - cos`` from each row of ``vectors`` to its nearest row of ``reference``."""
    if reference.size == 0:
        return np.ones(len(vectors))
    a = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    b = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    return np.clip(1.0 - (a @ b.T).max(axis=1), 0.0, 2.0)


def diversity_priority(
    uncertainty: Mapping[str, float],
    embeddings: Mapping[str, np.ndarray],
    reference: Sequence[np.ndarray],
) -> dict[str, float]:
    """Uncertainty times distance to the nearest reference, each scaled to [0, 1] by its maximum.

    Args:
        uncertainty: candidate id -> score (higher is more uncertain).
        embeddings: candidate id -> embedding; candidates without one are left out.
        reference: embeddings of the volumes already labeled.
    """
    ids = [i for i in uncertainty if i in embeddings]
    if not ids:
        return {}
    scores = np.array([uncertainty[i] for i in ids], dtype=np.float64)
    vectors = np.stack([embeddings[i] for i in ids]).astype(np.float64)
    ref = np.stack(reference).astype(np.float64) if len(reference) else np.empty((0, vectors.shape[1]))
    distance = cosine_distances(vectors, ref)
    scale_u = scores.max() if scores.max() > 0 else 1.0
    scale_d = distance.max() if distance.max() > 0 else 1.0
    return {i: float(s / scale_u * d / scale_d) for i, s, d in zip(ids, scores, distance, strict=True)}


def farthest_first(embeddings: Mapping[str, np.ndarray], count: int, *, first: str) -> list[str]:
    """A cold-start pick: ``count`` ids spread over feature space (greedy k-center).

    Starts at ``first`` and adds, each time, the id farthest (cosine distance) from those
    picked so far, so the first volumes to label cover the pool's variety rather than its
    most common appearance.
    """
    if first not in embeddings:
        raise ValueError(f"the first pick {first!r} has no embedding")
    ids = sorted(embeddings)
    vectors = np.stack([embeddings[i] for i in ids]).astype(np.float64)
    picked = [first]
    # Distance of every id to its nearest pick, updated with each new pick (one pass per pick).
    nearest = cosine_distances(vectors, vectors[[ids.index(first)]])
    nearest[ids.index(first)] = -1.0
    while len(picked) < min(count, len(ids)):
        index = int(np.argmax(nearest))
        picked.append(ids[index])
        nearest = np.minimum(nearest, cosine_distances(vectors, vectors[[index]]))
        nearest[index] = -1.0
    return picked


class DiverseUncertain(Strategy):
    """Highest uncertainty x novelty among unlabeled volumes scored by the current model.

    Request keys (optional): ``metric`` — the uncertainty score to weigh.

    Args:
        scores: the score store written by the ``epistemic`` scoring method (scores and embeddings).
        metric: the default uncertainty metric.
    """

    def __init__(self, *, scores: ScoreStore, metric: UncertaintyMetric) -> None:
        super().__init__("Uncertainty weighted by feature-space distance to labeled volumes (batch diversity)")
        self.scores = scores
        self.metric = metric

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        metric = UncertaintyMetric(request.get("metric", self.metric))
        ranked = self.scores.ranked(datastore.get_unlabeled_images(), metric)
        if not ranked:
            return None
        version = max(score.model_version for score in ranked)
        embeddings = self.scores.embeddings(version)
        current = {s.image_id: s.uncertainty.score(metric) for s in ranked if s.model_version == version}
        reference = [embeddings[i] for i in datastore.get_labeled_images() if i in embeddings]
        priority = diversity_priority(current, embeddings, reference)
        if not priority:
            return None
        image_id = max(sorted(priority), key=lambda i: priority[i])
        return {
            "id": image_id,
            "strategy": "diverse",
            "metric": metric.value,
            "score": current[image_id],
            "priority": priority[image_id],
            "model_version": version,
        }
