"""Epistemic scoring of a pool of volumes with the current model, skipping fresh scores."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monailabel.transform.writer import write_itk
from torch import nn

from activelabel.labelmap import LabelMap
from activelabel.ml.decoder_dropout import McMode
from activelabel.ml.inference import embed_volume, mc_dropout_samples, sliding_window
from activelabel.ml.regrid import restore_to_image_grid
from activelabel.ml.transforms import Preset, inference_transforms
from activelabel.ml.uncertainty import VolumeUncertainty
from activelabel.store.presegmentations import SUFFIX, PresegmentationStore
from activelabel.store.scores import ScoreStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringOptions:
    """How volumes are scored.

    Attributes:
        samples: MC-dropout passes per volume.
        dilation: voxels by which the predicted foreground grows before aggregating.
        overlap: sliding-window overlap.
        force: rescore images whose score is already from the current model.
        mode: which dropout layers sample (full MC dropout, or only the later layers with
            the rest computed once per window).
        bf16: network passes in bfloat16 autocast.
        presegment: also keep the label of the mean prediction on the image's grid (the
            pre-segmentation the server serves without a network pass).
    """

    samples: int
    dilation: int = 3
    overlap: float = 0.5
    force: bool = False
    mode: McMode = McMode.FULL
    bf16: bool = False
    presegment: bool = False


@dataclass(frozen=True)
class ScoringReport:
    """What one scoring run did."""

    model_version: int
    scored: int
    skipped: int
    seconds: float
    seconds_per_volume: float | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class VolumeScore:
    """The uncertainty and embedding of one volume, and the seconds they took.

    ``label`` is the argmax of the mean prediction as label values, ``(1, *spatial)`` on the
    stored file's voxel grid with its affine, when the options asked for pre-segmentations.
    """

    uncertainty: VolumeUncertainty
    embedding: np.ndarray
    seconds: float
    label: MetaTensor | None = None


class VolumeScorer:
    """Scores single volumes with one network: load, pre-process, MC-dropout passes, aggregate.

    The one per-volume code path of scoring: the sequential :func:`score_pool` and the
    distributed workers (:mod:`activelabel.scoring.distributed`) both call it, so a volume
    gets the same score whichever way the pool is scored.

    Args:
        network: the model, in eval mode.
        preset: pre-processing of the model's modality.
        options: how volumes are scored.
        labels: the model's label map; required when ``options.presegment``.
    """

    def __init__(
        self, *, network: nn.Module, preset: Preset, options: ScoringOptions, labels: LabelMap | None = None
    ) -> None:
        if options.presegment and labels is None:
            raise ValueError("pre-segmentations need the label map, got labels=None")
        self.network = network
        self.options = options
        self.labels = labels
        self._load = inference_transforms(preset)
        self._inferer = sliding_window(preset.roi_size, overlap=options.overlap, bf16=options.bf16)

    def score(self, path: str) -> VolumeScore:
        """The score of the volume stored at ``path``."""
        began = time.perf_counter()
        image = self._load({"image": path})["image"]
        with torch.inference_mode():
            accumulator, embedding = mc_dropout_samples(
                self.network, image, self._inferer, samples=self.options.samples, mode=self.options.mode
            )
            uncertainty = accumulator.result(dilation=self.options.dilation)
            label = self._label(accumulator.mean_probs(), image) if self.options.presegment else None
        return VolumeScore(
            uncertainty=uncertainty, embedding=embedding.numpy(), seconds=time.perf_counter() - began, label=label
        )

    def _label(self, mean_probs: torch.Tensor, image: MetaTensor) -> MetaTensor:
        """Label values of the mean prediction, restored onto the stored file's grid (as the infer task does)."""
        assert self.labels is not None
        values = self.labels.to_values(mean_probs.argmax(dim=0, keepdim=True).numpy())
        dtype = torch.uint8 if max(self.labels.values) < 256 else torch.int32
        return restore_to_image_grid(torch.as_tensor(values).to(dtype), image=image, nearest=True)


def write_label(label: MetaTensor, path: str | os.PathLike[str]) -> None:
    """Write a ``(1, *spatial)`` label with its affine the way MONAI Label's infer writer does."""
    write_itk(label[0].numpy(), str(path), np.asarray(label.affine), None, True)


def warm_up_writer() -> None:
    """Write and delete a tiny label, so ITK loads its modules (seconds) before a request needs them."""
    fd, name = tempfile.mkstemp(suffix=SUFFIX, prefix="warm-")
    os.close(fd)
    try:
        write_label(MetaTensor(torch.zeros((1, 2, 2, 2), dtype=torch.uint8), affine=torch.eye(4)), name)
    finally:
        os.unlink(name)


def keep_presegmentation(store: PresegmentationStore, *, image_id: str, model_version: int, label: MetaTensor) -> None:
    """Write ``label`` as the pre-segmentation of ``image_id`` by ``model_version`` (atomically)."""
    store.write(image_id, model_version, lambda tmp: write_label(label, tmp))


def record_score(
    store: ScoreStore,
    *,
    image_id: str,
    model_version: int,
    score: VolumeScore,
    presegmentations: PresegmentationStore | None = None,
) -> None:
    """Write one volume's embedding and pre-segmentation, then its score, tagged with the model version.

    The score goes last because it marks the volume fresh: a crash between the writes
    leaves the volume stale, to be scored again, never fresh without its embedding.
    """
    store.put_embedding(image_id, model_version, score.embedding)
    if presegmentations is not None and score.label is not None:
        keep_presegmentation(presegmentations, image_id=image_id, model_version=model_version, label=score.label)
    store.put(image_id, model_version, score.uncertainty, seconds=score.seconds)


def score_pool(
    images: Mapping[str, str],
    *,
    network: nn.Module,
    model_version: int,
    preset: Preset,
    store: ScoreStore,
    options: ScoringOptions,
    progress: Callable[[int, int, str], None] | None = None,
    labels: LabelMap | None = None,
    presegmentations: PresegmentationStore | None = None,
) -> ScoringReport:
    """Score every image of ``images`` (id -> path) whose stored score is stale.

    Each score is written as soon as it is computed, so an interrupted run keeps its
    progress and the next run resumes with the images still stale.  With
    ``options.presegment`` each image's pre-segmentation goes to ``presegmentations``.
    """
    start = time.perf_counter()
    todo = list(images) if options.force else store.stale(images, model_version)
    scorer = VolumeScorer(network=network, preset=preset, options=options, labels=labels)
    for done, image_id in enumerate(todo, start=1):
        score = scorer.score(images[image_id])
        record_score(
            store, image_id=image_id, model_version=model_version, score=score, presegmentations=presegmentations
        )
        logger.info(
            "scored %s (%d/%d) in %.2fs: %s", image_id, done, len(todo), score.seconds, score.uncertainty.to_dict()
        )
        if progress is not None:
            progress(done, len(todo), image_id)
    total = time.perf_counter() - start
    return ScoringReport(
        model_version=model_version,
        scored=len(todo),
        skipped=len(images) - len(todo),
        seconds=total,
        seconds_per_volume=total / len(todo) if todo else None,
    )


def embed_pool(
    images: Mapping[str, str],
    *,
    network: nn.Module,
    model_version: int,
    preset: Preset,
    store: ScoreStore,
    overlap: float = 0.5,
    bf16: bool = False,
) -> int:
    """Store embeddings for ``images`` (e.g. the labeled ones) that lack one from this model.

    Diversity-aware strategies compare candidates with what is already labeled, so labeled
    volumes need embeddings in the current model's feature space too.  Returns how many
    were computed.
    """
    have = store.embeddings(model_version)
    todo = [image_id for image_id in images if image_id not in have]
    load = inference_transforms(preset)
    inferer = sliding_window(preset.roi_size, overlap=overlap, bf16=bf16)
    for image_id in todo:
        image = load({"image": images[image_id]})["image"]
        with torch.inference_mode():
            store.put_embedding(image_id, model_version, embed_volume(network, image, inferer).numpy())
    return len(todo)
