"""The ``segmentation`` infer task: multi-label 3D segmentation in the image's own geometry."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from typing import Any

from monai.inferers import Inferer
from monai.transforms import Activationsd, AsDiscreted, DeleteItemsd, EnsureTyped, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from torch import nn

from activelabel.config import Settings
from activelabel.labelmap import LabelMap
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import PublishedModel
from activelabel.ml.networks import build_network
from activelabel.ml.regrid import RestoreToImageGridd
from activelabel.ml.transforms import channels_to_label_values, inference_transforms
from activelabel.scoring.scorer import VolumeScorer, record_score
from activelabel.scoring.triage import triage_decision
from activelabel.store.label_versions import AUTO_TAG
from activelabel.store.presegmentations import PresegmentationStore
from activelabel.store.scores import ScoreStore
from activelabel.workers.compute import ComputePool

REQUEST_IMAGE_ID = "_image_id"
"""Request key of the datastore id of the image (MONAI Label replaces ``image`` by its path)."""

INTERACTIVE_KEYS = ("label", "foreground", "background")
"""Request keys that condition the result on the clinician's input: never served from the cache."""


class CacheResult(str, Enum):
    """How a segmentation request was answered (the ``X-ActiveLabel-Presegmentation`` header)."""

    HIT = "hit"
    """Served from the pre-segmentation the current model made while scoring: no network pass."""
    MISS = "miss"
    """Computed for this request."""


@dataclass
class InferOutcome:
    """What the infer task did for one HTTP request, for the route to put in its response headers."""

    cache: CacheResult | None = None
    model_version: int | None = None


INFER_OUTCOME: ContextVar[InferOutcome | None] = ContextVar("activelabel_infer_outcome", default=None)
"""Set by the infer route around one request; the task fills it in (also from a compute-pool thread)."""


def segmentation_post_transforms(labels: LabelMap) -> list[Callable]:
    """Network scores ``pred`` on the model grid -> label values on the image grid (``[x, y, z]``)."""
    return [
        EnsureTyped(keys="pred", device="cpu"),
        Activationsd(keys="pred", softmax=True),
        AsDiscreted(keys="pred", argmax=True),
        channels_to_label_values("pred", labels),
        RestoreToImageGridd(keys="pred", image_key="image", nearest=True),
        SqueezeDimd(keys="pred", dim=0),
    ]


class PublishedModelInfer(BasicInferTask):
    """An infer task over a :class:`ModelStore`'s published network: sliding window, label map out.

    Subclasses set ``settings``, ``store`` and ``_loaded`` (device -> :class:`PublishedModel`)
    before calling ``BasicInferTask.__init__``; the result JSON names the model version.
    """

    settings: Settings
    store: ModelStore
    _loaded: dict[str, PublishedModel]

    def inferer(self, data: dict[str, Any] | None = None) -> Inferer:
        return self.settings.inferer()

    def inverse_transforms(self, data: dict[str, Any] | None = None) -> None:
        return None

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        return segmentation_post_transforms(self.settings.labels)

    def _get_network(self, device: str, data: dict[str, Any] | None) -> nn.Module:
        """The published network, reloaded when the checkpoint file changes."""
        published = self._loaded.setdefault(device, PublishedModel(self.store, device=device))
        network, info = published.get()
        if data is not None:
            data["model_version"] = info.version
        return network

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        label, result = super().writer(data, extension=extension, dtype=dtype)
        result = dict(result or {})
        result["model_version"] = data.get("model_version")
        return label, result

    def clear(self) -> None:
        self._loaded.clear()
        super().clear()


class SegmentationInfer(PublishedModelInfer):
    """Sliding-window UNet segmentation returning a label map on the input's voxel grid.

    The pre-processing (RAS, preset spacing, intensity) is inverted on the label map with
    nearest-neighbour interpolation, so the written label has the image's shape and affine.
    Argmax and label values are computed on the model grid; only the uint8 (or int32) label
    is full-size on the image grid, restored slab by slab (see :mod:`activelabel.ml.regrid`).
    The network is reloaded whenever a newer checkpoint is published; the result JSON
    names the model version that produced it.

    A request for a datastore image, without the clinician's label or clicks and without
    ``"cache": false``, is answered from ``presegmentations`` when scoring already made the
    image's pre-segmentation with the current model version (``"presegmentation": "hit"``);
    otherwise the network pass runs in ``compute`` (the bounded pool apart from the HTTP
    threads, which raises :class:`~activelabel.workers.compute.ComputeBusy` when full).

    Args:
        settings: the app's resolved settings.
        store: the model's checkpoint store.
        presegmentations: the pre-segmentations kept by scoring (None: always compute).
        compute: the pool for network passes (None: run in the calling thread).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        store: ModelStore,
        presegmentations: PresegmentationStore | None = None,
        compute: ComputePool | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.presegmentations = presegmentations
        self.compute = compute
        self._pre = inference_transforms(settings.preset)
        self._loaded: dict[str, PublishedModel] = {}
        super().__init__(
            path=str(store.checkpoint_path),
            network=build_network(settings.network),
            type=InferType.SEGMENTATION,
            labels=settings.labels.to_dict(),
            dimension=3,
            description="3D multi-label segmentation (UNet with dropout, sliding window)",
            roi_size=settings.preset.roi_size,
            preload=settings.preload,
            config={"device": settings.device, "result_extension": ".nii.gz"},
        )

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        # MONAI's Spacingd treats every "image_*" key as image metadata and fails on the
        # "image_path" string MONAI Label adds; the writer takes its extension from config.
        return [DeleteItemsd(keys="image_path"), *self._pre.transforms]

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[Any, dict[str, Any]]:
        served = self._from_cache(request)
        if served is not None:
            label, result = served
        else:
            compute = super().__call__
            if self.compute is None:
                label, result = compute(request, callbacks)
            else:
                label, result = self.compute.run(compute, request, callbacks)
            result = {**(result or {}), "presegmentation": CacheResult.MISS.value}
            self._record(CacheResult.MISS, result.get("model_version"), cacheable=self._cacheable(request))
        if request.get("label_tag") == AUTO_TAG and label is not None:
            result = {**(result or {}), **self._triage(request)}
        return label, result

    def _cacheable(self, request: dict[str, Any]) -> bool:
        return (
            self.presegmentations is not None
            and bool(request.get(REQUEST_IMAGE_ID))
            and str(request.get("cache", "true")).lower() not in ("0", "false", "no")
            and not any(request.get(key) for key in INTERACTIVE_KEYS)
        )

    def _from_cache(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The stored pre-segmentation by the published model version, as a temporary file, or None."""
        if not self._cacheable(request):
            return None
        began = time.perf_counter()
        info = self.store.info()
        assert self.presegmentations is not None
        path = self.presegmentations.copy_out(request[REQUEST_IMAGE_ID], info.version) if info is not None else None
        if info is None or path is None:
            return None
        self._record(CacheResult.HIT, info.version, cacheable=True)
        result = {
            "label_names": self.labels,
            "model_version": info.version,
            "presegmentation": CacheResult.HIT.value,
            "latencies": {"total": round(time.perf_counter() - began, 4)},
        }
        return path, result

    def _record(self, cache: CacheResult, model_version: int | None, *, cacheable: bool) -> None:
        outcome = INFER_OUTCOME.get()
        if outcome is not None:
            outcome.cache, outcome.model_version = cache, model_version
        if cacheable and self.presegmentations is not None:
            self.presegmentations.record(hit=cache is CacheResult.HIT)

    def _triage(self, request: dict[str, Any]) -> dict[str, Any]:
        """An auto-label's predicted quality and the triage decision it gets from the model's calibration.

        The quality is the volume's MC-dropout sample agreement under the model that made the
        label: read from the score store when scoring already computed it for that version,
        computed here (and stored) otherwise.
        """
        settings = self.settings
        if settings.device not in self._loaded:
            self._loaded[settings.device] = PublishedModel(self.store, device=settings.device)
        network, info = self._loaded[settings.device].get()
        image_id = request.get(REQUEST_IMAGE_ID)
        scores = ScoreStore(settings.scores_path)
        stored = scores.get(image_id) if image_id else None
        if stored is not None and stored.model_version == info.version and stored.uncertainty.agreement is not None:
            quality = stored.uncertainty.agreement
        else:
            options = settings.scoring_options(samples=max(2, settings.mc_samples))
            scorer = VolumeScorer(network=network, preset=settings.preset, options=options, labels=settings.labels)
            score = scorer.score(request["image"])
            if image_id:
                record_score(
                    scores,
                    image_id=image_id,
                    model_version=info.version,
                    score=score,
                    presegmentations=self.presegmentations,
                )
            quality = score.uncertainty.agreement
        decision = triage_decision(quality, info.calibration)
        return {"quality": quality, **decision.to_dict()}
