"""The labeling project's state in numbers: what ``GET /activelabel/status`` answers."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.datastore import Datastore

from activelabel.checkpoints import ModelStore
from activelabel.scores import ScoreStore


def project_status(
    *,
    datastore: Datastore,
    model_store: ModelStore,
    score_store: ScoreStore,
    training_running: bool = False,
) -> dict[str, Any]:
    """Labeled / total, the current model and its validation Dice, score freshness.

    Scores count over unlabeled volumes only (the ones strategies choose from): fresh when
    computed by the current model version, stale when by an older one.
    """
    images = datastore.list_images()
    labeled = datastore.get_labeled_images()
    unlabeled = datastore.get_unlabeled_images()
    model = model_store.info()
    version = model.version if model else -1
    freshness = score_store.freshness(unlabeled, version)
    return {
        "images": {
            "total": len(images),
            "labeled": len(labeled),
            "unlabeled": len(unlabeled),
            "labeled_fraction": len(labeled) / len(images) if images else 0.0,
        },
        "model": {
            "version": model.version if model else None,
            "trained": bool(model and model.trained),
            "val_dice": model.val_dice if model else {},
            "val_mean_dice": model.val_mean_dice if model else None,
            "train_count": model.train_count if model else 0,
            "val_count": model.val_count if model else 0,
            "published_at": model.published_at if model else None,
        },
        "scores": {
            "fresh": freshness.fresh,
            "stale": freshness.stale,
            "unscored": freshness.unscored,
        },
        "training": {"running": training_running},
    }
