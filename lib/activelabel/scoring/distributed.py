"""Scoring a pool as a batch job spread over workers (Ray tasks or local processes).

The driver (the calling process) lists the images whose score is stale, hands them to a
backend's workers (:mod:`activelabel.scoring.backends`) and writes each score and embedding
to the score store the moment it arrives.  A run that crashes therefore keeps every finished
image, and the next run resumes with only the images that are still stale.  The per-image
work is :class:`activelabel.scoring.scorer.VolumeScorer`, the same code the sequential
:func:`activelabel.scoring.scorer.score_pool` runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from activelabel.labelmap import LabelMap
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.transforms import Preset
from activelabel.scoring.backends import ScoringBackend, ScoringError
from activelabel.scoring.scorer import ScoringOptions, record_score
from activelabel.scoring.worker import ImageFailure, ScoringJob
from activelabel.store.presegmentations import PresegmentationStore
from activelabel.store.scores import ScoreStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchReport:
    """What one distributed scoring run did.

    Attributes:
        model_version: the published model's version when the run started.
        scored: images scored and stored by this run.
        skipped: images whose score was already from that version.
        failed: ids of images a worker could not score (they stay stale).
        seconds: wall time of the run, workers' start-up included.
        backend: ``ray`` or ``local processes``.
        workers: tasks that ran at once.
        threads: torch threads of each worker.
    """

    model_version: int
    scored: int
    skipped: int
    failed: tuple[str, ...]
    seconds: float
    backend: str
    workers: int
    threads: int

    @property
    def volumes_per_second(self) -> float | None:
        return self.scored / self.seconds if self.scored and self.seconds > 0 else None

    @property
    def seconds_per_volume(self) -> float | None:
        return self.seconds / self.scored if self.scored else None

    def to_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "failed": list(self.failed),
            "volumes_per_second": self.volumes_per_second,
            "seconds_per_volume": self.seconds_per_volume,
        }


def score_distributed(
    images: Mapping[str, str],
    *,
    model_store: ModelStore,
    preset: Preset,
    store: ScoreStore,
    options: ScoringOptions,
    backend: ScoringBackend,
    device: str = "cpu",
    progress: Callable[[int, int, str], None] | None = None,
    labels: LabelMap | None = None,
    presegmentations: PresegmentationStore | None = None,
) -> BatchReport:
    """Score every image of ``images`` (id -> path) whose stored score is stale, on ``backend``.

    Each result is stored as soon as it arrives, tagged with the model version the worker
    loaded.  Images a worker fails on are logged and listed in the report, not retried.

    Raises:
        ScoringError: no published model, or the backend cannot connect or keeps losing workers.
    """
    start = time.perf_counter()
    info = model_store.info()
    if info is None or not model_store.checkpoint_path.is_file():
        raise ScoringError(f"no published model in {model_store.directory}: start the server once or train one")
    todo = list(images) if options.force else store.stale(images, info.version)
    job = ScoringJob(
        model_dir=str(model_store.directory.resolve()),
        model_name=model_store.name,
        preset=preset,
        options=options,
        device=device,
        labels=labels,
    )
    scored, failed = 0, []
    with backend:
        logger.info(
            "scoring %d of %d image(s) with model version %d on %s: %s worker(s) x %d thread(s)",
            len(todo),
            len(images),
            info.version,
            backend.name,
            backend.workers,
            backend.threads,
        )
        for done, outcome in enumerate(backend.results(job, {i: images[i] for i in todo}), start=1):
            if isinstance(outcome, ImageFailure):
                failed.append(outcome.image_id)
                logger.warning("could not score %s: %s", outcome.image_id, outcome.error)
            else:
                record_score(
                    store,
                    image_id=outcome.image_id,
                    model_version=outcome.model_version,
                    score=outcome.score,
                    presegmentations=presegmentations,
                )
                scored += 1
                logger.info("scored %s (%d/%d) in %.2fs", outcome.image_id, done, len(todo), outcome.score.seconds)
            if progress is not None:
                progress(done, len(todo), outcome.image_id)
    return BatchReport(
        model_version=info.version,
        scored=scored,
        skipped=len(images) - len(todo),
        failed=tuple(failed),
        seconds=time.perf_counter() - start,
        backend=backend.name,
        workers=int(backend.workers or 0),
        threads=backend.threads,
    )
