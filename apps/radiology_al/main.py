"""ActiveLabel radiology app for MONAI Label: wires the settings to ActiveLabel's tasks.

Runs under ``monailabel start_server --app apps/radiology_al --studies DIR`` and under
``activelabel serve --studies DIR`` (which adds the /activelabel endpoints).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

import activelabel
from activelabel.access.request_user import caller_name
from activelabel.config import is_remote, load_settings
from activelabel.datastore.factory import open_datastore
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import PublishedModel
from activelabel.ml.interaction import REFINE_MODEL
from activelabel.ml.uncertainty_map import UncertaintyMapCache
from activelabel.scoring.scorer import warm_up_writer
from activelabel.server.task_guard import task_pending
from activelabel.store.audit import AuditLog
from activelabel.store.identifiers import check_local_source, check_name
from activelabel.store.label_versions import LabelVersionStore
from activelabel.store.leases import LeasedDatastoreView, LeaseStore
from activelabel.store.presegmentations import PresegmentationStore
from activelabel.store.scores import ScoreStore
from activelabel.store.submissions import SubmissionLog, label_agreement
from activelabel.store.validation import InputRejected
from activelabel.strategies.audit import AuditSample
from activelabel.strategies.diverse import DiverseUncertain
from activelabel.strategies.foreground_random import ForegroundRandom
from activelabel.strategies.most_uncertain import MostUncertain
from activelabel.strategies.random_sample import RandomSample
from activelabel.strategies.uncertain_slices import UncertainSlices
from activelabel.tasks.infer import REQUEST_IMAGE_ID, SegmentationInfer
from activelabel.tasks.refine import RefineInfer, ensure_refine_model
from activelabel.tasks.scoring import EpistemicScoring
from activelabel.tasks.train import SegmentationTrainer
from activelabel.workers.compute import ComputePool

logger = logging.getLogger(__name__)

MODEL = "segmentation"


class RadiologyActiveLabelApp(MONAILabelApp):
    """Segmentation, training, epistemic scoring and active-learning strategies."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.settings = load_settings(conf, studies=studies, app_dir=app_dir)
        self.model_store = ModelStore(self.settings.model_dir, name=MODEL)
        self.model_store.ensure_initial(self.settings.network, self.settings.labels.to_dict(), seed=self.settings.seed)
        self.refine_store = ModelStore(self.settings.model_dir, name=REFINE_MODEL)
        ensure_refine_model(self.refine_store, self.settings)
        self.score_store = ScoreStore(self.settings.scores_path)
        self.submissions = SubmissionLog(self.settings.submissions_path)
        self.leases = LeaseStore(self.settings.leases_path, seconds=self.settings.lease_seconds)
        self.label_versions = LabelVersionStore(
            self.settings.label_versions_dir, index=self.settings.label_versions_path
        )
        self.audits = AuditLog(self.settings.audits_path)
        self.presegmentations = PresegmentationStore(self.settings.presegmentations_dir)
        self.compute = ComputePool(workers=self.settings.infer_workers, queue=self.settings.infer_queue)
        self.uncertainty_maps = UncertaintyMapCache(
            self.settings.state_dir / "uncertainty-maps",
            model=PublishedModel(self.model_store, device=self.settings.device),
            preset=self.settings.preset,
            overlap=self.settings.sw_overlap,
            compute=self.compute,
        )
        self._last_submission: dict[str, dict[str, Any]] = {}
        self._rescored_version: int | None = None
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="ActiveLabel radiology",
            description="Active-learning segmentation of CT and MRI volumes",
            version=activelabel.__version__,
            labels=self.settings.labels.to_dict(),
        )
        # Every infer/save would re-queue all scorers otherwise; scoring is requested explicitly.
        if "MONAI_LABEL_AUTO_UPDATE_SCORING" not in os.environ:
            self._auto_update_scoring = False

    def server_mode(self, mode: bool) -> None:
        """MONAI Label's switch to serving; the label writer is warmed up then, not on the first request.

        Not in a thread: ITK's lazy loading edits ``sys.path``, as MONAI Label does while it loads apps.
        """
        super().server_mode(mode)
        if mode:
            warm_up_writer()

    def init_datastore(self) -> Datastore:
        return open_datastore(
            self.studies,
            settings=self.settings,
            conf=self.conf,
            versions=self.label_versions,
            on_saved=self._record_submission,
        )

    def _record_submission(self, image_id: str, tag: str, path: Path, info: dict[str, Any]) -> None:
        """Log a final label with its agreement to the stored pre-segmentation (if any)."""
        if tag != DefaultLabelTag.FINAL.value:
            return
        original = self._datastore.get_label_uri(image_id, DefaultLabelTag.ORIGINAL.value)
        agreement, version = None, None
        if original and os.path.isfile(original):
            agreement = label_agreement(original, path, self.settings.labels)
            params = self._datastore.get_label_info(image_id, DefaultLabelTag.ORIGINAL.value).get("params") or {}
            version = params.get("model_version")
        self.leases.release(image_id)
        if self._datastore.has_label(image_id):  # labeled (all readers in): no longer a candidate
            self.score_store.forget(image_id)
            self.presegmentations.forget(image_id)
        model = self.model_store.info()
        seconds = info.get("seconds_spent")
        entry = self.submissions.add(
            image_id,
            agreement=agreement,
            model_version=version,
            val_mean_dice=model.val_mean_dice if model else None,
            author=info.get("client_id") or info.get("user"),
            seconds_spent=float(seconds) if seconds is not None else None,
        )
        answer: dict[str, Any] = {"submission": entry.to_dict(), "label_version": info.get("version")}
        if "readers" in info:
            answer["readers"] = info["readers"]
        self._last_submission[image_id] = answer
        self._maybe_retrain()
        self._maybe_rescore()

    def after_audit(self, image_id: str) -> None:
        """An audit verdict ends the reviewer's lease; an accepted or corrected label may start training."""
        self.leases.release(image_id)
        self._maybe_retrain()

    def _maybe_retrain(self) -> None:
        """Start training once ``retrain_after`` labels arrived since the current model was trained.

        MONAI Label refuses a second train task while one runs, so training never runs twice.
        """
        if self.settings.retrain_after <= 0 or not self._server_mode or task_pending("train"):
            return
        model = self.model_store.info()
        trained_on = (model.train_count + model.val_count) if model else 0
        new_labels = self._datastore.labeled_count() - trained_on
        if new_labels >= self.settings.retrain_after:
            logger.info("%d new labels since the model was trained: starting training", new_labels)
            self.async_training(MODEL)

    def _maybe_rescore(self) -> None:
        """Start scoring when unlabeled volumes' scores are from an older model and no task is pending.

        The training run refreshed only the head of the ranking; this brings the rest of the pool
        (and its pre-segmentations) to the new model, most uncertain first, at the tasks' lower
        CPU priority.
        """
        if not self.settings.rescore_after_training or not self._server_mode:
            return
        model = self.model_store.info()
        if model is None or model.version == self._rescored_version:
            return  # the pool scan below runs once per model version, not on every submission
        if task_pending("train") or task_pending("scoring"):
            return
        self._rescored_version = model.version
        if self.score_store.freshness(self._datastore.get_unlabeled_images(), model.version).stale:
            logger.info("scores older than model version %d: starting scoring", model.version)
            self.async_scoring("epistemic")

    def on_save_label(self, image_id: str, label_id: str) -> dict[str, Any]:
        """The response to a label upload: its agreement with the pre-segmentation, its version, readers."""
        return self._last_submission.pop(image_id, None) or {}

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        """The strategy's pick among volumes not leased to another client, leased to this one.

        A client asking again before submitting may be given its own leased volume again,
        unless the request names it in ``exclude`` (a list of image ids never to pick: a
        client prefetching the volume after its current one).
        """
        name = request.get("strategy") or "random"
        strategy = self._strategies.get(name)
        if strategy is None:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"no strategy named {name!r}")
        client = caller_name(request.get("client_id"))
        exclude = request.get("exclude") or []
        if not isinstance(exclude, list) or not all(isinstance(item, str) for item in exclude):
            raise HTTPException(status_code=422, detail=f"exclude must be a list of image ids, got {exclude!r:.100}")
        with self.leases.selecting():
            excluded = self.leases.held_by_others(client) | set(exclude)
            if self.settings.readers > 1:  # a reader never reads a volume twice
                excluded |= self.label_versions.images_read_by(client)
            view = LeasedDatastoreView(self._datastore, excluded=excluded)
            try:
                result = strategy(request, view)
            except InputRejected as error:  # a request key the strategy refuses
                raise HTTPException(status_code=error.status, detail=str(error)) from None
            if not result or not result.get("id"):
                return {}
            lease = self.leases.grant(result["id"], client)
        result["path"] = self._datastore.get_image_uri(result["id"])
        result["lease"] = lease.to_dict()
        return result

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's infer; over HTTP the image must be a datastore id, an upload or a datastore file.

        A datastore id is kept in the request (MONAI Label replaces it by the image's path), so
        the infer task can serve the image's pre-segmentation.
        """
        image = request.get("image")
        if self._server_mode and isinstance(image, str):
            self._check_infer_image(image, datastore or self._datastore)
        if isinstance(image, str) and image and not os.path.exists(image):
            request = {REQUEST_IMAGE_ID: image, **request}
        try:
            return super().infer(request, datastore)
        except InputRejected as error:  # a task refusing its request (refine's clicks, ...)
            raise HTTPException(status_code=error.status, detail=str(error)) from None

    def _check_infer_image(self, image: str, datastore: Datastore) -> None:
        """Refuse server-side paths outside the studies folder and ids the datastore does not know."""
        remote = is_remote(self.studies)
        sessions = self.sessions()
        roots = [path for path in (None if remote else self.studies, sessions and sessions.store_path) if path]
        try:
            if os.path.exists(image):
                check_local_source(image, roots=roots)
                return
            check_name(image, what="image id")
        except InputRejected as error:
            raise HTTPException(status_code=error.status, detail=str(error)) from None
        if not remote and not datastore.get_image_uri(image):
            raise HTTPException(status_code=404, detail=f"unknown image id {image!r}")

    def init_infers(self) -> dict[str, InferTask]:
        segmentation = SegmentationInfer(
            settings=self.settings,
            store=self.model_store,
            presegmentations=self.presegmentations,
            compute=self.compute,
        )
        refine = RefineInfer(
            settings=self.settings, store=self.refine_store, segment=segmentation, compute=self.compute
        )
        return {MODEL: segmentation, REFINE_MODEL: refine}

    def init_trainers(self) -> dict[str, TrainTask]:
        trainer = SegmentationTrainer(settings=self.settings, store=self.model_store, refine_store=self.refine_store)
        return {MODEL: trainer}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        return {
            "epistemic": EpistemicScoring(
                settings=self.settings,
                model_store=self.model_store,
                score_store=self.score_store,
                presegmentations=self.presegmentations,
            )
        }

    def init_strategies(self) -> dict[str, Strategy]:
        return {
            "most_uncertain": MostUncertain(scores=self.score_store, metric=self.settings.uncertainty_metric),
            "diverse": DiverseUncertain(scores=self.score_store, metric=self.settings.uncertainty_metric),
            "random": RandomSample(),
            "foreground_random": ForegroundRandom(scores=self.score_store),
            "audit": AuditSample(audits=self.audits),
            "uncertain_slices": UncertainSlices(
                scores=self.score_store,
                maps=self.uncertainty_maps,
                metric=self.settings.uncertainty_metric,
                samples=self.settings.mc_samples,
            ),
        }

    def info(self) -> dict[str, Any]:
        info = super().info()
        model = self.model_store.info()
        refine = self.refine_store.info()
        info["activelabel"] = {
            "model": model.to_dict() if model else None,
            "refine_model": refine.to_dict() if refine else None,
        }
        return info
