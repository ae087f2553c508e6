"""What the module panel shows for a given state of the session: texts and enabled buttons.

The widget applies a :class:`PanelView` to its Qt widgets by name and holds no display rules
of its own, so those rules are tested without Qt, and the same view renders the panel picture
outside Slicer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .session import PreSegmentation, Sample, ServerSummary, Submission, TaskProgress, format_duration

UNCERTAINTY_MAP_TOOLTIP = (
    "Overlay the current model's voxel uncertainty (the server's metric) on the image: "
    "red where the model is unsure, the places worth checking first"
)


@dataclass(frozen=True)
class PanelView:
    """Texts of labels and enabled states of controls, by widget name in ``ActiveLabel.ui``."""

    texts: dict[str, str] = field(default_factory=dict)
    enabled: dict[str, bool] = field(default_factory=dict)


def panel_view(
    *,
    summary: ServerSummary | None,
    sample: Sample | None,
    presegmentation: PreSegmentation | None,
    seconds_on_sample: float,
    last_submission: Submission | None,
    task: TaskProgress | None,
    busy: bool,
) -> PanelView:
    """The panel for this state; ``busy`` while a server call runs (actions wait for it)."""
    connected = summary is not None
    has_sample = sample is not None
    task_running = bool(task and task.running)
    texts = {
        "appLabel": _app_text(summary),
        "progressLabel": summary.progress_text if summary else "",
        "modelLabel": summary.model_text if summary else "",
        "stopLabel": summary.stop_text if summary else "",
        "sampleLabel": _sample_text(sample, presegmentation),
        "uncertaintyLabel": sample.uncertainty_text if sample else "",
        "timeLabel": format_duration(seconds_on_sample) if has_sample else "",
        "submissionLabel": last_submission.text if last_submission else "",
        "taskLabel": task.text if task else "",
        "sliceLabel": sample.slice_queue.text if sample and sample.slice_queue else "whole volume",
    }
    queue = sample.slice_queue if sample else None
    enabled = {
        "connectButton": not busy,
        "strategyComboBox": connected,
        "nextSampleButton": connected and not busy,
        "skipButton": has_sample and not busy,
        "segmentButton": has_sample and not busy,
        "submitButton": has_sample and not busy,
        "trainButton": connected and not busy and not task_running,
        "stopTrainingButton": connected and task_running and task is not None and task.kind == "train",
        "scoreButton": connected and not busy and not task_running and bool(summary and summary.scoring_methods),
        "uncertaintyMapCheckBox": connected and not busy,
        "previousSliceButton": queue is not None and queue.position > 0,
        "nextSliceButton": queue is not None and queue.position < len(queue.slices) - 1,
    }
    return PanelView(texts=texts, enabled=enabled)


def _app_text(summary: ServerSummary | None) -> str:
    if summary is None:
        return "not connected"
    models = ", ".join(summary.models) or "none"
    return f"{summary.app_name or 'MONAI Label app'} — models: {models}; strategies: {len(summary.strategies)}"


def _sample_text(sample: Sample | None, presegmentation: PreSegmentation | None) -> str:
    if sample is None:
        return "no image loaded"
    if presegmentation is None:
        return f"{sample.image_id} (picked by {sample.strategy}; not segmented yet)"
    version = f"model v{presegmentation.model_version}" if presegmentation.model_version is not None else "the model"
    return f"{sample.image_id} (picked by {sample.strategy}; pre-segmented by {version})"
