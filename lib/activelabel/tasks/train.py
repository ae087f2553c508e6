"""The ``segmentation`` trainer: fine-tunes the latest model on the labeled volumes.

MONAI Label runs every train request in a subprocess, so training never blocks the
server; this class only gathers the labeled volumes, trains and publishes the next model
version with its validation Dice per label.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask
from torch import nn

from activelabel.config import Settings
from activelabel.fsutil import atomic_write_json, read_json
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import load_model
from activelabel.ml.interaction import train_refine_network
from activelabel.ml.training import load_volumes, split_train_val, train_network
from activelabel.scoring.refresh import refresh_top_candidates
from activelabel.scoring.triage import Calibration, calibrate, quality_and_dice
from activelabel.store.leases import LeaseStore
from activelabel.store.presegmentations import PresegmentationStore
from activelabel.store.scores import ScoreStore

logger = logging.getLogger(__name__)


class SegmentationTrainer(TrainTask):
    """Warm-started training with a deterministic validation split.

    Request keys (all optional): ``max_epochs``, ``steps_per_epoch``, ``patience``,
    ``learning_rate``, ``val_split``, ``samples_per_volume``; the rest of the recipe comes from
    the settings (:meth:`activelabel.config.Settings.train_options`).

    Args:
        settings: the app's resolved settings.
        store: the model's checkpoint store; a finished run publishes the next version.
        refine_store: the click-conditioned refinement network's store; after the segmentation
            model, it trains ``settings.refine_steps`` steps on the same labeled volumes with
            simulated clicks (:mod:`activelabel.ml.interaction`) and publishes there.
    """

    def __init__(self, *, settings: Settings, store: ModelStore, refine_store: ModelStore | None = None) -> None:
        super().__init__("Fine-tunes the segmentation UNet on labeled volumes (warm start, best validation Dice)")
        self.settings = settings
        self.store = store
        self.refine_store = refine_store
        self.stats_path = store.directory / "train_stats.json"
        self._config = {
            "max_epochs": settings.max_epochs,
            "steps_per_epoch": settings.steps_per_epoch,
            "patience": settings.patience,
            "learning_rate": settings.learning_rate,
            "val_split": settings.val_split,
            "samples_per_volume": settings.samples_per_volume,
        }

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def stats(self) -> dict[str, Any]:
        return read_json(self.stats_path, default={})

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        config = {**self._config, **{k: request[k] for k in self._config if k in request}}
        items = {os.path.basename(item["image"]): item for item in datastore.datalist()}
        if not items:
            raise ValueError("no labeled volumes to train on: submit at least one label first")
        train_ids, val_ids = split_train_val(list(items), val_split=float(config["val_split"]), seed=self.settings.seed)
        preset, labels = self.settings.preset, self.settings.labels
        logger.info("training on %d volumes, validating on %d", len(train_ids), len(val_ids))
        train_volumes = load_volumes([items[i] for i in train_ids], preset=preset, labels=labels)
        val_volumes = load_volumes([items[i] for i in val_ids], preset=preset, labels=labels)
        network, start = load_model(self.store, device=self.settings.device)
        result = train_network(
            network,
            train_volumes,
            val_volumes,
            preset=preset,
            labels=labels,
            options=self.settings.train_options(
                seed=self.settings.seed + start.version,
                max_epochs=int(config["max_epochs"]),
                steps_per_epoch=int(config["steps_per_epoch"]) or None,
                patience=int(config["patience"]) or None,
                learning_rate=float(config["learning_rate"]),
                samples_per_volume=int(config["samples_per_volume"]),
            ),
            device=self.settings.device,
        )
        calibration = self._calibrate(network, val_volumes)
        info = self.store.publish(
            result.state_dict,
            spec=self.settings.network.to_dict(),
            labels=labels.to_dict(),
            val_dice=result.val_dice,
            val_mean_dice=result.val_mean_dice,
            train_count=result.train_count,
            val_count=result.val_count,
            epochs=result.epochs,
            best_epoch=result.best_epoch,
            calibration=calibration.to_dict() if calibration else None,
        )
        stats = {
            "model_version": info.version,
            "previous_version": start.version,
            "train_ids": train_ids,
            "val_ids": val_ids,
            **result.summary(),
        }
        stats["calibration"] = info.calibration
        stats["refine"] = self._train_refine(
            [*train_volumes, *val_volumes], segmentation=network, seed=self.settings.seed + start.version
        )
        atomic_write_json(self.stats_path, stats)
        logger.info("published model version %d (val mean Dice %s)", info.version, info.val_mean_dice)
        stats["refreshed"] = self._refresh(datastore, model_version=info.version)
        return stats

    def _train_refine(
        self, volumes: Sequence[Mapping[str, Any]], *, segmentation: nn.Module, seed: int
    ) -> dict[str, Any] | None:
        """Train the refinement network on every labeled volume (no validation: its inputs need clicks),
        clicking on the new segmentation network's own mistakes as well as on corrupted truths."""
        if self.refine_store is None or self.settings.refine_steps <= 0:
            return None
        settings, steps = self.settings, self.settings.refine_steps
        per_epoch = min(steps, settings.steps_per_epoch or steps)
        options = settings.train_options(
            seed=seed, max_epochs=max(1, -(-steps // per_epoch)), steps_per_epoch=per_epoch
        )
        info = train_refine_network(
            self.refine_store,
            volumes,
            preset=settings.preset,
            labels=settings.labels,
            options=options,
            device=settings.device,
            segmentation=segmentation,
            inferer=settings.inferer(),
        )
        logger.info("published refine model version %d", info.version)
        return {"model_version": info.version, "steps": self.settings.refine_steps, "train_count": info.train_count}

    def _refresh(self, datastore: Datastore, *, model_version: int) -> int:
        """Re-score the next candidates with the new model so their pre-segmentations are ready."""
        settings = self.settings
        if not settings.presegment:
            return 0
        network, info = load_model(self.store, device=settings.device)
        if info.version != model_version:  # a newer model was published meanwhile: its run refreshes
            return 0
        unlabeled = {image_id: datastore.get_image_uri(image_id) for image_id in datastore.get_unlabeled_images()}
        report = refresh_top_candidates(
            unlabeled,
            network=network,
            model_version=model_version,
            preset=settings.preset,
            labels=settings.labels,
            scores=ScoreStore(settings.scores_path),
            presegmentations=PresegmentationStore(settings.presegmentations_dir),
            options=settings.scoring_options(),
            metric=settings.uncertainty_metric,
            leases=LeaseStore(settings.leases_path, seconds=settings.lease_seconds).active(),
            minimum=settings.presegment_refresh,
        )
        logger.info("refreshed %d pre-segmentations with model version %d", report.scored, model_version)
        return report.scored

    def _calibrate(self, network: nn.Module, val_volumes: Sequence[Mapping[str, Any]]) -> Calibration | None:
        """The quality threshold of the trained network on the validation volumes (never trained on)."""
        if not val_volumes:
            return None
        settings = self.settings
        inferer = settings.inferer()
        channels = {name: index for index, name in settings.labels.channel_names().items()}
        pairs = [
            quality_and_dice(network, volume, inferer=inferer, samples=settings.mc_samples, channels=channels)
            for volume in val_volumes
        ]
        calibration = calibrate(pairs, dice_threshold=settings.audit_dice, accuracy=settings.triage_accuracy)
        logger.info("auto-label triage: %s", calibration)
        return calibration
