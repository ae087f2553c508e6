"""The ``uncertain_slices`` strategy: a volume and the few slices of it most worth drawing.

Drawing a handful of well-chosen slices per volume costs a fraction of a full 3D label; the
training loss ignores the slices left unannotated (value 255, see
:data:`activelabel.labelmap.NOT_ANNOTATED`).  The volume is the most uncertain one that still
has unannotated slices; its slices are ranked by the mean voxel uncertainty of the published
model's MC-dropout map and chosen spread apart, never one already annotated.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from activelabel.ml.uncertainty import UncertaintyMetric
from activelabel.ml.uncertainty_map import UncertaintyMapCache
from activelabel.store.label_versions import FINAL_TAG
from activelabel.store.scores import ScoreStore
from activelabel.store.validation import InputRejected
from activelabel.strategies.random_sample import pick_random

MAX_SLICES = 64
"""Most slices one answer asks for."""


def spread_slices(scores: Sequence[float], *, count: int, exclude: Iterable[int] = (), min_gap: int = 1) -> list[int]:
    """Up to ``count`` slice indices of highest score, each at least ``min_gap`` from the others.

    Greedy by descending score (ties: lower index first).  When the gap leaves too few slices
    it is halved until ``count`` are found or every slice not in ``exclude`` is taken; an
    excluded slice (already annotated) is never returned.

    Returns:
        The chosen indices in ascending order.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    excluded = set(exclude)
    order = sorted((i for i in range(len(scores)) if i not in excluded), key=lambda i: (-scores[i], i))
    chosen: list[int] = []
    gap = max(1, min_gap)
    while True:
        for index in order:
            if len(chosen) == count:
                break
            if index not in chosen and all(abs(index - other) >= gap for other in chosen):
                chosen.append(index)
        if len(chosen) == count or len(chosen) == len(order) or gap == 1:
            return sorted(chosen)
        gap = max(1, gap // 2)


def axial_voxel_axis(affine: np.ndarray) -> int:
    """The voxel axis of a NIfTI affine that runs closest to superior-inferior."""
    return int(np.argmax(np.abs(np.asarray(affine, dtype=np.float64)[2, :3])))


class UncertainSlices(Strategy):
    """The most uncertain volume with unannotated slices, and its ``K`` most uncertain slices.

    Candidates are unlabeled volumes and volumes whose final label is partial (some slices not
    annotated), ranked by their stored score; with no score at all one is drawn at random.  The
    slices are axial unless the request names an ``axis`` (voxel axis 0, 1 or 2 of the image
    file), spread at least ``slices // (2 K)`` apart where possible.  Leases apply as for every
    strategy: the whole volume is leased.

    Request keys (optional): ``slices`` (K, default ``count``), ``axis``, ``metric``.

    Args:
        scores: the score store written by the ``epistemic`` scoring method.
        maps: voxel uncertainty maps of the published model (computed on first use, cached).
        metric: the default metric.
        samples: MC-dropout samples per map.
        count: the default ``K``.
    """

    def __init__(
        self,
        *,
        scores: ScoreStore,
        maps: UncertaintyMapCache,
        metric: UncertaintyMetric,
        samples: int,
        count: int = 5,
    ) -> None:
        super().__init__("The most uncertain slices of the most uncertain volume (label only those)")
        self.scores = scores
        self.maps = maps
        self.metric = metric
        self.samples = samples
        self.count = count
        self._rng = random.Random()

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        count = _int_in_range(request.get("slices", self.count), "slices", 1, MAX_SLICES)
        axis = None if request.get("axis") is None else _int_in_range(request["axis"], "axis", 0, 2)
        try:
            metric = UncertaintyMetric(request.get("metric", self.metric))
        except ValueError:
            choices = ", ".join(m.value for m in UncertaintyMetric)
            raise InputRejected(f"metric must be one of {choices}, got {request.get('metric')!r}") from None
        done = _partial_labels(datastore)
        candidates = [*datastore.get_unlabeled_images(), *done]
        ranked = self.scores.ranked(candidates, metric)
        image_id = ranked[0].image_id if ranked else pick_random(sorted(candidates), rng=self._rng)
        if image_id is None:
            return None
        map_path, version = self.maps.get(
            image_id, datastore.get_image_uri(image_id), metric=metric, samples=self.samples
        )
        volume = nib.load(str(map_path))
        uncertainty = np.asarray(volume.dataobj, dtype=np.float32)
        axis = axial_voxel_axis(volume.affine) if axis is None else axis
        info = done.get(image_id, {})
        annotated = list(info.get("annotated_slices") or []) if info.get("slice_axis") == axis else []
        other = tuple(a for a in range(uncertainty.ndim) if a != axis)
        per_slice = uncertainty.mean(axis=other)
        gap = max(1, per_slice.size // (2 * count))
        slices = spread_slices(per_slice.tolist(), count=count, exclude=annotated, min_gap=gap)
        return {
            "id": image_id,
            "strategy": "uncertain_slices",
            "metric": metric.value,
            "score": ranked[0].uncertainty.score(metric) if ranked else None,
            "model_version": version,
            "axis": axis,
            "slices": slices,
            "slice_uncertainty": [float(per_slice[i]) for i in slices],
            "annotated_slices": annotated,
            "slice_count": int(per_slice.size),
        }


def _partial_labels(datastore: Any) -> dict[str, dict[str, Any]]:
    """Labeled volumes (not leased to others) whose final label leaves slices unannotated -> label info."""
    available = getattr(datastore, "is_available", lambda image_id: True)
    found = {}
    for image_id in datastore.get_labeled_images():
        info = datastore.get_label_info(image_id, FINAL_TAG) or {}
        annotated = info.get("annotated_slices")
        remaining = isinstance(annotated, list) and len(annotated) < int(info.get("slices") or 0)
        if info.get("partial") and remaining and available(image_id):
            found[image_id] = info
    return found


def _int_in_range(value: Any, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputRejected(f"{name} must be an integer from {low} to {high}, got {value!r}") from None
    if not low <= number <= high or isinstance(value, bool) or (isinstance(value, float) and value != number):
        raise InputRejected(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return number
