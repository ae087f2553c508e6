"""Several readers per volume against a real server (``readers`` = 2): readings wait, the
consensus becomes the final label, and a reader is never served a volume twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import requests

from activelabel.data.phantoms import generate_datastore
from activelabel.datastore.local import ValidatingDatastore
from activelabel.labelmap import LabelMap
from activelabel.ml.consensus import pairwise_dice
from activelabel.store.label_versions import LabelSource, LabelVersionStore, Provenance
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory
from tests.helpers import write_nifti

LABELS = {"liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4}


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ServerProcess:
    studies = server_factory.phantoms("readers", count=4, seed=6, labeled=1)
    return server_factory.start(studies, conf={"readers": "2"})


@pytest.fixture(scope="module")
def shared() -> dict[str, Any]:
    """What one test leaves for the next (the volume the two readers read)."""
    return {}


def _put(server: ServerProcess, image: str, label: Path, params: dict[str, Any]) -> requests.Response:
    with label.open("rb") as handle:
        return requests.put(
            f"{server.url}/datastore/label",
            params={"image": image, "tag": "final"},
            data={"params": json.dumps(params)},
            files={"label": ("label.nii.gz", handle)},
            timeout=60,
        )


def _submit(server: ServerProcess, image: str, label: Path, reader: str) -> dict[str, Any]:
    response = _put(server, image, label, {"client_id": reader})
    assert response.status_code == 200, response.text
    return response.json()


def _next(server: ServerProcess, reader: str, **request: Any) -> dict[str, Any]:
    response = requests.post(f"{server.url}/activelearning/random", json={"client_id": reader, **request}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _get(server: ServerProcess, path: str) -> requests.Response:
    return requests.get(f"{server.url}/activelabel/{path}", timeout=30)


def _edited(server: ServerProcess, image: str, folder: Path) -> tuple[Path, np.ndarray]:
    """The truth with the upper half of the spleen erased: a second reader who disagrees a little."""
    truth = nib.load(server.studies / "truth" / f"{image}.nii.gz")
    values = np.asarray(truth.dataobj).astype(np.uint8)
    spleen = np.argwhere(values == 2)
    cut = np.median(spleen[:, 2])
    values[(values == 2) & (np.indices(values.shape)[2] > cut)] = 0
    return write_nifti(folder / f"{image}-edited.nii.gz", values, affine=truth.affine), values


def test_a_final_label_without_a_reader_is_refused(server: ServerProcess) -> None:
    response = _put(server, "ct_001", server.studies / "truth" / "ct_001.nii.gz", {})
    assert response.status_code == 422, response.text
    assert "needs 2 distinct readers" in response.json()["detail"]


def test_the_first_reading_is_kept_but_does_not_label_the_volume(server: ServerProcess, shared: dict[str, Any]) -> None:
    image = _next(server, "reader-a")["id"]
    answer = _submit(server, image, server.studies / "truth" / f"{image}.nii.gz", "reader-a")
    assert answer["readers"] == {"required": 2, "read_by": ["reader-a"], "consensus_version": None}
    assert answer["submission"]["author"] == "reader-a"
    assert not (server.studies / "labels" / "final" / f"{image}.nii.gz").exists()
    status = _get(server, "status").json()
    assert status["images"]["labeled"] == 1
    assert status["readers"]["required"] == 2
    assert status["readers"]["awaiting"] == 1
    [version] = _get(server, f"labels/{image}/versions").json()
    assert (version["source"], version["author"], version["current"]) == ("human", "reader-a", False)
    missing = _get(server, f"labels/{image}/consensus")
    assert missing.status_code == 404
    assert "1 of 2 readers" in missing.json()["detail"]
    shared["image"] = image


def test_a_reader_is_never_served_a_volume_they_read(server: ServerProcess, shared: dict[str, Any]) -> None:
    picks = {_next(server, "reader-a", seed=seed).get("id") for seed in range(8)}
    assert picks == {"ct_001", "ct_002", "ct_003"} - {shared["image"]}
    # reader-a now holds leases on every other volume: the one left for reader-b is the half-read one.
    assert _next(server, "reader-b")["id"] == shared["image"]


def test_the_second_reader_completes_the_consensus(
    server: ServerProcess, shared: dict[str, Any], tmp_path: Path
) -> None:
    image = shared["image"]
    truth = np.asarray(nib.load(server.studies / "truth" / f"{image}.nii.gz").dataobj).astype(np.uint8)
    edited_path, edited = _edited(server, image, tmp_path)
    answer = _submit(server, image, edited_path, "reader-b")
    assert answer["readers"] == {"required": 2, "read_by": ["reader-a", "reader-b"], "consensus_version": 3}
    live = server.studies / "labels" / "final" / f"{image}.nii.gz"
    consensus = np.asarray(nib.load(live).dataobj)
    agree = truth == edited
    np.testing.assert_array_equal(consensus[agree], truth[agree])
    versions = _get(server, f"labels/{image}/versions").json()
    assert [(v["version"], v["source"], v["author"], v["current"]) for v in versions] == [
        (1, "human", "reader-a", False),
        (2, "human", "reader-b", False),
        (3, "consensus", None, True),
    ]
    expected = pairwise_dice([truth, edited], LABELS)
    assert expected["spleen"] < 1.0
    details = _get(server, f"labels/{image}/consensus").json()
    assert details["version"] == 3
    assert details["readers"] == ["reader-a", "reader-b"]
    assert details["inputs"] == [1, 2]
    assert details["dice"] == pytest.approx(expected)
    status = _get(server, "status").json()
    assert status["images"]["labeled"] == 2
    assert status["readers"]["awaiting"] == 0
    assert status["readers"]["consensus"] == 1
    assert status["readers"]["mean_inter_reader_dice"] == pytest.approx(np.mean(list(expected.values())))
    assert status["readers"]["inter_reader_dice"] == pytest.approx(expected)


def test_after_the_consensus_a_final_label_is_a_correction(server: ServerProcess, shared: dict[str, Any]) -> None:
    image = shared["image"]
    truth = server.studies / "truth" / f"{image}.nii.gz"
    answer = _submit(server, image, truth, "reader-c")
    assert "readers" not in answer
    assert (server.studies / "labels" / "final" / f"{image}.nii.gz").read_bytes() == truth.read_bytes()
    latest = _get(server, f"labels/{image}/versions").json()[-1]
    assert (latest["version"], latest["source"], latest["author"], latest["current"]) == (4, "human", "reader-c", True)


def test_one_reader_reading_twice_counts_once(server: ServerProcess) -> None:
    status = _get(server, "status").json()
    unlabeled = [f"ct_00{i}" for i in range(1, 4)]
    image = next(i for i in unlabeled if not (server.studies / "labels" / "final" / f"{i}.nii.gz").exists())
    truth = server.studies / "truth" / f"{image}.nii.gz"
    _submit(server, image, truth, "reader-a")
    answer = _submit(server, image, truth, "reader-a")
    assert answer["readers"]["read_by"] == ["reader-a"]
    assert answer["readers"]["consensus_version"] is None
    assert _get(server, "status").json()["images"]["labeled"] == status["images"]["labeled"]


def test_enough_readings_left_by_a_crash_are_combined_at_start(tmp_path: Path) -> None:
    studies = tmp_path / "studies"
    generate_datastore(studies, modality="ct", count=2, seed=7, labeled=0)
    versions = LabelVersionStore(tmp_path / "versions", index=tmp_path / "versions.sqlite")
    truth = studies / "truth" / "ct_001.nii.gz"
    for reader in ("reader-a", "reader-b"):
        provenance = Provenance(LabelSource.HUMAN, author=reader)
        versions.add("ct_001", truth, tag="final", ext=".nii.gz", provenance=provenance)
    datastore = ValidatingDatastore(
        str(studies), labels=LabelMap.from_mapping(LABELS), versions=versions, readers=2, auto_reload=False
    )
    assert datastore.complete_consensus() == ["ct_001"]
    assert datastore.get_labeled_images() == ["ct_001"]
    stored = np.asarray(nib.load(datastore.get_label_uri("ct_001", "final")).dataobj)
    np.testing.assert_array_equal(stored, np.asarray(nib.load(truth).dataobj))
    assert versions.versions("ct_001")[-1].source is LabelSource.CONSENSUS
    assert datastore.complete_consensus() == []
