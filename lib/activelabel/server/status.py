"""The labeling project's state in numbers: what ``GET /activelabel/status`` answers."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.datastore import Datastore

from activelabel.ml.checkpoints import ModelStore
from activelabel.scoring.triage import auto_label_triage
from activelabel.server.stop_rule import StopRule, signals_from_submissions
from activelabel.store.audit import AuditLog, auto_version
from activelabel.store.label_versions import AUTO_TAG, FINAL_TAG, LabelVersionStore
from activelabel.store.presegmentations import PresegmentationStore
from activelabel.store.scores import ScoreStore
from activelabel.store.submissions import SubmissionLog
from activelabel.workers.compute import ComputePool

__all__ = ["AUTO_TAG", "project_status", "serving_status"]


def serving_status(
    *, compute: ComputePool, presegmentations: PresegmentationStore, model_version: int | None
) -> dict[str, Any]:
    """How interactive requests are being served: the compute pool's queue and the pre-segmentation cache.

    ``presegmentations.ready`` counts the images whose pre-segmentation by the current model
    is stored (served without a network pass); hits and misses count since the server started.
    """
    ready = presegmentations.count(model_version) if model_version is not None else 0
    return {
        "compute": compute.stats().to_dict(),
        "presegmentations": {**presegmentations.counts().to_dict(), "ready": ready, "model_version": model_version},
    }


def project_status(
    *,
    datastore: Datastore,
    model_store: ModelStore,
    score_store: ScoreStore,
    submissions: SubmissionLog,
    stop_rule: StopRule,
    stop_window: int,
    training_running: bool = False,
    audits: AuditLog | None = None,
    label_versions: LabelVersionStore | None = None,
    readers: int = 1,
) -> dict[str, Any]:
    """Labeled / total, the current model and its validation Dice, score freshness, stop advice.

    Scores count over unlabeled volumes only (the ones strategies choose from): fresh when
    computed by the current model version, stale when by an older one.  Automation counts
    volumes whose label is the model's: unlabeled ones with an ``auto`` label that triage
    accepted and no audit rejected, and those whose auto label an audit accepted as final.
    Auto labels that triage sent back (predicted quality below the threshold calibrated on the
    model's validation volumes) count as ``sent_back``; ``expected_accuracy`` is the share of
    calibration volumes above the threshold that passed the audit mark.  With ``readers`` > 1,
    ``readers`` reports volumes awaiting more readers and the inter-reader Dice of consensus labels.
    ``slices`` counts the axial slices annotated in the final labels the server stored (partial
    labels annotate only some), out of the slices of those volumes.
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
    rejected = audits.rejected() if audits else {}
    live = [
        image_id
        for image_id in unlabeled
        if AUTO_TAG in datastore.get_labels_by_image_id(image_id)
        and auto_version(datastore, image_id) not in rejected.get(image_id, set())
    ]
    triage = {image_id: auto_label_triage(datastore, image_id, tag=AUTO_TAG) for image_id in live}
    auto = [image_id for image_id in live if triage[image_id].accepted]
    calibration = (model.calibration if model else None) or {}
    coverage = [datastore.get_label_info(image_id, FINAL_TAG) or {} for image_id in labeled]
    recorded = [info for info in coverage if isinstance(info.get("slices"), int)]
    audit = audits.summary() if audits else None
    in_use = len(auto) + (audit.accepted if audit else 0)
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
            "partially_labeled": sum(bool(info.get("partial")) for info in recorded),
        },
        "slices": {
            "annotated": sum(
                len(info.get("annotated_slices") or []) if info.get("partial") else info["slices"] for info in recorded
            ),
            "in_labeled_volumes": sum(int(info.get("slices") or 0) for info in recorded),
            "labels_counted": len(recorded),
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
            "auto_labeled": in_use,
            "automation": in_use / len(images) if images else 0.0,
            "audited": audit.audited if audit else 0,
            "accepted": audit.accepted if audit else 0,
            "rejected": audit.rejected if audit else 0,
            "corrected": audit.corrected if audit else 0,
            "acceptance_rate": audit.acceptance_rate if audit else None,
            "sent_back": len(live) - len(auto),
            "quality_threshold": calibration.get("threshold"),
            "expected_accuracy": calibration.get("expected_accuracy"),
            "calibration_volumes": calibration.get("volumes", 0),
        },
        "readers": _reader_status(label_versions, readers=readers, unlabeled=unlabeled),
    }


def _reader_status(versions: LabelVersionStore | None, *, readers: int, unlabeled: list[str]) -> dict[str, Any]:
    """Readers needed per volume, volumes awaiting more, and mean inter-reader Dice of consensus labels."""
    counts = versions.reader_counts() if versions else {}
    consensus = versions.consensus_versions() if versions else []
    per_label: dict[str, list[float]] = {}
    for version in consensus:
        for name, value in ((version.details or {}).get("dice") or {}).items():
            per_label.setdefault(name, []).append(float(value))
    means = [float((v.details or {}).get("mean_dice")) for v in consensus if (v.details or {}).get("mean_dice")]
    return {
        "required": readers,
        "awaiting": sum(1 for image_id in unlabeled if 0 < counts.get(image_id, 0) < readers),
        "consensus": len(consensus),
        "inter_reader_dice": {name: sum(values) / len(values) for name, values in per_label.items()},
        "mean_inter_reader_dice": sum(means) / len(means) if means else None,
    }
