"""The worker side of distributed scoring: score one image with the published model.

A worker is a long-lived process (a Ray worker or a local pool process) that runs many
:func:`score_image` calls.  It loads the published model on its first call and keeps it for
the rest, so a pool of N images costs one checkpoint load per worker, not one per image.
Everything a call needs travels in a small picklable :class:`ScoringJob`; images and the
checkpoint are read from paths, so workers must see the same files as the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from activelabel.labelmap import LabelMap
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import load_model
from activelabel.ml.transforms import Preset
from activelabel.scoring.scorer import ScoringOptions, VolumeScore, VolumeScorer


@dataclass(frozen=True)
class ScoringJob:
    """What every worker needs to score images of one run.

    Attributes:
        model_dir: the checkpoint directory of the published model.
        model_name: the model's name in that directory.
        preset: pre-processing of the model's modality.
        options: how volumes are scored, passed through whole.
        device: where the network runs in the worker.
        labels: the model's label map (needed for pre-segmentations).
    """

    model_dir: str
    model_name: str
    preset: Preset
    options: ScoringOptions
    device: str = "cpu"
    labels: LabelMap | None = None


@dataclass(frozen=True)
class ImageResult:
    """One image's score, tagged with the version of the model the worker loaded."""

    image_id: str
    model_version: int
    score: VolumeScore


@dataclass(frozen=True)
class ImageFailure:
    """An image a worker could not score (unreadable file, bad geometry, ...)."""

    image_id: str
    error: str


@dataclass
class _Loaded:
    job: ScoringJob
    threads: int
    scorer: VolumeScorer
    model_version: int


_loaded: _Loaded | None = None


def _scorer(job: ScoringJob, threads: int) -> _Loaded:
    """This process's scorer for ``job``, loading the model on the first call only."""
    global _loaded
    if _loaded is None or _loaded.job != job or _loaded.threads != threads:
        torch.set_num_threads(threads)
        network, info = load_model(ModelStore(job.model_dir, name=job.model_name), device=job.device)
        _loaded = _Loaded(
            job=job,
            threads=threads,
            scorer=VolumeScorer(network=network, preset=job.preset, options=job.options, labels=job.labels),
            model_version=info.version,
        )
    return _loaded


def score_image(job: ScoringJob, image_id: str, path: str, *, threads: int) -> ImageResult:
    """Score the image at ``path`` in this worker with ``threads`` torch threads.

    Raises whatever loading or scoring the image raises; the caller reports it per image.
    """
    loaded = _scorer(job, threads)
    return ImageResult(image_id=image_id, model_version=loaded.model_version, score=loaded.scorer.score(path))
