"""What the module panel shows for a given state of the session: texts and enabled buttons.

The widget applies a :class:`PanelView` to its Qt widgets by name and holds no display rules
of its own, so those rules are tested without Qt, and the same view renders the panel picture
outside Slicer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .clicks import ClickSet
from .session import PreSegmentation, Sample, ServerSummary, Submission, TaskProgress, format_duration

UNCERTAINTY_MAP_TOOLTIP = (
    "Overlay the current model's voxel uncertainty (the server's metric) on the image: "
    "red where the model is unsure, the places worth checking first"
)

NO_REFINE_TEXT = "this server has no click-based correction (no 'refine' task)"


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
    clicks: ClickSet | None = None,
    selected_segment: str | None = None,
) -> PanelView:
    """The panel for this state; ``busy`` while a server call runs (actions wait for it).

    ``clicks`` are the clicks placed on the sample and ``selected_segment`` the segment the
    Segment Editor has selected (new clicks go to it).
    """
    connected = summary is not None
    can_refine = bool(summary and summary.can_refine) and sample is not None
    clicks = clicks if clicks is not None else ClickSet()
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
        "clicksLabel": _clicks_text(summary, sample, clicks, selected_segment),
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
        "positiveClickButton": can_refine and selected_segment is not None,
        "negativeClickButton": can_refine and selected_segment is not None,
        "clearClicksButton": can_refine and not clicks.empty,
        "refineButton": can_refine and not busy and not clicks.empty,
        "autoRefineCheckBox": can_refine,
    }
    return PanelView(texts=texts, enabled=enabled)


def _app_text(summary: ServerSummary | None) -> str:
    if summary is None:
        return "not connected"
    models = ", ".join(summary.models) or "none"
    return f"{summary.app_name or 'MONAI Label app'} — models: {models}; strategies: {len(summary.strategies)}"


def _clicks_text(
    summary: ServerSummary | None, sample: Sample | None, clicks: ClickSet, selected_segment: str | None
) -> str:
    if summary is None or sample is None:
        return ""
    if not summary.can_refine:
        return NO_REFINE_TEXT
    return clicks.text(selected_segment)


def _sample_text(sample: Sample | None, presegmentation: PreSegmentation | None) -> str:
    if sample is None:
        return "no image loaded"
    if presegmentation is None:
        return f"{sample.image_id} (picked by {sample.strategy}; not segmented yet)"
    version = f"model v{presegmentation.model_version}" if presegmentation.model_version is not None else "the model"
    return f"{sample.image_id} (picked by {sample.strategy}; pre-segmented by {version})"
