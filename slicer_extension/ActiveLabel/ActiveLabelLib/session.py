"""The labeling loop of one user, without any UI: connect, next sample, segment, submit, skip, train.

The Slicer widget calls these methods from a worker thread and shows what they return;
everything here is plain Python over :class:`~ActiveLabelLib.client.ActiveLabelClient` and
files in a work folder, so the whole loop runs and is tested outside Slicer.

While the clinician edits one sample, :meth:`LabelingSession.start_prefetch` fetches the next
one and its pre-segmentation on the session's own thread, so Next shows it at once.
:meth:`LabelingSession.refine` sends the clinician's clicks and the current mask to the
server's ``refine`` task and returns the corrected segmentation.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .clicks import ClickSet
from .client import REFINE_MODEL, ActiveLabelClient
from .conversions import VolumeGeometry, nifti_geometry
from .errors import ActiveLabelError
from .multipart import FilePart
from .slices import SliceQueue

FALLBACK_STRATEGY = "random"
"""Asked when the chosen strategy offers an image this user skipped (the server has no exclusion list)."""

PENDING_STATES = frozenset({"SUBMITTED", "RUNNING"})
"""MONAI Label task states of a task that has not finished (queued or running)."""

FALLBACK_ATTEMPTS = 8
"""How many seeded random picks to try before giving up on finding an image that was not skipped."""

PREFETCH_WAIT_SECONDS = 300.0
"""How long Next waits for a prefetch still in flight before asking the server itself."""


@dataclass(frozen=True)
class ServerSummary:
    """What the connect panel shows: the app, its models and strategies, the project's progress."""

    url: str
    app_name: str
    models: tuple[str, ...]
    strategies: tuple[str, ...]
    label_names: dict[str, int]
    scoring_methods: tuple[str, ...] = ()
    labeled: int | None = None
    total: int | None = None
    model_version: int | None = None
    val_mean_dice: float | None = None
    recent_agreement: float | None = None
    stop_recommended: bool | None = None
    stop_reason: str = ""
    estimated_labels_needed: int | None = None
    training_running: bool = False
    can_refine: bool = False
    """Whether the server offers the click-based ``refine`` task."""

    @classmethod
    def from_answers(
        cls, url: str, info: Mapping[str, Any], status: Mapping[str, Any] | None, *, model: str
    ) -> ServerSummary:
        """Built from ``GET /info/`` and ``GET /activelabel/status`` (``None`` from plain MONAI Label)."""
        models = info.get("models") or {}
        summary = cls(
            url=url,
            app_name=str(info.get("name", "")),
            models=tuple(models),
            can_refine=REFINE_MODEL in models,
            strategies=tuple(info.get("strategies") or {}),
            label_names=_label_names((models.get(model) or {}).get("labels")),
            scoring_methods=tuple(info.get("scoring") or {}),
        )
        if not status:
            return summary
        images, trained = status.get("images") or {}, status.get("model") or {}
        stop, submissions = status.get("stop") or {}, status.get("submissions") or {}
        return replace(
            summary,
            labeled=images.get("labeled"),
            total=images.get("total"),
            model_version=trained.get("version"),
            val_mean_dice=trained.get("val_mean_dice"),
            recent_agreement=submissions.get("recent_agreement"),
            stop_recommended=stop.get("stop_recommended"),
            stop_reason=str(stop.get("reason") or ""),
            estimated_labels_needed=stop.get("estimated_labels_needed"),
            training_running=bool((status.get("training") or {}).get("running")),
        )

    @property
    def progress_text(self) -> str:
        """e.g. ``3 / 12 labeled (25%)``."""
        if self.labeled is None or not self.total:
            return "progress unknown (plain MONAI Label server)"
        return f"{self.labeled} / {self.total} labeled ({100 * self.labeled / self.total:.0f}%)"

    @property
    def model_text(self) -> str:
        """e.g. ``model v2, validation Dice 0.81``."""
        if self.model_version is None:
            return "model unknown"
        dice = f"validation Dice {self.val_mean_dice:.2f}" if self.val_mean_dice is not None else "not validated yet"
        return f"model v{self.model_version}, {dice}"

    @property
    def stop_text(self) -> str:
        """The stop rule's advice in one line."""
        if self.stop_recommended is None:
            return ""
        if self.stop_recommended:
            return f"Stop recommended: {self.stop_reason}".rstrip(": ")
        needed = f"; about {self.estimated_labels_needed} more labels" if self.estimated_labels_needed else ""
        return f"Keep labeling{needed}" + (f" ({self.stop_reason})" if self.stop_reason else "")


@dataclass(frozen=True)
class Sample:
    """The image being labeled: where it came from and why it was picked."""

    image_id: str
    image_file: Path
    strategy: str
    score: float | None = None
    rank: int | None = None
    ranked: int | None = None
    metric: str | None = None
    note: str = ""
    slice_queue: SliceQueue | None = None
    """The slices to draw, when the strategy asked for slices rather than the whole volume."""

    @property
    def uncertainty_text(self) -> str:
        """e.g. ``mutual_information 0.0123, rank 1 of 9`` (or why there is no score)."""
        if self.score is None:
            return self.note or f"picked by {self.strategy} (no uncertainty score)"
        rank = f", rank {self.rank}" + (f" of {self.ranked}" if self.ranked else "") if self.rank else ""
        return f"{self.metric or 'score'} {self.score:.4g}{rank}" + (f" — {self.note}" if self.note else "")


@dataclass(frozen=True)
class PreSegmentation:
    """The server's segmentation of the sample, stored as its ``original`` label."""

    label_file: Path
    label_names: dict[str, int]
    model_version: int | None


@dataclass(frozen=True)
class Prefetched:
    """The sample after the current one, downloaded with its pre-segmentation while the current one is edited."""

    strategy: str
    sample: Sample
    presegmentation: PreSegmentation | None


@dataclass(frozen=True)
class Submission:
    """What the server recorded for a submitted label."""

    image_id: str
    seconds_spent: float
    agreement: float | None
    model_version: int | None
    author: str | None

    @property
    def text(self) -> str:
        """e.g. ``ct_004 submitted after 2 min 05 s; agreement with the model 0.87``."""
        spent = format_duration(self.seconds_spent)
        agreed = (
            f"agreement with the model {self.agreement:.2f}"
            if self.agreement is not None
            else "no pre-segmentation to compare with"
        )
        return f"{self.image_id} submitted after {spent}; {agreed}"


@dataclass(frozen=True)
class Skip:
    """A skipped sample and whether the server released its lease."""

    image_id: str
    released_on_server: bool

    @property
    def text(self) -> str:
        """What happened, for the message line."""
        others = "other users can get it now" if self.released_on_server else "the server holds no lease on it"
        return f"Skipped {self.image_id}: not offered to you again in this session; {others}."


@dataclass(frozen=True)
class TaskProgress:
    """The latest background task of one kind (``train`` or ``scoring``) on the server."""

    kind: str
    state: str
    running: bool
    details: tuple[str, ...] = ()

    @classmethod
    def from_task(cls, kind: str, task: Mapping[str, Any] | None) -> TaskProgress:
        """From ``GET /train/`` or ``GET /scoring/`` (``None`` when no such task ever ran)."""
        if not task:
            return cls(kind=kind, state="never run", running=False)
        state = str(task.get("status") or "unknown")
        details = task.get("details") or []
        lines = tuple(str(line) for line in details) if isinstance(details, list) else (str(details),)
        return cls(kind=kind, state=state, running=state in PENDING_STATES, details=lines)

    @property
    def text(self) -> str:
        """e.g. ``train: RUNNING — Epoch 3/20 ...`` (the last log line)."""
        last = f" — {self.details[-1]}" if self.details else ""
        return f"{self.kind}: {self.state}{last}"


@dataclass(frozen=True)
class UncertaintyOverlay:
    """The voxel uncertainty map of the sample, ready to show over the image."""

    image_id: str
    map_file: Path
    metric: str
    model_version: int | None

    @property
    def text(self) -> str:
        version = f"model v{self.model_version}" if self.model_version is not None else "the model"
        return f"{self.metric or 'uncertainty'} map of {self.image_id} from {version}: bright = unsure"


class LabelingSession:
    """One user's labeling loop against one server.

    Args:
        client: the server connection (its ``client_id`` is the author of submissions).
        workdir: where downloaded images and segmentations are written.
        model: the infer/train task; ``None`` takes the server's first model on connect
            (other than ``refine``, which corrects a segmentation rather than making one).
        clock: seconds since any fixed point; measures the time spent on a sample.
    """

    def __init__(
        self,
        client: ActiveLabelClient,
        *,
        workdir: str | Path,
        model: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.workdir = Path(workdir)
        self.model = model
        self.clock = clock
        self.summary: ServerSummary | None = None
        self.sample: Sample | None = None
        self.presegmentation: PreSegmentation | None = None
        self.skipped: set[str] = set()
        self._started_at: float | None = None
        self._lock = threading.Lock()
        self._prefetched: Prefetched | None = None
        self._prefetching: Future[Prefetched] | None = None
        self._prefetcher: ThreadPoolExecutor | None = None

    def connect(self) -> ServerSummary:
        """Read the server's info and project status."""
        info = self.client.info()
        models = list(info.get("models") or {})
        if self.model is None:
            segmenters = [name for name in models if name != REFINE_MODEL]
            if not segmenters:
                raise ActiveLabelError(f"the server at {self.client.server_url} offers no segmentation model")
            self.model = segmenters[0]
        elif self.model not in models:
            raise ActiveLabelError(f"the server has no model {self.model!r}; it offers: {', '.join(models)}")
        self.summary = ServerSummary.from_answers(self.client.server_url, info, self.client.status(), model=self.model)
        return self.summary

    def refresh(self) -> ServerSummary:
        """Read the project status again (after a submission or training)."""
        return self.connect()

    def next_sample(self, strategy: str, *, params: Mapping[str, Any] | None = None) -> Sample:
        """Ask ``strategy`` for the next image and download it; the clock starts.

        A sample prefetched for the same strategy is taken instead (waiting for a prefetch
        still in flight), together with its pre-segmentation: no server call.  An image this
        user skipped is not served again: when the strategy offers one, seeded random picks
        are asked instead.

        Raises:
            ActiveLabelError: when no unlabeled image is left, or only skipped ones.
        """
        taken = self._take_prefetched(strategy)
        if taken is not None:
            self.sample, self.presegmentation = taken.sample, taken.presegmentation
        else:
            self.sample, self.presegmentation = self._fetch(strategy, params), None
        self._started_at = self.clock()
        return self.sample

    def start_prefetch(
        self, strategy: str, *, params: Mapping[str, Any] | None = None, segment: bool = True
    ) -> Future[Prefetched]:
        """Fetch the sample after the current one (and its pre-segmentation) on the session's own thread.

        The server leases it to this user; :meth:`next_sample` takes it.  A prefetch already in
        flight is returned instead of starting another.
        """
        with self._lock:
            if self._prefetching is not None and not self._prefetching.done():
                return self._prefetching
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="activelabel-prefetch")
            self._prefetching = self._prefetcher.submit(self.prefetch, strategy, params=params, segment=segment)
            return self._prefetching

    def prefetch(self, strategy: str, *, params: Mapping[str, Any] | None = None, segment: bool = True) -> Prefetched:
        """Fetch the sample after the current one now; the current sample and the clock stay as they are."""
        current = self.sample
        exclude = sorted(self.skipped | ({current.image_id} if current is not None else set()))
        sample = self._fetch(strategy, {**(params or {}), "exclude": exclude})
        presegmentation = self._segment(sample) if segment else None
        prefetched = Prefetched(strategy, sample, presegmentation)
        with self._lock:
            self._prefetched = prefetched
        return prefetched

    @property
    def prefetched(self) -> Prefetched | None:
        """The prefetched sample waiting for Next, if any."""
        with self._lock:
            return self._prefetched

    def close(self) -> None:
        """Stop the prefetch thread (a prefetch in flight finishes in the background)."""
        with self._lock:
            prefetcher, self._prefetcher = self._prefetcher, None
        if prefetcher is not None:
            prefetcher.shutdown(wait=False, cancel_futures=True)

    def _take_prefetched(self, strategy: str) -> Prefetched | None:
        """The prefetched sample for ``strategy``, or None; one for another strategy is given back."""
        with self._lock:
            pending, self._prefetching = self._prefetching, None
        if pending is not None:
            # A prefetch that failed or hangs leaves nothing to take: Next asks the server itself.
            with contextlib.suppress(ActiveLabelError, TimeoutError):
                pending.result(timeout=PREFETCH_WAIT_SECONDS)
        with self._lock:
            taken, self._prefetched = self._prefetched, None
        if taken is None:
            return None
        if taken.strategy != strategy or taken.sample.image_id in self.skipped:
            self.client.skip(taken.sample.image_id)  # not wanted now: end its lease
            return None
        return taken

    def _fetch(self, strategy: str, params: Mapping[str, Any] | None) -> Sample:
        """Ask ``strategy`` for an image (never one this user skipped) and download it."""
        answer = self.client.next_sample(strategy, params)
        note = ""
        for seed in range(FALLBACK_ATTEMPTS + 1):
            if answer.get("id") not in self.skipped:
                break
            self.client.skip(answer["id"])  # the server leased it to us again: give it back
            if seed == FALLBACK_ATTEMPTS:
                raise ActiveLabelError(
                    "every image the server offered was skipped; label one or clear the skipped list"
                )
            note = f"{strategy} offered an image you skipped; picked at random instead"
            answer = self.client.next_sample(FALLBACK_STRATEGY, {**(params or {}), "seed": seed})
        image_id = answer.get("id")
        if not image_id:
            raise ActiveLabelError("no image is available: all unlabeled images are labeled or reserved by other users")
        image = self.client.download_image(image_id)
        path = self._write(f"{image_id}{_extension(image.filename)}", image.content)
        return Sample(
            image_id=image_id,
            image_file=path,
            strategy=str(answer.get("strategy") or strategy),
            score=_number(answer.get("score")),
            rank=_integer(answer.get("rank")),
            ranked=_integer(answer.get("ranked")),
            metric=answer.get("metric"),
            note=note or str(answer.get("fallback") or ""),
            slice_queue=_slice_queue(answer),
        )

    def segment(self) -> PreSegmentation:
        """Run the server's segmentation of the sample; the server keeps it as the ``original`` label.

        The clock restarts: correcting the pre-segmentation is the work being timed.
        """
        self.presegmentation = self._segment(self._current())
        self._started_at = self.clock()
        return self.presegmentation

    def _segment(self, sample: Sample) -> PreSegmentation:
        answer = self.client.infer(self._model(), sample.image_id, {"save_label": True})
        names = _label_names(answer.params.get("label_names")) or (self.summary.label_names if self.summary else {})
        if not names:
            raise ActiveLabelError("the server named no labels for its segmentation")
        name = f"{sample.image_id}_presegmentation{_extension(answer.label.filename)}"
        path = self._write(name, answer.label.content)
        version = answer.params.get("model_version")
        return PreSegmentation(path, names, version if isinstance(version, int) else None)

    def refine(
        self,
        label_file: str | Path | None,
        clicks: ClickSet,
        *,
        grid: VolumeGeometry | None = None,
    ) -> PreSegmentation:
        """The sample's segmentation corrected by the server's ``refine`` task from the clinician's clicks.

        The clicks (RAS mm) are sent as voxel indices of the image file, with the current mask
        (``label_file``, a label map on the image's grid; ``None``: the server refines its own
        segmentation).  The answer is a whole label map; the caller replaces the clicked
        segments with it (:attr:`ClickSet.labels`).  The clock keeps running and
        :attr:`presegmentation` stays the model's own output: refining is part of correcting.

        Args:
            label_file: the current mask, or ``None``.
            clicks: the clicks on the sample.
            grid: the image's voxel grid; ``None`` reads it from the image file's NIfTI header
                (exact even where Slicer reordered a left-handed grid).

        Raises:
            ActiveLabelError: no click, a server without ``refine``, a click outside the image.
        """
        sample = self._current()
        if clicks.empty:
            raise ActiveLabelError("place at least one positive or negative click before refining.")
        if self.summary is not None and not self.summary.can_refine:
            models = ", ".join(self.summary.models) or "none"
            raise ActiveLabelError(
                f"the server at {self.client.server_url} offers no click-based correction (no {REFINE_MODEL!r} "
                f"task); it offers: {models}."
            )
        grid = grid if grid is not None else nifti_geometry(sample.image_file)
        names = self.presegmentation.label_names if self.presegmentation else {}
        names = names or (self.summary.label_names if self.summary else {})
        params = clicks.params(
            ras_to_ijk=np.linalg.inv(grid.ijk_to_ras), shape=grid.shape, label_names=sorted(names, key=names.get)
        )
        label = None
        if label_file is not None:
            path = Path(label_file)
            label = FilePart(f"{sample.image_id}{_extension(path.name)}", path.read_bytes())
        answer = self.client.refine(sample.image_id, params, label=label)
        names = _label_names(answer.params.get("label_names")) or names
        if not names:
            raise ActiveLabelError("the server named no labels for its refined segmentation")
        path = self._write(f"{sample.image_id}_refined{_extension(answer.label.filename)}", answer.label.content)
        version = answer.params.get("model_version")
        return PreSegmentation(path, names, version if isinstance(version, int) else None)

    def uncertainty_map(self, *, metric: str | None = None) -> UncertaintyOverlay:
        """The server's voxel uncertainty map of the sample (the server's default metric if ``None``).

        The clock keeps running: looking at the map is part of the work on the sample.
        """
        sample = self._current()
        answer = self.client.uncertainty_map(sample.image_id, metric=metric)
        path = self._write(f"{sample.image_id}_uncertainty{_extension(answer.file.filename)}", answer.file.content)
        return UncertaintyOverlay(sample.image_id, path, answer.metric, answer.model_version)

    def seconds_on_sample(self) -> float:
        """Seconds since the sample (or its pre-segmentation) was shown; 0 without a sample."""
        return 0.0 if self._started_at is None else max(0.0, self.clock() - self._started_at)

    def submit(self, label_file: str | Path) -> Submission:
        """Upload the corrected label as the sample's ``final`` label, with the time spent on it."""
        sample = self._current()
        seconds = round(self.seconds_on_sample(), 1)
        path = Path(label_file)
        label = FilePart(f"{sample.image_id}{_extension(path.name)}", path.read_bytes())
        answer = self.client.save_label(sample.image_id, label, tag="final", params={"seconds_spent": seconds})
        recorded = answer.get("submission") or {}
        self._forget_sample()
        return Submission(
            image_id=sample.image_id,
            seconds_spent=_number(recorded.get("seconds_spent")) or seconds,
            agreement=_number(recorded.get("agreement")),
            model_version=_integer(recorded.get("model_version")),
            author=recorded.get("author"),
        )

    def skip(self) -> Skip:
        """Give the sample back without a label; it is not served to this session again.

        The server's lease on it ends, so other users can get it (servers without leases:
        nothing to release).
        """
        sample = self._current()
        self.skipped.add(sample.image_id)
        released = self.client.skip(sample.image_id)
        self._forget_sample()
        return Skip(sample.image_id, released)

    def start_training(self, options: Mapping[str, Any] | None = None) -> TaskProgress:
        """Start fine-tuning the model on the labeled images (it runs on the server)."""
        self.client.train_start(self._model(), options)
        return self.training_progress()

    def training_progress(self) -> TaskProgress:
        """The latest training task's state and log lines."""
        return TaskProgress.from_task("train", self.client.train_status())

    def stop_training(self, *, start_timeout: float = 15.0) -> TaskProgress:
        """Stop the running training task.

        The server can only stop a task whose process has started, so a task still queued
        ("SUBMITTED") is given up to ``start_timeout`` seconds to start before it is stopped.
        """
        deadline = time.monotonic() + start_timeout
        progress = self.training_progress()
        while progress.state == "SUBMITTED" and time.monotonic() < deadline:
            time.sleep(0.2)
            progress = self.training_progress()
        self.client.train_stop()
        return self.training_progress()

    def start_scoring(self) -> TaskProgress:
        """Score the unlabeled images with the server's first scoring method (fresh scores rank first)."""
        methods = self.summary.scoring_methods if self.summary else ()
        if not methods:
            raise ActiveLabelError("the server offers no scoring method")
        self.client.score_start(methods[0])
        return self.scoring_progress()

    def scoring_progress(self) -> TaskProgress:
        """The latest scoring task's state and log lines."""
        return TaskProgress.from_task("scoring", self.client.score_status())

    def _current(self) -> Sample:
        if self.sample is None:
            raise ActiveLabelError("no sample is loaded; ask for the next sample first")
        return self.sample

    def _model(self) -> str:
        if self.model is None:
            raise ActiveLabelError("not connected; connect to a server first")
        return self.model

    def _forget_sample(self) -> None:
        self.sample, self.presegmentation, self._started_at = None, None, None

    def _write(self, name: str, content: bytes) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / name
        path.write_bytes(content)
        return path


def _slice_queue(answer: Mapping[str, Any]) -> SliceQueue | None:
    """The slices an ``uncertain_slices`` answer names (``None`` for a whole-volume sample)."""
    slices = answer.get("slices")
    if not slices:
        return None
    axis = _integer(answer.get("axis"))
    if axis is None or not all(isinstance(s, int) and not isinstance(s, bool) for s in slices):
        raise ActiveLabelError(
            f"the server's slice answer is malformed: axis {answer.get('axis')!r}, slices {slices!r}"
        )
    return SliceQueue(axis=axis, slices=tuple(slices))


def format_duration(seconds: float) -> str:
    """``42 s``, ``2 min 05 s`` or ``1 h 02 min``: how long a clinician spent, at a glance."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _extension(filename: str) -> str:
    """``.nii.gz`` for compressed NIfTI, else the last suffix (``.nrrd``), else ``.nii.gz``."""
    name = filename.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(filename).suffix or ".nii.gz"


def _label_names(labels: object) -> dict[str, int]:
    """``name -> value`` from a model's labels, given as a mapping or as a list (values 1, 2, ...)."""
    if isinstance(labels, Mapping):
        return {str(name): int(value) for name, value in labels.items() if isinstance(value, int)}
    if isinstance(labels, list):
        return {str(name): index for index, name in enumerate(labels, start=1)}
    return {}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
