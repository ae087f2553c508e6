"""The labeling project's state in numbers: what ``GET /activelabel/status`` answers."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.datastore import Datastore

from activelabel.checkpoints import ModelStore
from activelabel.scores import ScoreStore
from activelabel.simulation.stop_rule import StopRule, signals_from_submissions
from activelabel.submissions import SubmissionLog

AUTO_TAG = "auto"


def project_status(
    *,
    datastore: Datastore,
    model_store: ModelStore,
    score_store: ScoreStore,
    submissions: SubmissionLog,
    stop_rule: StopRule,
    stop_window: int,
    training_running: bool = False,
) -> dict[str, Any]:
    """Labeled / total, the current model and its validation Dice, score freshness, stop advice.

    Scores count over unlabeled volumes only (the ones strategies choose from): fresh when
    computed by the current model version, stale when by an older one.  Automation counts
    unlabeled volumes that carry a model-made ``auto`` label.
    """
    sync = getattr(datastore, "sync", None)
    if callable(sync):
        sync()  # task subprocesses (batch infer) write the datastore file
    images = datastore.list_images()
    labeled = datastore.get_labeled_images()
    unlabeled = datastore.get_unlabeled_images()
    model = model_store.info()
    version = model.version if model else -1
    freshness = score_store.freshness(unlabeled, version)
    auto = [image_id for image_id in unlabeled if AUTO_TAG in datastore.get_labels_by_image_id(image_id)]
    log = submissions.all()
    signals = signals_from_submissions([(s.agreement, s.val_mean_dice) for s in log], window=stop_window)
    decision = stop_rule.evaluate(signals, per_round=stop_window)
    recent = [s.agreement for s in log if s.agreement is not None][-stop_window:]
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
        "submissions": {
            "count": len(log),
            "with_agreement": sum(s.agreement is not None for s in log),
            "recent_agreement": sum(recent) / len(recent) if recent else None,
        },
        "stop": {
            "stop_recommended": decision.stop,
            "reason": decision.reason,
            "estimated_labels_needed": decision.estimated_labels_needed,
        },
        "automation": {
            "auto_labeled": len(auto),
            "automation": len(auto) / len(images) if images else 0.0,
        },
    }
