"""ActiveLabel: label the images an active-learning server finds most informative, in 3D Slicer.

The module is a thin layer: the labeling loop lives in ``ActiveLabelLib`` (plain Python,
tested outside Slicer), MRML node handling in ``ActiveLabelLib.nodes``, and what the panel
shows in ``ActiveLabelLib.panel``.  Server calls run on a worker thread; a timer on the UI
thread delivers their results, so the UI never freezes and errors appear as one-line messages.
Clicks for the server's ``refine`` task are markups fiducial nodes, two per segment
(``ActiveLabelLib.nodes.click_node``); ``ActiveLabelLib.clicks`` turns them into the request.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import qt
import slicer
import vtk
from ActiveLabelLib import nodes
from ActiveLabelLib.clicks import ClickSet
from ActiveLabelLib.client import ActiveLabelClient
from ActiveLabelLib.conversions import nifti_geometry
from ActiveLabelLib.errors import ActiveLabelError
from ActiveLabelLib.login import Login
from ActiveLabelLib.panel import UNCERTAINTY_MAP_TOOLTIP, panel_view
from ActiveLabelLib.session import (
    LabelingSession,
    PreSegmentation,
    Sample,
    Skip,
    Submission,
    TaskProgress,
    UncertaintyOverlay,
)
from ActiveLabelLib.settings import Settings
from ActiveLabelLib.worker import BackgroundCalls
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

TEST_SERVER_VARIABLE = "ACTIVELABEL_TEST_SERVER"
"""Environment variable with the URL of a throwaway server for the self-test."""

POLL_MILLISECONDS = 100
TASK_POLL_SECONDS = 2.0

logger = logging.getLogger(__name__)


class ActiveLabel(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ActiveLabel"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["ActiveLabel developers"]
        self.parent.helpText = (
            "Label the images an ActiveLabel server picks as most informative: connect, take the next "
            "sample with its pre-segmentation, correct it with the Segment Editor, submit, retrain."
        )
        self.parent.acknowledgementText = "Built on MONAI Label's REST API and 3D Slicer's Segment Editor."


class QSettingsStore:
    """The settings' key-value store on Slicer's QSettings (persists across Slicer sessions)."""

    def __init__(self) -> None:
        self._settings = qt.QSettings()

    def get(self, key: str) -> str | None:
        return str(self._settings.value(key)) if self._settings.contains(key) else None

    def put(self, key: str, value: str) -> None:
        self._settings.setValue(key, value)


class ActiveLabelWidget(ScriptedLoadableModuleWidget):
    """The panel: applies :func:`panel_view` to the widgets of ``ActiveLabel.ui`` and wires the buttons."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic: ActiveLabelLogic | None = None
        self.calls: BackgroundCalls | None = None
        self.polls: BackgroundCalls | None = None
        self.timer: Any = None
        self.store = QSettingsStore()
        self.settings = Settings()
        self.task: TaskProgress | None = None
        self.last_submission: Submission | None = None
        self._observed_click_nodes: dict[str, Any] = {}
        self._since_task_poll = 0.0

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        panel = slicer.util.loadUI(self.resourcePath("UI/ActiveLabel.ui"))
        self.layout.addWidget(panel)
        self.ui = slicer.util.childWidgetVariables(panel)
        panel.setMRMLScene(slicer.mrmlScene)
        self.logic = ActiveLabelLogic()
        self.calls = BackgroundCalls(name="activelabel-calls")
        self.polls = BackgroundCalls(name="activelabel-polls")
        self.ui.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.uncertaintyMapCheckBox.toolTip = UNCERTAINTY_MAP_TOOLTIP
        self._load_settings()

        self.ui.connectButton.connect("clicked(bool)", lambda _checked: self.on_connect())
        self.ui.nextSampleButton.connect("clicked(bool)", lambda _checked: self.on_next_sample())
        self.ui.skipButton.connect("clicked(bool)", lambda _checked: self.on_skip())
        self.ui.segmentButton.connect("clicked(bool)", lambda _checked: self.on_segment())
        self.ui.submitButton.connect("clicked(bool)", lambda _checked: self.on_submit())
        self.ui.trainButton.connect("clicked(bool)", lambda _checked: self.on_train())
        self.ui.stopTrainingButton.connect("clicked(bool)", lambda _checked: self.on_stop_training())
        self.ui.scoreButton.connect("clicked(bool)", lambda _checked: self.on_score())
        self.ui.previousSliceButton.connect("clicked(bool)", lambda _checked: self.on_step_slice(-1))
        self.ui.nextSliceButton.connect("clicked(bool)", lambda _checked: self.on_step_slice(+1))
        self.ui.positiveClickButton.connect("clicked(bool)", lambda _checked: self.on_place_clicks(positive=True))
        self.ui.negativeClickButton.connect("clicked(bool)", lambda _checked: self.on_place_clicks(positive=False))
        self.ui.clearClicksButton.connect("clicked(bool)", lambda _checked: self.on_clear_clicks())
        self.ui.refineButton.connect("clicked(bool)", lambda _checked: self.on_refine())
        self.ui.segmentEditorWidget.connect("currentSegmentIDChanged(QString)", self.on_segment_selected)
        for box in (self.ui.autoSegmentCheckBox, self.ui.autoFetchCheckBox, self.ui.autoRefineCheckBox):
            box.connect("toggled(bool)", lambda _checked: self._save_settings())
        self.ui.uncertaintyMapCheckBox.connect("toggled(bool)", self.on_uncertainty_toggled)

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MILLISECONDS)
        self.timer.connect("timeout()", self.on_tick)
        self.timer.start()
        self.refresh_view()

    def cleanup(self) -> None:
        if self.timer is not None:
            self.timer.stop()
        for calls in (self.calls, self.polls):
            if calls is not None:
                calls.shutdown()
        if self.logic is not None and self.logic.session is not None:
            self.logic.session.close()

    # -- actions (UI thread) ------------------------------------------------------------------

    def on_connect(self) -> None:
        url = self.ui.serverComboBox.currentText.strip()
        try:
            login = Login.from_form(
                user=self.ui.userLineEdit.text, token=self.ui.tokenLineEdit.text, password=self.ui.passwordLineEdit.text
            )
            session = self.logic.open_session(url, login=login)
        except ActiveLabelError as error:
            self.show_message(error.message, error=True)
            return
        self.settings = self.settings.with_server(url).with_login(login)  # the token, never the password
        self._save_settings()
        self._fill_server_history()
        self.run("Connecting…", session.connect, self.on_connected)

    def on_connected(self, summary: Any) -> None:
        self.ui.strategyComboBox.clear()
        for name in summary.strategies:
            self.ui.strategyComboBox.addItem(name)
        index = self.ui.strategyComboBox.findText(self.settings.strategy)
        self.ui.strategyComboBox.currentIndex = max(index, 0)
        session = self._session(quiet=True)
        login = session.client.login.text if session is not None else ""
        self.show_message(f"Connected to {summary.app_name or summary.url}; {login}.")

    def on_next_sample(self) -> None:
        session = self._session()
        if session is None:
            return
        strategy = self.ui.strategyComboBox.currentText
        self.settings = replace(self.settings, strategy=strategy)
        self._save_settings()
        self.logic.clear_sample()
        self.run(f"Asking {strategy} for the next sample…", lambda: session.next_sample(strategy), self.on_sample)

    def on_sample(self, sample: Sample) -> None:
        self.logic.show_sample(sample)
        self.show_message(f"Loaded {sample.image_id}.")
        if sample.slice_queue is not None:
            self.logic.show_slice(sample.slice_queue.current, axis=sample.slice_queue.axis)
            self.show_message(f"Loaded {sample.image_id}: {sample.slice_queue.text}.")
        session = self._session(quiet=True)
        if session is not None and session.presegmentation is not None:
            self.on_presegmentation(session.presegmentation)  # prefetched with the sample
        elif self.ui.autoSegmentCheckBox.checked:
            self.on_segment()
        else:
            self._edit(self.logic.ensure_segmentation())
        if self.ui.uncertaintyMapCheckBox.checked:
            self.on_uncertainty_map()
        if session is not None and self.settings.prefetch_next:
            session.start_prefetch(self.settings.strategy, segment=bool(self.ui.autoSegmentCheckBox.checked))

    def on_step_slice(self, step: int) -> None:
        session = self._session(quiet=True)
        queue = session.sample.slice_queue if session is not None and session.sample is not None else None
        if queue is None:
            return
        index = queue.next() if step > 0 else queue.previous()
        self.logic.show_slice(index, axis=queue.axis)
        self.refresh_view()

    def on_uncertainty_toggled(self, checked: bool) -> None:
        self._save_settings()
        session = self._session(quiet=True)
        if not checked:
            self.logic.hide_overlay()
        elif session is not None and session.sample is not None:
            self.on_uncertainty_map()

    def on_uncertainty_map(self) -> None:
        session = self._session()
        if session is not None:
            self.run("Computing the uncertainty map on the server…", session.uncertainty_map, self.on_overlay)

    def on_overlay(self, overlay: UncertaintyOverlay) -> None:
        session = self._session(quiet=True)
        if session is None or session.sample is None or session.sample.image_id != overlay.image_id:
            return  # the user moved on to another sample meanwhile
        if self.ui.uncertaintyMapCheckBox.checked:
            self.logic.show_overlay(overlay)
            self.show_message(overlay.text)

    def on_segment(self) -> None:
        session = self._session()
        if session is not None:
            self.run("Segmenting on the server…", session.segment, self.on_presegmentation)

    def on_presegmentation(self, presegmentation: PreSegmentation) -> None:
        self._edit(self.logic.show_presegmentation(presegmentation))
        self.show_message("Correct the segmentation, then submit it.")

    def on_segment_selected(self, segment_id: str) -> None:
        """Show the clicks of the segment the Segment Editor selected."""
        self.logic.show_clicks_of(segment_id or None)
        self.refresh_view()

    def on_place_clicks(self, *, positive: bool) -> None:
        segment = self._selected_segment()
        if segment is None:
            self.show_message("Select a segment in the Segment Editor first.", error=True)
            return
        try:
            node = self.logic.click_node(segment, positive=positive)
        except ActiveLabelError as error:
            self.show_message(error.message, error=True)
            return
        if self._observed_click_nodes.get(node.GetID()) is not node:
            node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.on_click_placed)
            self._observed_click_nodes[node.GetID()] = node
        kind = "positive (inside)" if positive else "negative (outside)"
        self.show_message(f"Click {kind} {segment} in the views; Esc or the arrow tool stops placing.")

    def on_click_placed(self, _caller: Any = None, _event: Any = None) -> None:
        self.refresh_view()
        if self.ui.autoRefineCheckBox.checked and not self.calls.busy:
            self.on_refine()

    def on_clear_clicks(self) -> None:
        self.logic.clear_clicks()
        self._observed_click_nodes.clear()
        self.refresh_view()

    def on_refine(self) -> None:
        session = self._session()
        if session is None:
            return
        try:  # MRML work stays on the UI thread
            clicks = self.logic.clicks()
            label_file = self.logic.export_label(name="refine_input", partial=False)
            grid = self.logic.image_grid()
        except ActiveLabelError as error:
            self.show_message(error.message, error=True)
            return
        self.run(
            "Refining on the server…",
            lambda: session.refine(label_file, clicks, grid=grid),
            lambda refined: self.on_refined(refined, clicks),
        )

    def on_refined(self, refined: PreSegmentation, clicks: ClickSet) -> None:
        session = self._session(quiet=True)
        if session is None or session.sample is None:
            return  # the user moved on meanwhile
        self._edit(self.logic.apply_refinement(refined, clicks.labels))
        self.show_message(f"Refined {', '.join(clicks.labels)}; click again, edit, or submit.")

    def on_submit(self) -> None:
        session = self._session()
        if session is None:
            return
        try:
            label_file = self.logic.export_label()  # MRML work stays on the UI thread
        except ActiveLabelError as error:
            self.show_message(error.message, error=True)
            return
        self.run("Submitting…", lambda: session.submit(label_file), self.on_submitted)

    def on_submitted(self, submission: Submission) -> None:
        self.last_submission = submission
        self.logic.clear_sample()
        self.show_message(submission.text)
        session = self._session()
        if session is not None:
            self.run("Reading the project status…", session.refresh, lambda _summary: None)
        if self.ui.autoFetchCheckBox.checked:
            self.on_next_sample()

    def on_skip(self) -> None:
        session = self._session()
        if session is None:
            return
        self.logic.clear_sample()
        self.run("Skipping…", session.skip, self.on_skipped)

    def on_skipped(self, skip: Skip) -> None:
        self.show_message(skip.text)
        self.on_next_sample()

    def on_train(self) -> None:
        session = self._session()
        if session is not None:
            options = {"max_epochs": int(self.ui.epochsSpinBox.value)}
            self.run("Starting training…", lambda: session.start_training(options), self.on_task)

    def on_stop_training(self) -> None:
        session = self._session()
        if session is not None:
            self.run("Stopping training…", session.stop_training, self.on_task)

    def on_score(self) -> None:
        session = self._session()
        if session is not None:
            self.run("Starting scoring…", session.start_scoring, self.on_task)

    def on_task(self, progress: TaskProgress) -> None:
        finished = self.task is not None and self.task.running and not progress.running
        self.task = progress
        self.ui.taskLogText.setPlainText("\n".join(progress.details[-200:]))
        if finished and self._session() is not None:
            self.polls.submit(self._session().refresh, on_done=lambda _s: self.refresh_view(), on_error=self.on_error)
        self.refresh_view()

    # -- plumbing -----------------------------------------------------------------------------

    def run(self, message: str, call: Callable[[], Any], on_done: Callable[[Any], None]) -> None:
        """Run a server call on the worker thread; ``on_done`` runs on the UI thread."""
        self.show_message(message)
        self.calls.submit(call, on_done=on_done, on_error=self.on_error)
        self.refresh_view()

    def on_error(self, error: ActiveLabelError) -> None:
        logger.warning("ActiveLabel: %s", error.message)
        self.show_message(error.message, error=True)

    def on_tick(self) -> None:
        """Deliver finished calls, poll a running task, update the clock."""
        delivered = self.calls.poll() + self.polls.poll()
        self._since_task_poll += POLL_MILLISECONDS / 1000
        session = self._session(quiet=True)
        task_running = bool(self.task and self.task.running and session)
        if task_running and not self.polls.busy and self._since_task_poll >= TASK_POLL_SECONDS:
            self._since_task_poll = 0.0
            poll = session.training_progress if self.task.kind == "train" else session.scoring_progress
            self.polls.submit(poll, on_done=self.on_task, on_error=self.on_error)
        if delivered or session is not None:
            self.refresh_view()

    def refresh_view(self) -> None:
        session = self._session(quiet=True)
        view = panel_view(
            summary=session.summary if session else None,
            sample=session.sample if session else None,
            presegmentation=session.presegmentation if session else None,
            seconds_on_sample=session.seconds_on_sample() if session else 0.0,
            last_submission=self.last_submission,
            task=self.task,
            busy=bool(self.calls and self.calls.busy),
            clicks=self.logic.clicks() if self.logic and self.logic.volume is not None else None,
            selected_segment=self._selected_segment(),
        )
        for name, text in view.texts.items():
            getattr(self.ui, name).text = text
        for name, enabled in view.enabled.items():
            getattr(self.ui, name).enabled = enabled

    def show_message(self, text: str, *, error: bool = False) -> None:
        self.ui.messageLabel.text = text
        self.ui.messageLabel.styleSheet = "color: #c0392b; font-weight: bold;" if error else ""

    def _session(self, *, quiet: bool = False) -> LabelingSession | None:
        session = self.logic.session if self.logic else None
        if session is None and not quiet:
            self.show_message("Connect to a server first.", error=True)
        return session

    def _selected_segment(self) -> str | None:
        """The segment selected in the Segment Editor (segment ids are the label names)."""
        if self.logic is None or self.logic.segmentation is None:
            return None
        return self.ui.segmentEditorWidget.currentSegmentID() or None

    def _edit(self, segmentation: Any) -> None:
        editor = self.ui.segmentEditorWidget
        editor.setMRMLSegmentEditorNode(self.logic.editor_node())
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(self.logic.volume)  # Slicer >= 5.4 (before: setMasterVolumeNode)

    def _load_settings(self) -> None:
        self.settings = Settings.load(self.store)
        self._fill_server_history()
        self.ui.userLineEdit.text = self.settings.user
        self.ui.tokenLineEdit.text = self.settings.token
        self.ui.autoRefineCheckBox.checked = self.settings.auto_refine
        self.ui.autoSegmentCheckBox.checked = self.settings.auto_segment
        self.ui.autoFetchCheckBox.checked = self.settings.auto_fetch_next
        self.ui.uncertaintyMapCheckBox.checked = self.settings.show_uncertainty_map

    def _fill_server_history(self) -> None:
        box = self.ui.serverComboBox
        box.clear()
        for url in self.settings.server_history or (self.settings.server_url,):
            box.addItem(url)
        box.setEditText(self.settings.server_url)

    def _save_settings(self) -> None:
        self.settings = replace(
            self.settings,
            auto_refine=bool(self.ui.autoRefineCheckBox.checked),
            auto_segment=bool(self.ui.autoSegmentCheckBox.checked),
            auto_fetch_next=bool(self.ui.autoFetchCheckBox.checked),
            show_uncertainty_map=bool(self.ui.uncertaintyMapCheckBox.checked),
        )
        self.settings.save(self.store)


class ActiveLabelLogic(ScriptedLoadableModuleLogic):
    """Holds the session and the sample's nodes; everything here runs on the UI thread.

    Args:
        scene: the MRML scene (Slicer's own by default).
    """

    def __init__(self, scene: Any = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.session: LabelingSession | None = None
        self.volume: Any = None
        self.segmentation: Any = None
        self.overlay: Any = None
        self._editor_node: Any = None

    def open_session(self, url: str, *, login: Login) -> LabelingSession:
        """A new session with the server at ``url`` for ``login`` (not connected yet)."""
        client = ActiveLabelClient(url, client_id=login.user, token=login.token, password=login.password)
        workdir = Path(tempfile.mkdtemp(prefix="ActiveLabel-", dir=slicer.app.temporaryPath))
        if self.session is not None:
            self.session.close()
        self.session = LabelingSession(client, workdir=workdir)
        return self.session

    def show_sample(self, sample: Sample) -> Any:
        """Load the sample's image and show it in the slice views."""
        self.clear_sample()
        self.volume = nodes.read_volume(self.scene, sample.image_file, name=sample.image_id)
        slicer.util.setSliceViewerLayers(background=self.volume, foreground=None, label=None, fit=True)
        return self.volume

    def show_overlay(self, overlay: UncertaintyOverlay, *, opacity: float = 0.4) -> Any:
        """Show the voxel uncertainty map as the slice views' foreground layer over the image."""
        self.hide_overlay()
        self.overlay = nodes.read_overlay(self.scene, overlay.map_file, name=f"{overlay.image_id} uncertainty")
        slicer.util.setSliceViewerLayers(foreground=self.overlay, foregroundOpacity=opacity)
        return self.overlay

    def hide_overlay(self) -> None:
        """Remove the uncertainty overlay (the image and segmentation stay)."""
        nodes.remove_nodes(self.scene, self.overlay)
        self.overlay = None

    def show_presegmentation(self, presegmentation: PreSegmentation) -> Any:
        """Load the server's segmentation as named, coloured segments over the image."""
        self._remove_segmentation()
        self.segmentation = nodes.load_segmentation(
            self.scene,
            presegmentation.label_file,
            reference=self._volume(),
            label_names=presegmentation.label_names,
            name=f"{self._volume().GetName()} segmentation",
        )
        return self.segmentation

    def ensure_segmentation(self) -> Any:
        """The sample's segmentation; empty segments for every label when there is none yet."""
        if self.segmentation is None:
            self.segmentation = nodes.new_segmentation(
                self.scene,
                reference=self._volume(),
                label_names=self._label_names(),
                name=f"{self._volume().GetName()} segmentation",
            )
        return self.segmentation

    def export_label(self, *, name: str = "final", partial: bool = True) -> Path:
        """Write the segmentation as a label map on the image's grid, ready to submit (or to refine).

        With ``partial`` a slice sample's label holds only its slices (what is submitted); the
        refine task gets the whole mask.
        """
        if self.session is None or self.session.sample is None:
            raise ActiveLabelError("no sample is loaded; ask for the next sample first")
        image_file = self.session.sample.image_file
        path = self.session.workdir / f"{self.session.sample.image_id}_{name}.nii.gz"
        # Back on the grid the server's file declares (ITK may have reordered a left-handed one).
        target = nifti_geometry(image_file) if image_file.name.lower().endswith((".nii", ".nii.gz")) else None
        return nodes.write_label_file(
            self.scene,
            self.ensure_segmentation(),
            reference=self._volume(),
            label_names=self._label_names(),
            path=path,
            target=target,
            slices=self.session.sample.slice_queue if partial else None,
        )

    def image_grid(self) -> Any:
        """The image's grid for refine's clicks: ``None`` for NIfTI (the session reads the file's header)."""
        image_file = self.session.sample.image_file if self.session and self.session.sample else None
        if image_file is not None and image_file.name.lower().endswith((".nii", ".nii.gz")):
            return None
        return nodes.volume_geometry(self._volume())

    def click_node(self, segment: str, *, positive: bool) -> Any:
        """The node of ``segment``'s positive (or negative) clicks, in place mode; only its segment's show."""
        self._volume()
        node = nodes.click_node(self.scene, segment, positive=positive)
        nodes.show_clicks_of(self.scene, segment)
        nodes.start_placing(self.scene, node)
        return node

    def clicks(self) -> ClickSet:
        """Every click placed on the sample (RAS mm, by segment)."""
        return nodes.clicks_from_nodes(self.scene)

    def show_clicks_of(self, segment: str | None) -> None:
        nodes.show_clicks_of(self.scene, segment)

    def clear_clicks(self) -> None:
        nodes.remove_clicks(self.scene)

    def apply_refinement(self, refined: PreSegmentation, names: tuple[str, ...]) -> Any:
        """Replace the clicked segments by the refine task's answer; the other segments keep their edits."""
        segmentation = self.ensure_segmentation()
        nodes.replace_segments(
            self.scene,
            segmentation,
            refined.label_file,
            reference=self._volume(),
            label_names=refined.label_names,
            names=names,
        )
        return segmentation

    def show_slice(self, index: int, *, axis: int) -> None:
        """Centre the slice view across ``axis`` on slice ``index`` of the sample (voxel axis of its file)."""
        volume = self._volume()
        dimensions = volume.GetImageData().GetDimensions()
        ijk = [(size - 1) / 2.0 for size in dimensions] + [1.0]
        ijk[axis] = float(index)
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        ras = matrix.MultiplyPoint(ijk)[:3]
        layout = slicer.app.layoutManager() if hasattr(slicer, "app") else None
        if layout is None:
            return  # no views (MRML without the application)
        view = {0: "Yellow", 1: "Green"}.get(axis, "Red")  # sagittal, coronal, axial
        layout.sliceWidget(view).mrmlSliceNode().JumpSliceByCentering(*ras)

    def editor_node(self) -> Any:
        """The Segment Editor's parameter node (made again if the scene was closed)."""
        if self._editor_node is None or self._editor_node.GetScene() is None:
            self._editor_node = self.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "ActiveLabel editor")
        return self._editor_node

    def clear_sample(self) -> None:
        """Remove the sample's image, segmentation, overlay and clicks from the scene."""
        self.clear_clicks()
        self.hide_overlay()
        self._remove_segmentation()
        nodes.remove_nodes(self.scene, self.volume)
        self.volume = None

    def _remove_segmentation(self) -> None:
        nodes.remove_nodes(self.scene, self.segmentation)
        self.segmentation = None

    def _volume(self) -> Any:
        if self.volume is None:
            raise ActiveLabelError("no image is loaded; ask for the next sample first")
        return self.volume

    def _label_names(self) -> dict[str, int]:
        session = self.session
        if session and session.presegmentation:
            return session.presegmentation.label_names
        if session and session.summary and session.summary.label_names:
            return session.summary.label_names
        raise ActiveLabelError("the server named no labels; connect again")


class ActiveLabelTest(ScriptedLoadableModuleTest):
    """Self-test: the whole labeling loop inside Slicer against a throwaway server.

    Set ``ACTIVELABEL_TEST_SERVER`` to the server's URL; the test submits a label, so use a
    server on generated data (``activelabel data generate``), never a real project.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:  # noqa: N802 -- the name Slicer's test runner calls
        self.setUp()
        self.test_labeling_loop()

    def test_labeling_loop(self) -> None:
        url = os.environ.get(TEST_SERVER_VARIABLE, "").strip()
        if not url:
            self.delayDisplay(f"Skipped: set {TEST_SERVER_VARIABLE} to the URL of a throwaway ActiveLabel server")
            return
        self.delayDisplay(f"Labeling loop against {url}")
        logic = ActiveLabelLogic()
        session = logic.open_session(url, login=Login(user="slicer-self-test"))
        summary = session.connect()
        assert (summary.total or 0) > (summary.labeled or 0), "the server has no unlabeled image left"

        strategy = "most_uncertain" if "most_uncertain" in summary.strategies else summary.strategies[0]
        sample = session.next_sample(strategy)
        volume = logic.show_sample(sample)
        segmentation = logic.show_presegmentation(session.segment())
        names = session.presegmentation.label_names
        assert segmentation.GetSegmentation().GetNumberOfSegments() == len(names), "one segment per label expected"

        overlay = session.uncertainty_map()
        overlay_node = logic.show_overlay(overlay)
        assert overlay_node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions(), "map off-grid"

        first = next(iter(names))
        if summary.can_refine:  # one positive click in the image's centre, refined by the server
            centre = [(size - 1) / 2.0 for size in volume.GetImageData().GetDimensions()] + [1.0]
            matrix = vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(matrix)
            nodes.click_node(logic.scene, first, positive=True).AddControlPoint(*matrix.MultiplyPoint(centre)[:3])
            clicks = logic.clicks()
            label_file = logic.export_label(name="refine_input", partial=False)
            refined = session.refine(label_file, clicks, grid=logic.image_grid())
            logic.apply_refinement(refined, clicks.labels)
            logic.clear_clicks()
        masks = nodes.segment_masks(logic.scene, segmentation, reference=volume)
        edited = masks[first].copy()
        edited[: edited.shape[0] // 4, : edited.shape[1] // 4, : edited.shape[2] // 4] = True
        nodes.set_segment_mask(logic.scene, segmentation, first, edited, reference=volume)

        submission = session.submit(logic.export_label())
        assert submission.image_id == sample.image_id, submission
        assert submission.author == "slicer-self-test", submission
        assert submission.agreement is not None, "the server kept no pre-segmentation to compare with"
        status = session.client.status()
        if status is not None:
            assert status["submissions"]["with_agreement"] >= 1, status["submissions"]
        logic.clear_sample()
        self.delayDisplay(f"Test passed: {submission.text}")
