"""The Slicer module's client and labeling session against a real server subprocess.

Everything here is the plain-Python code the Slicer widget runs (no Slicer, no Qt).  The tests
share one server and run in file order: connect, score, next sample, pre-segmentation, an edit,
submit, resubmit, status, skip, training; then the error paths and the pieces without a server.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import slicer
from nibabel.affines import apply_affine

from activelabel.config import KEYS
from activelabel.ml.uncertainty import VolumeUncertainty
from activelabel.store.leases import LeaseStore
from activelabel.store.scores import ScoreStore
from activelabel.testing.server_process import ServerProcess, free_port
from tests.conftest import ServerFactory

EXTENSION = Path(__file__).resolve().parents[1] / "slicer_extension" / "ActiveLabel"
sys.path.insert(0, str(EXTENSION))

from ActiveLabelLib import multipart, nodes  # noqa: E402
from ActiveLabelLib.clicks import ClickSet  # noqa: E402
from ActiveLabelLib.client import ActiveLabelClient  # noqa: E402
from ActiveLabelLib.conversions import nifti_geometry  # noqa: E402
from ActiveLabelLib.errors import ActiveLabelError, server_detail  # noqa: E402
from ActiveLabelLib.session import LabelingSession, TaskProgress  # noqa: E402
from ActiveLabelLib.settings import JsonFileStore, Settings  # noqa: E402
from ActiveLabelLib.slices import keep_slices  # noqa: E402
from ActiveLabelLib.worker import BackgroundCalls  # noqa: E402

LABELS = {"liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4}
USER = "radiologist-1"
# Every metric gets the same value, so whichever metric the server ranks by picks ct_002.
SEEDED_SCORES = {"ct_001": 0.010, "ct_002": 0.030, "ct_003": 0.020}
DEFAULT_METRIC = KEYS["uncertainty_metric"].default
"""Scores of the unlabeled phantoms as model v0 left them (scoring itself is the server's business)."""
TASK_TIMEOUT = 240.0


class ManualClock:
    """A clock the test moves by hand, so the time spent on a sample is exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def served(server_factory: ServerFactory) -> ServerProcess:
    """A server on four CT phantoms, one labeled, the other three scored by model v0."""
    studies = server_factory.phantoms("slicer-server", count=4, seed=0, labeled=1)
    work = studies.parent
    scores = ScoreStore(work / "state" / "scores.sqlite")
    for image_id, value in SEEDED_SCORES.items():
        uncertainty = VolumeUncertainty(
            entropy=value, mutual_information=value, variance=value, foreground_fraction=0.2, samples=2
        )
        scores.put(image_id, 0, uncertainty, seconds=0.1)
    return server_factory.start(studies, work=work)


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="module")
def session(served: ServerProcess, clock: ManualClock, tmp_path_factory: pytest.TempPathFactory) -> LabelingSession:
    client = ActiveLabelClient(served.url, client_id=USER)
    return LabelingSession(client, workdir=tmp_path_factory.mktemp("slicer-work"), clock=clock)


@pytest.fixture(scope="module")
def flow() -> dict[str, object]:
    """What earlier tests hand to later ones (the submitted image, the uploaded label)."""
    return {}


def _wait(progress: callable, what: str, server: ServerProcess) -> TaskProgress:
    deadline = time.monotonic() + TASK_TIMEOUT
    while time.monotonic() < deadline:
        state = progress()
        if not state.running and state.state != "never run":
            return state
        time.sleep(0.5)
    raise AssertionError(f"{what} did not finish in {TASK_TIMEOUT:.0f}s:\n{server.log_tail()}")


def test_connect_shows_app_models_strategies_and_progress(session: LabelingSession) -> None:
    summary = session.connect()
    assert summary.models[0] == "segmentation"
    assert set(summary.models) <= {"segmentation", "refine"}  # refine corrects, it is never the session's model
    assert session.model == "segmentation"
    assert {"most_uncertain", "diverse", "random"} <= set(summary.strategies)
    assert summary.label_names == LABELS
    assert (summary.labeled, summary.total) == (1, 4)
    assert summary.progress_text == "1 / 4 labeled (25%)"
    assert summary.model_version == 0
    assert summary.model_text == "model v0, not validated yet"
    assert summary.stop_recommended is False
    assert summary.stop_text.startswith("Keep labeling")


def test_next_sample_downloads_the_most_uncertain_image_with_score_and_rank(
    session: LabelingSession, served: ServerProcess
) -> None:
    sample = session.next_sample("most_uncertain")
    assert sample.image_id == "ct_002"
    downloaded, stored = nib.load(sample.image_file), nib.load(served.studies / f"{sample.image_id}.nii.gz")
    np.testing.assert_array_equal(np.asarray(downloaded.dataobj), np.asarray(stored.dataobj))
    assert sample.score is not None
    assert sample.score == pytest.approx(SEEDED_SCORES["ct_002"])
    assert (sample.rank, sample.ranked) == (1, 3)
    assert sample.metric == DEFAULT_METRIC
    assert sample.uncertainty_text.startswith(f"{DEFAULT_METRIC} ")
    assert "rank 1 of 3" in sample.uncertainty_text


def test_presegmentation_is_on_the_image_grid_and_kept_as_the_original_label(
    session: LabelingSession, served: ServerProcess
) -> None:
    pre = session.segment()
    image_id = session.sample.image_id
    label, image = nib.load(pre.label_file), nib.load(served.studies / f"{image_id}.nii.gz")
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, *LABELS.values()}
    assert pre.label_names == LABELS
    assert pre.model_version == 0
    assert (served.studies / "labels" / "original" / f"{image_id}.nii.gz").is_file()


def test_the_uncertainty_overlay_is_a_float_map_on_the_image_grid(
    session: LabelingSession, served: ServerProcess
) -> None:
    started = session.seconds_on_sample()
    overlay = session.uncertainty_map()
    image_id = session.sample.image_id
    served_map, image = nib.load(overlay.map_file), nib.load(served.studies / f"{image_id}.nii.gz")
    assert overlay.image_id == image_id
    assert served_map.shape == image.shape
    np.testing.assert_allclose(served_map.affine, image.affine, atol=1e-4)
    assert served_map.get_data_dtype() == np.float32
    assert (overlay.metric, overlay.model_version) == (DEFAULT_METRIC, 0)
    assert overlay.text.startswith(f"{DEFAULT_METRIC} map of {image_id} from model v0")
    assert session.seconds_on_sample() >= started  # looking at the map does not reset the clock
    assert session.uncertainty_map(metric="variance").metric == "variance"


def test_submitting_an_edited_mask_stores_it_with_author_and_time_spent(
    session: LabelingSession, served: ServerProcess, clock: ManualClock, flow: dict[str, object], tmp_path: Path
) -> None:
    image_id = session.sample.image_id
    pre = nib.load(session.presegmentation.label_file)
    edited = np.asarray(pre.dataobj).astype(np.uint8)
    edited[10:20, 10:20, 10:20] = LABELS["spleen"]  # the clinician paints a block and erases a corner
    edited[:8, :8, :8] = 0
    corrected = tmp_path / "corrected.nii.gz"
    nib.save(nib.Nifti1Image(edited, pre.affine), str(corrected))
    clock.now += 42.5

    submission = session.submit(corrected)

    assert submission.image_id == image_id
    assert submission.author == USER
    assert submission.seconds_spent == pytest.approx(42.5)
    assert submission.agreement is not None
    assert 0.0 < submission.agreement < 1.0
    assert submission.model_version == 0
    assert "after 42 s" in submission.text
    stored = served.studies / "labels" / "final" / f"{image_id}.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(stored).dataobj), edited)
    assert session.sample is None
    assert session.seconds_on_sample() == 0.0
    flow.update(image_id=image_id, stored=stored.read_bytes(), edited=edited, affine=pre.affine)


def test_resubmitting_a_label_keeps_the_replaced_version(
    session: LabelingSession, served: ServerProcess, flow: dict[str, object]
) -> None:
    image_id, before = flow["image_id"], flow["stored"]
    truth = (served.studies / "truth" / f"{image_id}.nii.gz").read_bytes()
    answer = session.client.save_label(
        image_id, multipart.FilePart(f"{image_id}.nii.gz", truth), params={"seconds_spent": 3.0}
    )
    assert answer["submission"]["author"] == USER
    versions = requests.get(f"{served.url}/activelabel/labels/{image_id}/versions", timeout=30).json()
    finals = [v["version"] for v in versions if v["tag"] == "final"]
    kept = [requests.get(f"{served.url}/activelabel/labels/{image_id}/versions/{n}", timeout=30) for n in finals]
    assert [response.content for response in kept] == [before, truth]
    assert (served.studies / "labels" / "final" / f"{image_id}.nii.gz").read_bytes() == truth


def test_status_counts_the_submissions_with_their_agreement(session: LabelingSession) -> None:
    summary = session.refresh()
    assert (summary.labeled, summary.total) == (2, 4)
    assert summary.recent_agreement is not None
    status = session.client.status()
    assert status["submissions"]["with_agreement"] >= 1
    assert status["submissions"]["count"] == 2


def test_skip_releases_the_sample_and_it_is_not_served_to_this_user_again(
    session: LabelingSession, served: ServerProcess
) -> None:
    first = session.next_sample("most_uncertain")
    assert first.image_id == "ct_003"  # the most uncertain of the two left
    other_user = ActiveLabelClient(served.url, client_id="radiologist-2")
    assert other_user.next_sample("most_uncertain")["id"] == "ct_001"  # ct_003 is leased to this user

    skipped = session.skip()

    assert skipped.image_id == "ct_003"
    assert skipped.released_on_server
    assert "other users can get it now" in skipped.text
    assert session.sample is None
    assert other_user.next_sample("most_uncertain")["id"] == "ct_003"  # released: the other user gets it
    assert other_user.skip("ct_003")
    assert other_user.skip("ct_001")
    for _ in range(3):
        again = session.next_sample("most_uncertain")
        assert again.image_id == "ct_001"
        assert again.note == "most_uncertain offered an image you skipped; picked at random instead"
    session.skip()
    with pytest.raises(ActiveLabelError, match="every image the server offered was skipped"):
        session.next_sample("most_uncertain")


def test_skipping_an_image_whose_lease_ended_is_not_an_error(session: LabelingSession) -> None:
    assert session.client.skip("ct_001") is False  # released by the skip before


def test_a_segmentation_edited_as_mrml_nodes_is_accepted_on_the_image_grid(
    served: ServerProcess, clock: ManualClock, tmp_path: Path
) -> None:
    """What the module does inside Slicer, with Slicer's MRML classes (slicer-core) instead of the app."""
    session = LabelingSession(ActiveLabelClient(served.url, client_id="slicer-nodes"), workdir=tmp_path, clock=clock)
    session.connect()
    sample = session.next_sample("most_uncertain")
    pre = session.segment()
    scene = slicer.vtkMRMLScene()
    volume = nodes.read_volume(scene, sample.image_file, name=sample.image_id)
    segmentation = nodes.load_segmentation(
        scene, pre.label_file, reference=volume, label_names=pre.label_names, name="segmentation"
    )
    liver = nodes.segment_masks(scene, segmentation, reference=volume)["liver"]
    liver[:10, :10, :10] = True  # the clinician paints liver into a corner
    nodes.set_segment_mask(scene, segmentation, "liver", liver, reference=volume)
    label_file = nodes.write_label_file(
        scene,
        segmentation,
        reference=volume,
        label_names=pre.label_names,
        path=tmp_path / "final.nii.gz",
        target=nifti_geometry(sample.image_file),
    )
    clock.now += 12.0

    submission = session.submit(label_file)

    assert submission.author == "slicer-nodes"
    assert submission.seconds_spent == pytest.approx(12.0)
    assert submission.agreement is not None
    expected = np.asarray(nib.load(pre.label_file).dataobj).copy()
    corner = expected[:10, :10, :10]
    corner[corner == 0] = LABELS["liver"]
    stored = nib.load(served.studies / "labels" / "final" / f"{sample.image_id}.nii.gz")
    np.testing.assert_array_equal(np.asarray(stored.dataobj), expected)


def test_training_runs_on_the_server_and_publishes_a_new_model(session: LabelingSession, served: ServerProcess) -> None:
    started = session.start_training({"max_epochs": 1})
    assert started.kind == "train"
    with pytest.raises(ActiveLabelError, match="answered 429") as busy:  # one training task at a time
        session.start_training({"max_epochs": 1})
    assert busy.value.status == 429
    done = _wait(session.training_progress, "training", served)
    assert done.state == "DONE", done.details[-20:]
    assert session.refresh().model_version == 1


def test_stop_training_ends_the_running_task(session: LabelingSession, served: ServerProcess) -> None:
    assert session.start_training({"max_epochs": 50}).running
    session.stop_training()
    stopped = _wait(session.training_progress, "stopping training", served)
    assert stopped.state == "STOPPED"
    assert session.refresh().model_version == 1  # the stopped run published nothing


def test_scoring_can_be_started_and_reports_its_progress(session: LabelingSession, served: ServerProcess) -> None:
    started = session.start_scoring()
    assert started.kind == "scoring"
    assert started.state in {"SUBMITTED", "RUNNING", "DONE"}
    requests.delete(f"{served.url}/scoring/", timeout=30)  # not the module's job; frees the CPU
    assert not _wait(session.scoring_progress, "scoring", served).running


def test_a_label_with_the_wrong_shape_is_refused_with_the_servers_reason(
    session: LabelingSession, served: ServerProcess, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), str(wrong))
    label = multipart.FilePart("wrong.nii.gz", wrong.read_bytes())
    with pytest.raises(ActiveLabelError) as refused:
        session.client.save_label("ct_003", label)
    assert refused.value.status == 422
    assert refused.value.detail
    assert "shape" in refused.value.detail
    assert refused.value.detail in str(refused.value)
    assert str(refused.value).startswith("Submitting the label failed: the server answered 422: ")
    assert "\n" not in str(refused.value)


def test_an_unknown_image_is_refused_with_404(session: LabelingSession) -> None:
    with pytest.raises(ActiveLabelError, match="answered 404") as missing:
        session.client.download_image("no_such_image")
    assert missing.value.status == 404


def test_an_uncertainty_map_of_an_unknown_image_is_refused_with_404(session: LabelingSession) -> None:
    with pytest.raises(ActiveLabelError, match="unknown image id 'no-such-image'") as raised:
        session.client.uncertainty_map("no-such-image")
    assert raised.value.status == 404


def test_a_slice_sample_is_submitted_with_only_its_slices_annotated(served: ServerProcess, tmp_path: Path) -> None:
    session = LabelingSession(ActiveLabelClient(served.url, client_id=USER), workdir=tmp_path / "work")
    sample = session.next_sample("uncertain_slices", params={"slices": 3})
    queue = sample.slice_queue
    assert queue is not None
    assert len(queue.slices) == 3
    truth = nib.load(served.studies / "truth" / f"{sample.image_id}.nii.gz")
    drawn = tmp_path / "drawn.nii.gz"
    partial = keep_slices(np.asarray(truth.dataobj).astype(np.uint8), axis=queue.axis, slices=queue.slices)
    nib.save(nib.Nifti1Image(partial, truth.affine), str(drawn))

    session.submit(drawn)

    versions = requests.get(f"{served.url}/activelabel/labels/{sample.image_id}/versions", timeout=30).json()
    details = versions[-1]["details"]
    assert details == {"partial": True, "slice_axis": queue.axis, "annotated_slices": list(queue.slices)}
    assert versions[-1]["author"] == USER


def test_a_server_that_is_down_gives_a_readable_one_line_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    session = LabelingSession(ActiveLabelClient(url, client_id=USER, timeout=5), workdir=tmp_path)
    with pytest.raises(ActiveLabelError) as down:
        session.connect()
    message = str(down.value)
    assert message.startswith(f"Connecting failed: cannot reach the server at {url} (")
    assert "refused" in message.lower()
    assert "\n" not in message
    assert "Traceback" not in message
    assert down.value.status is None


def test_a_server_address_without_a_scheme_is_refused_before_any_request() -> None:
    with pytest.raises(ActiveLabelError, match="must start with http:// or https://"):
        ActiveLabelClient("localhost:8000")


def test_submit_or_skip_without_a_sample_says_what_to_do_first(tmp_path: Path) -> None:
    session = LabelingSession(ActiveLabelClient("http://127.0.0.1:9"), workdir=tmp_path)
    with pytest.raises(ActiveLabelError, match="ask for the next sample first"):
        session.submit(tmp_path / "label.nii.gz")
    with pytest.raises(ActiveLabelError, match="ask for the next sample first"):
        session.skip()


def test_multipart_bodies_round_trip_binary_files_and_fields() -> None:
    payload = bytes(range(256)) * 40 + b"\r\n--not-a-boundary\r\n"
    content_type, body = multipart.encode(
        {"params": json.dumps({"save_label": True})}, {"label": multipart.FilePart("x.nii.gz", payload)}
    )
    form = multipart.decode(content_type, body)
    assert json.loads(form.fields["params"]) == {"save_label": True}
    assert form.files["label"].filename == "x.nii.gz"
    assert form.files["label"].content == payload


def test_a_non_multipart_answer_is_reported_not_crashed_on() -> None:
    with pytest.raises(ActiveLabelError, match="not multipart"):
        multipart.decode("application/json", b"{}")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"detail": "label shape (5, 5, 5)\\n differs"}', "label shape (5, 5, 5) differs"),
        (b'{"detail": [{"loc": ["body"], "msg": "field required"}]}', "field required"),
        (b"Internal Server Error", "Internal Server Error"),
        (b'{"error": "x"}', '{"error": "x"}'),
    ],
)
def test_server_detail_is_one_readable_line(body: bytes, detail: str) -> None:
    assert server_detail(body) == detail


def test_settings_persist_and_keep_a_server_history(tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "settings.json")
    assert Settings.load(store) == Settings()
    settings = Settings(user=USER, auto_fetch_next=False, strategy="diverse")
    for url in ("http://a:8000", "http://b:8000/", "http://a:8000"):
        settings = settings.with_server(url)
    settings.save(store)
    loaded = Settings.load(JsonFileStore(tmp_path / "settings.json"))
    assert loaded == settings
    assert loaded.server_url == "http://a:8000"
    assert loaded.server_history == ("http://a:8000", "http://b:8000")
    assert loaded.auto_fetch_next is False
    assert loaded.auto_segment is True


def test_unreadable_settings_fall_back_to_defaults(tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text("{not json")
    assert Settings.load(JsonFileStore(tmp_path / "settings.json")) == Settings()


def test_background_calls_deliver_results_and_errors_on_the_polling_thread() -> None:
    calls = BackgroundCalls()
    release = threading.Event()
    seen: list[tuple[str, object, str]] = []

    def slow() -> int:
        release.wait(5)
        return 7

    def broken() -> int:
        raise ActiveLabelError("Segmenting the image failed: the server answered 500: boom", status=500)

    def buggy() -> int:
        raise KeyError("params")

    def record(kind: str) -> callable:
        return lambda value: seen.append((kind, value, threading.current_thread().name))

    calls.submit(slow, on_done=record("done"), on_error=record("error"))
    calls.submit(broken, on_done=record("done"), on_error=record("error"))
    calls.submit(buggy, on_done=record("done"), on_error=record("error"))
    assert calls.busy
    assert calls.poll() == 0
    release.set()
    deadline = time.monotonic() + 5
    while calls.busy and time.monotonic() < deadline:
        calls.poll()
        time.sleep(0.01)
    calls.shutdown()
    main = threading.current_thread().name
    assert [(kind, thread) for kind, _, thread in seen] == [("done", main), ("error", main), ("error", main)]
    assert seen[0][1] == 7
    assert seen[1][1].status == 500
    assert str(seen[2][1]) == "unexpected error: KeyError: 'params'"


@pytest.fixture(scope="module")
def roomy(server_factory: ServerFactory) -> ServerProcess:
    """A server with five unlabeled phantoms, for prefetching."""
    return server_factory.start(server_factory.phantoms("slicer-prefetch", count=6, seed=1, labeled=1))


def _spy(monkeypatch: pytest.MonkeyPatch, client: ActiveLabelClient, name: str) -> list[tuple]:
    """Record the calls of one client method (they still reach the server)."""
    calls: list[tuple] = []
    method = getattr(client, name)

    def recorded(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return method(*args, **kwargs)

    monkeypatch.setattr(client, name, recorded)
    return calls


def test_next_shows_the_prefetched_sample_and_its_presegmentation_without_asking_the_server(
    roomy: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = LabelingSession(ActiveLabelClient(roomy.url, client_id="prefetcher"), workdir=tmp_path)
    session.connect()
    current = session.next_sample("random")

    prefetched = session.start_prefetch("random").result(timeout=300)

    assert prefetched.sample.image_id != current.image_id  # never the sample being edited
    assert prefetched.presegmentation is not None
    assert prefetched.presegmentation.label_file.is_file()
    leases = LeaseStore(roomy.state_dir / "leases.sqlite", seconds=1800).active()
    assert leases[prefetched.sample.image_id].client_id == "prefetcher"  # nobody else can take it meanwhile
    assert session.sample == current  # the clinician is still on the current one
    asked = _spy(monkeypatch, session.client, "next_sample")
    segmented = _spy(monkeypatch, session.client, "infer")

    taken = session.next_sample("random")

    assert taken == prefetched.sample
    assert session.presegmentation == prefetched.presegmentation
    assert (asked, segmented) == ([], [])
    assert session.prefetched is None


def test_a_prefetch_for_another_strategy_is_given_back_and_next_asks_the_server(
    roomy: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = LabelingSession(ActiveLabelClient(roomy.url, client_id="switcher"), workdir=tmp_path)
    session.connect()
    session.next_sample("random")
    prefetched = session.start_prefetch("random", segment=False).result(timeout=300)
    assert prefetched.presegmentation is None
    released = _spy(monkeypatch, session.client, "skip")
    asked = _spy(monkeypatch, session.client, "next_sample")

    session.next_sample("most_uncertain")

    assert released == [(prefetched.sample.image_id,)]
    assert len(asked) == 1
    assert session.presegmentation is None


def test_a_next_sample_request_with_a_malformed_exclude_list_is_refused(roomy: ServerProcess) -> None:
    answer = requests.post(f"{roomy.url}/activelearning/random", json={"exclude": "ct_001"}, timeout=30)
    assert answer.status_code == 422
    assert "exclude must be a list of image ids" in answer.json()["detail"]


def test_refine_sends_the_mask_and_clicks_and_gets_a_label_map_on_the_image_grid(
    roomy: ServerProcess, tmp_path: Path
) -> None:
    session = LabelingSession(ActiveLabelClient(roomy.url, client_id="refiner"), workdir=tmp_path)
    assert session.connect().can_refine
    assert session.model == "segmentation"
    session.start_training()  # the refine network trains with the segmentation model
    assert roomy.wait_for_task("train")["status"] == "DONE", roomy.log_tail()
    sample = session.next_sample("random")
    pre = session.segment()
    image = nib.load(sample.image_file)
    truth = np.asarray(nib.load(roomy.studies / "truth" / f"{sample.image_id}.nii.gz").dataobj)
    inside = np.argwhere(truth == LABELS["liver"])
    missed_liver = apply_affine(image.affine, inside[len(inside) // 2])  # a voxel the clinician says is liver
    not_liver = apply_affine(image.affine, np.argwhere(truth == 0)[0])
    clicks = ClickSet.of(positive={"liver": [missed_liver]}, negative={"liver": [not_liver]})
    started = session.seconds_on_sample()

    refined = session.refine(pre.label_file, clicks)

    label = nib.load(refined.label_file)
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, *LABELS.values()}
    assert refined.label_names == LABELS
    assert session.presegmentation == pre  # the model's own output stays the pre-segmentation
    assert session.seconds_on_sample() >= started  # refining is part of the work being timed
    own = nib.load(session.refine(None, clicks).label_file)  # no mask: the server refines its own segmentation
    assert own.shape == image.shape
    session.skip()


def test_refine_without_a_click_says_to_place_one(roomy: ServerProcess, tmp_path: Path) -> None:
    session = LabelingSession(ActiveLabelClient(roomy.url, client_id="refiner-2"), workdir=tmp_path)
    session.connect()
    session.next_sample("random")
    with pytest.raises(ActiveLabelError, match="place at least one positive or negative click before refining"):
        session.refine(None, ClickSet())
    session.skip()
