"""The labeling loop against a real server subprocess, through monailabel's client and HTTP.

Tests run in file order and share one server: the later ones build on what the earlier
ones stored (a submitted label, a trained model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from activelabel.cli import main
from activelabel.store.scores import ScoreStore
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory
from tests.helpers import SHARED_DATASETS, write_nifti

TASK_TIMEOUT = 300.0
LABELS = {"liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4}


@pytest.fixture(scope="module")
def client(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> MONAILabelClient:
    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")), client_id="radiologist-1")


def _status(server: ServerProcess) -> dict[str, Any]:
    response = requests.get(f"{server.url}/activelabel/status", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _wait_for_task(server: ServerProcess, kind: str) -> dict[str, Any]:
    """MONAI Label's status of the latest ``kind`` task once it has finished."""
    return server.wait_for_task(kind, timeout=TASK_TIMEOUT)


def _label_files(studies: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((studies / "labels" / "final").glob("*.nii.gz"))}


def test_info_lists_model_trainer_scorer_and_strategies(client: MONAILabelClient) -> None:
    info = client.info()
    assert "segmentation" in info["models"]
    assert info["models"]["segmentation"]["labels"] == LABELS
    assert "segmentation" in info["trainers"]
    assert "epistemic" in info["scoring"]
    assert {"most_uncertain", "random"} <= set(info["strategies"])
    assert info["activelabel"]["model"]["version"] == 0


def test_status_reports_labeled_total_model_and_scores(server: ServerProcess) -> None:
    status = _status(server)
    assert status["images"] == {
        "total": 6,
        "labeled": 2,
        "unlabeled": 4,
        "labeled_fraction": pytest.approx(2 / 6),
        "partially_labeled": 0,
    }
    assert status["slices"]["annotated"] == 0  # the two labels came with the studies, not through the server
    assert status["model"]["version"] == 0
    assert status["model"]["trained"] is False
    assert status["scores"] == {"fresh": 0, "stale": 0, "unscored": 4}


@pytest.mark.parametrize("strategy", ["random", "foreground_random"])
def test_next_sample_returns_an_unlabeled_image(client: MONAILabelClient, strategy: str) -> None:
    sample = client.next_sample(strategy, {})
    assert sample["id"] in {"ct_002", "ct_003", "ct_004", "ct_005"}
    assert Path(sample["path"]).name == f"{sample['id']}.nii.gz"


def test_infer_returns_a_label_in_the_image_geometry(client: MONAILabelClient, server: ServerProcess) -> None:
    label_file, params = client.infer("segmentation", "ct_002", {})
    label, image = nib.load(label_file), nib.load(server.studies / "ct_002.nii.gz")
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, *LABELS.values()}
    assert params["model_version"] == 0
    assert params["label_names"] == LABELS


def test_saved_label_is_stored_and_counted(client: MONAILabelClient, server: ServerProcess) -> None:
    truth = server.studies / "truth" / "ct_002.nii.gz"
    client.save_label("ct_002", str(truth), tag="final")
    stored = server.studies / "labels" / "final" / "ct_002.nii.gz"
    assert stored.read_bytes() == truth.read_bytes()
    assert _status(server)["images"]["labeled"] == 3


def test_resubmitted_label_keeps_the_previous_one(
    client: MONAILabelClient, server: ServerProcess, tmp_path: Path
) -> None:
    image = nib.load(server.studies / "ct_002.nii.gz")
    edited = write_nifti(tmp_path / "edited.nii.gz", np.zeros(image.shape, np.uint8), affine=image.affine)
    before = (server.studies / "labels" / "final" / "ct_002.nii.gz").read_bytes()
    client.save_label("ct_002", str(edited), tag="final")
    versions = requests.get(f"{server.url}/activelabel/labels/ct_002/versions", timeout=30).json()
    kept = versions[-2]["version"]
    replaced = requests.get(f"{server.url}/activelabel/labels/ct_002/versions/{kept}", timeout=30)
    assert replaced.content == before
    client.save_label("ct_002", str(server.studies / "truth" / "ct_002.nii.gz"), tag="final")


def _bad_inputs(server: ServerProcess, tmp_path: Path) -> list[tuple[str, str, Path, int, str]]:
    image = nib.load(server.studies / "ct_003.nii.gz")
    shape, affine = image.shape, image.affine
    shifted = affine.copy()
    shifted[:3, 3] += 10.0
    scaled = affine.copy()
    scaled[0, 0] *= 1.5
    fractional = np.zeros(shape, np.float32)
    fractional[5, 5, 5] = 0.5
    unknown = np.zeros(shape, np.uint8)
    unknown[5, 5, 5] = 9
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b this is not a volume")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    good = write_nifti(tmp_path / "good.nii.gz", np.zeros(shape, np.uint8), affine=affine)
    return [
        ("unknown image id", "no_such_image", good, 404, "unknown image"),
        ("wrong shape", "ct_003", write_nifti(tmp_path / "s.nii.gz", np.zeros((9, 9, 9), np.uint8)), 422, "shape"),
        (
            "shifted origin",
            "ct_003",
            write_nifti(tmp_path / "o.nii.gz", np.zeros(shape, np.uint8), affine=shifted),
            422,
            "origin",
        ),
        (
            "other spacing",
            "ct_003",
            write_nifti(tmp_path / "p.nii.gz", np.zeros(shape, np.uint8), affine=scaled),
            422,
            "spacing",
        ),
        ("fractional values", "ct_003", write_nifti(tmp_path / "f.nii.gz", fractional, affine=affine), 422, "integers"),
        ("unknown label value", "ct_003", write_nifti(tmp_path / "u.nii.gz", unknown, affine=affine), 422, "[9]"),
        ("corrupt upload", "ct_003", corrupt, 415, "not a readable"),
        ("text upload", "ct_003", text, 415, "not a readable"),
    ]


def test_bad_labels_are_rejected_with_a_reason_and_store_nothing(server: ServerProcess, tmp_path: Path) -> None:
    before_files = _label_files(server.studies)
    before_status = _status(server)
    for case, image_id, path, status, reason in _bad_inputs(server, tmp_path):
        with path.open("rb") as handle:
            response = requests.put(
                f"{server.url}/datastore/label",
                params={"image": image_id, "tag": "final"},
                files={"label": (path.name, handle)},
                timeout=60,
            )
        assert response.status_code == status, f"{case}: {response.status_code} {response.text}"
        assert reason in response.json()["detail"], f"{case}: {response.text}"
    assert _label_files(server.studies) == before_files
    assert _status(server)["images"] == before_status["images"]


def test_corrupt_image_upload_is_rejected(server: ServerProcess, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.nii.gz"
    bogus.write_bytes(b"garbage")
    with bogus.open("rb") as handle:
        response = requests.put(f"{server.url}/datastore/image", files={"file": ("bogus.nii.gz", handle)}, timeout=60)
    assert response.status_code == 415, response.text
    assert "not a readable medical image" in response.json()["detail"]
    assert not (server.studies / "bogus.nii.gz").exists()
    assert _status(server)["images"]["total"] == 6


def test_training_publishes_a_new_model_version(server: ServerProcess, client: MONAILabelClient) -> None:
    response = requests.post(f"{server.url}/train/segmentation", json={"max_epochs": 1}, timeout=60)
    assert response.status_code == 200, response.text
    assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200  # the server is not blocked
    task = _wait_for_task(server, "train")
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    status = _status(server)
    assert status["model"]["version"] == 1
    assert status["model"]["trained"] is True
    assert set(status["model"]["val_dice"]) == set(LABELS)
    assert status["model"]["train_count"] + status["model"]["val_count"] == 3
    # The run re-scored the next unleased candidates with the new model (presegment_refresh=2 in the test
    # settings; earlier tests leased some); the rest were never scored.
    assert status["scores"]["stale"] == 0
    assert 1 <= status["scores"]["fresh"] <= 2
    _, params = client.infer("segmentation", "ct_003", {})
    assert params["model_version"] == 1


def test_scoring_then_most_uncertain_serves_the_highest_score(server: ServerProcess, client: MONAILabelClient) -> None:
    response = requests.post(f"{server.url}/scoring/epistemic", json={}, timeout=60)
    assert response.status_code == 200, response.text
    task = _wait_for_task(server, "scoring")
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    assert _status(server)["scores"] == {"fresh": 3, "stale": 0, "unscored": 0}
    scores = ScoreStore(server.state_dir / "scores.sqlite")
    unlabeled = ["ct_003", "ct_004", "ct_005"]
    for metric in ("entropy", "mutual_information", "variance"):
        expected = scores.ranked(unlabeled, metric)[0]
        sample = client.next_sample("most_uncertain", {"metric": metric})
        assert sample["id"] == expected.image_id
        assert sample["score"] == pytest.approx(expected.uncertainty.score(metric))
        assert sample["model_version"] == 1


def test_only_stale_images_are_rescored(server: ServerProcess) -> None:
    scores = ScoreStore(server.state_dir / "scores.sqlite")
    before = {image_id: s.scored_at for image_id, s in scores.all().items()}
    requests.post(f"{server.url}/scoring/epistemic", json={}, timeout=60).raise_for_status()
    task = _wait_for_task(server, "scoring")
    assert task["status"] == "DONE"
    assert {image_id: s.scored_at for image_id, s in scores.all().items()} == before


def test_submission_reports_agreement_with_the_pre_segmentation(
    client: MONAILabelClient, server: ServerProcess
) -> None:
    _, params = client.infer("segmentation", "ct_003", {"save_label": True})
    assert (server.studies / "labels" / "original" / "ct_003.nii.gz").is_file()
    truth = server.studies / "truth" / "ct_003.nii.gz"
    answer = client.save_label("ct_003", str(truth), tag="final", params={"seconds_spent": 42.5})
    submission = answer["submission"]
    assert 0.0 <= submission["agreement"] <= 1.0
    assert submission["model_version"] == params["model_version"] == 1
    assert submission["author"] == "radiologist-1"
    assert submission["seconds_spent"] == pytest.approx(42.5)
    status = _status(server)
    assert status["submissions"]["with_agreement"] == 1
    assert status["submissions"]["recent_agreement"] == pytest.approx(submission["agreement"])
    assert status["stop"]["stop_recommended"] is False
    assert "rounds of submissions" in status["stop"]["reason"]


def test_autolabel_labels_every_unlabeled_volume_as_automatic(server: ServerProcess) -> None:
    assert main(["autolabel", "--server", server.url, "--timeout", "300"]) == 0
    for image_id in ("ct_004", "ct_005"):
        assert (server.studies / "labels" / "auto" / f"{image_id}.nii.gz").is_file()
    status = _status(server)
    # The model was calibrated on its validation volume: each auto-label is accepted or sent back.
    automation = status["automation"]
    assert automation["auto_labeled"] + automation["sent_back"] == 2
    assert automation["automation"] == pytest.approx(automation["auto_labeled"] / 6)
    assert automation["calibration_volumes"] == status["model"]["val_count"]
    assert status["images"]["labeled"] == 4  # automatic labels are not human labels


def test_real_ct_upload_and_infer_keep_its_geometry(client: MONAILabelClient, server: ServerProcess) -> None:
    source = SHARED_DATASETS / "totalseg-ct" / "images" / "abdomen_ct.nii.gz"
    client.upload_image(str(source), image_id="abdomen_ct")
    label_file, _ = client.infer("segmentation", "abdomen_ct", {})
    label, image = nib.load(label_file), nib.load(source)
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-3)


def test_the_default_dynunet_trains_scores_and_infers_through_the_server(server_factory: ServerFactory) -> None:
    studies = server_factory.phantoms("dynunet", count=3, seed=2, labeled=2, modality="mr")
    conf = {"architecture": "dynunet", "modality": "mr", "roi_size": "32,32,32", "channels": "8,16,32"}
    with server_factory.start(studies, conf=conf) as dynunet:
        response = requests.post(f"{dynunet.url}/train/segmentation", json={"max_epochs": 1}, timeout=60)
        assert response.status_code == 200, response.text
        task = _wait_for_task(dynunet, "train")
        assert task["status"] == "DONE", "\n".join(task.get("details", []))
        info = requests.get(f"{dynunet.url}/info/", timeout=30).json()["activelabel"]["model"]
        assert (info["version"], info["spec"]["architecture"], info["spec"]["deep_supervision"]) == (1, "dynunet", 1)
        assert requests.post(f"{dynunet.url}/scoring/epistemic", json={}, timeout=60).status_code == 200
        task = _wait_for_task(dynunet, "scoring")
        assert task["status"] == "DONE", "\n".join(task.get("details", []))
        assert _status(dynunet)["scores"]["fresh"] == 1
        answer = requests.post(f"{dynunet.url}/infer/segmentation", params={"image": "mr_002"}, timeout=120)
        assert answer.status_code == 200, answer.text
