"""Pre-segmentations computed ahead: kept by scoring, served at once, refreshed after training, dropped when labeled."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from activelabel.ml.uncertainty import UncertaintyMetric, VolumeUncertainty
from activelabel.scoring.refresh import next_candidates, refresh_count
from activelabel.server.routes.infer import MODEL_VERSION_HEADER, PRESEGMENTATION_HEADER
from activelabel.store.leases import Lease
from activelabel.store.presegmentations import PresegmentationStore
from activelabel.store.scores import ScoreStore
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory


def _infer(server: ServerProcess, image_id: str, **params: object) -> requests.Response:
    response = requests.post(
        f"{server.url}/infer/segmentation",
        params={"image": image_id, "output": "image"},
        data={"params": json.dumps(params)},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    return response


def _submit(server: ServerProcess, image_id: str, label: bytes) -> None:
    saved = requests.put(
        f"{server.url}/datastore/label",
        params={"image": image_id, "tag": "final"},
        files={"label": (f"{image_id}.nii.gz", label)},
        data={"params": json.dumps({"client_id": "preseg-test"})},
        timeout=120,
    )
    assert saved.status_code == 200, saved.text


def _label(content: bytes, path: Path) -> nib.Nifti1Image:
    path.write_bytes(content)
    return nib.load(path)


@pytest.fixture(scope="module")
def scored(server_factory: ServerFactory) -> ServerProcess:
    """A server whose unlabeled volumes were scored once by model version 0."""
    studies = server_factory.phantoms("preseg", count=6, seed=4, labeled=2)
    server = server_factory.start(studies)
    assert requests.post(f"{server.url}/scoring/epistemic", timeout=60).status_code == 200
    assert server.wait_for_task("scoring")["status"] == "DONE", server.log_tail()
    return server


def _status(server: ServerProcess) -> dict:
    return requests.get(f"{server.url}/activelabel/status", timeout=60).json()


def test_scoring_keeps_a_presegmentation_that_infer_serves_without_a_network_pass(
    scored: ServerProcess, tmp_path: Path
) -> None:
    before = _status(scored)["serving"]

    response = _infer(scored, "ct_003")

    assert response.headers[PRESEGMENTATION_HEADER] == "hit"
    assert response.headers[MODEL_VERSION_HEADER] == "0"
    stored = scored.state_dir / "presegmentations" / "ct_003" / "v0.nii.gz"
    assert response.content == stored.read_bytes()
    after = _status(scored)["serving"]
    assert after["presegmentations"]["hits"] == before["presegmentations"]["hits"] + 1
    assert after["presegmentations"]["ready"] == 4  # every unlabeled volume
    assert after["compute"]["completed"] == before["compute"]["completed"]  # no network pass ran
    label = _label(response.content, tmp_path / "hit.nii.gz")
    image = nib.load(scored.studies / "ct_003.nii.gz")
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)


def test_a_request_with_cache_false_runs_the_network_on_the_same_grid(scored: ServerProcess, tmp_path: Path) -> None:
    cached = _label(_infer(scored, "ct_004").content, tmp_path / "hit.nii.gz")
    before = _status(scored)["serving"]

    response = _infer(scored, "ct_004", cache=False)

    assert response.headers[PRESEGMENTATION_HEADER] == "miss"
    assert response.headers[MODEL_VERSION_HEADER] == "0"
    computed = _label(response.content, tmp_path / "miss.nii.gz")
    assert computed.shape == cached.shape  # same grid, whichever way it was made
    np.testing.assert_allclose(computed.affine, cached.affine, atol=1e-4)
    after = _status(scored)["serving"]
    assert after["compute"]["completed"] == before["compute"]["completed"] + 1
    assert after["presegmentations"]["misses"] == before["presegmentations"]["misses"]  # not a cache miss: asked for


def test_a_labeled_volume_drops_its_presegmentation(scored: ServerProcess, tmp_path: Path) -> None:
    _submit(scored, "ct_005", _infer(scored, "ct_005").content)
    assert not (scored.state_dir / "presegmentations" / "ct_005").exists()


def test_training_refreshes_the_next_candidates_with_the_new_model(scored: ServerProcess) -> None:
    assert requests.post(f"{scored.url}/train/segmentation", json={}, timeout=60).status_code == 200
    task = scored.wait_for_task("train")
    assert task["status"] == "DONE", scored.log_tail()
    version = _status(scored)["model"]["version"]
    assert version >= 1
    ready = sorted(p.parent.name for p in (scored.state_dir / "presegmentations").glob(f"*/v{version}.nii.gz"))
    assert len(ready) == 2  # presegment_refresh in the test settings; no lease is held

    misses = _status(scored)["serving"]["presegmentations"]["misses"]
    served = _infer(scored, ready[0])
    stale = next(image_id for image_id in ("ct_002", "ct_003", "ct_004") if image_id not in ready)
    computed = _infer(scored, stale)

    assert (served.headers[PRESEGMENTATION_HEADER], served.headers[MODEL_VERSION_HEADER]) == ("hit", str(version))
    assert (computed.headers[PRESEGMENTATION_HEADER], computed.headers[MODEL_VERSION_HEADER]) == ("miss", str(version))
    assert not list((scored.state_dir / "presegmentations" / ready[0]).glob("v0.nii.gz"))  # older version gone
    assert _status(scored)["serving"]["presegmentations"]["misses"] == misses + 1


def test_a_new_model_and_a_submission_start_scoring_the_rest_of_the_pool(server_factory: ServerFactory) -> None:
    studies = server_factory.phantoms("rescore", count=5, seed=6, labeled=2)
    server = server_factory.start(studies, conf={"rescore_after_training": "true", "presegment_refresh": "1"})
    assert requests.post(f"{server.url}/scoring/epistemic", timeout=60).status_code == 200
    assert server.wait_for_task("scoring")["status"] == "DONE"
    assert requests.post(f"{server.url}/train/segmentation", json={}, timeout=60).status_code == 200
    assert server.wait_for_task("train")["status"] == "DONE"
    assert _status(server)["scores"]["stale"] == 2  # of three unlabeled, the refresh re-scored one

    _submit(server, "ct_002", _infer(server, "ct_002").content)
    task = server.wait_for_task("scoring")

    assert task["status"] == "DONE", server.log_tail()
    status = _status(server)
    assert status["scores"]["stale"] == 0
    assert status["serving"]["presegmentations"]["ready"] == status["images"]["unlabeled"]


def test_storing_a_version_replaces_older_ones_and_lookups_need_the_exact_version(tmp_path: Path) -> None:
    store = PresegmentationStore(tmp_path / "pre")
    source = tmp_path / "label.nii.gz"
    source.write_bytes(b"version one")
    store.put("case", 1, source)
    source.write_bytes(b"version two")

    store.put("case", 2, source)

    assert store.get("case", 1) is None
    assert store.get("case", 2) is not None
    assert store.get("case", 2).read_bytes() == b"version two"
    assert store.count(2) == 1
    assert store.count(1) == 0
    copy = store.copy_out("case", 2)
    assert copy is not None
    assert Path(copy).read_bytes() == b"version two"
    Path(copy).unlink()
    assert store.get("case", 2) is not None  # the copy is the caller's; the stored file stays
    store.forget("case")
    assert store.copy_out("case", 2) is None


def test_a_presegmentation_store_refuses_an_id_that_leaves_its_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image id"):
        PresegmentationStore(tmp_path).path("../escape", 0)


def test_the_refresh_covers_two_volumes_per_clinician_holding_a_lease() -> None:
    leases = {f"img{i}": Lease(f"img{i}", f"clinician{i % 3}", 0.0, 1.0) for i in range(6)}
    assert refresh_count(leases, minimum=4) == 6
    assert refresh_count({}, minimum=4) == 4


def test_next_candidates_follow_the_ranking_skip_leased_volumes_and_end_with_unscored_ones(tmp_path: Path) -> None:
    scores = ScoreStore(tmp_path / "scores.sqlite")
    for image_id, value in (("a", 0.1), ("b", 0.3), ("c", 0.2)):
        uncertainty = VolumeUncertainty(
            entropy=value, mutual_information=value, variance=value, foreground_fraction=1.0, samples=2
        )
        scores.put(image_id, 0, uncertainty, seconds=0.1)

    order = next_candidates(
        ["a", "b", "c", "d", "e"], scores=scores, metric=UncertaintyMetric.MUTUAL_INFORMATION, leased=["b"], count=4
    )

    assert order == ["c", "a", "d", "e"]
