"""Sparse annotation against a real server: partial labels, slice queries and slice counts.

Tests run in file order on one server of four CT phantoms, two labeled in full: the two
unlabeled ones get partial labels, and the slice strategy then asks only for slices that
nobody annotated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from activelabel.labelmap import NOT_ANNOTATED
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory
from tests.helpers import write_nifti

PARTIAL = {"ct_002": [0, 1, 2], "ct_003": [4]}
"""Axial slices each partial label annotates."""


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ServerProcess:
    studies = server_factory.phantoms("sparse", count=4, seed=3, labeled=2)
    return server_factory.start(studies)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> MONAILabelClient:
    return MONAILabelClient(server.url)


def _status(server: ServerProcess) -> dict[str, Any]:
    return requests.get(f"{server.url}/activelabel/status", timeout=30).json()


def _partial_label(server: ServerProcess, image: str, slices: list[int], folder: Path) -> Path:
    """The generator's truth of ``image`` on the axial ``slices``, 255 everywhere else."""
    truth = nib.load(server.studies / "truth" / f"{image}.nii.gz")
    values = np.asarray(truth.dataobj).astype(np.uint8)
    label = np.full_like(values, NOT_ANNOTATED)
    label[:, :, slices] = values[:, :, slices]
    return write_nifti(folder / f"{image}-partial.nii.gz", label, affine=truth.affine)


def _slices(server: ServerProcess, **request: Any) -> requests.Response:
    return requests.post(
        f"{server.url}/activelearning/uncertain_slices", json={"client_id": "reader-1", **request}, timeout=120
    )


def test_a_label_that_annotates_nothing_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    image = nib.load(server.studies / "ct_002.nii.gz")
    empty = write_nifti(tmp_path / "empty.nii.gz", np.full(image.shape, NOT_ANNOTATED, np.uint8), affine=image.affine)
    with empty.open("rb") as handle:
        response = requests.put(
            f"{server.url}/datastore/label",
            params={"image": "ct_002", "tag": "final"},
            files={"label": (empty.name, handle)},
            timeout=60,
        )
    assert response.status_code == 422, response.text
    assert "annotates no voxel" in response.json()["detail"]
    assert not (server.studies / "labels" / "final" / "ct_002.nii.gz").exists()


def test_partial_labels_are_stored_as_versions_that_record_their_slices(
    server: ServerProcess, client: MONAILabelClient, tmp_path: Path
) -> None:
    for image, slices in PARTIAL.items():
        client.save_label(image, str(_partial_label(server, image, slices, tmp_path)), tag="final")
        [version] = requests.get(f"{server.url}/activelabel/labels/{image}/versions", timeout=30).json()
        assert version["details"] == {"partial": True, "slice_axis": 2, "annotated_slices": slices}
        stored = np.asarray(nib.load(server.studies / "labels" / "final" / f"{image}.nii.gz").dataobj)
        assert int((stored != NOT_ANNOTATED).any(axis=(0, 1)).sum()) == len(slices)


def test_status_counts_annotated_slices_as_well_as_volumes(server: ServerProcess) -> None:
    status = _status(server)
    assert status["images"]["labeled"] == 4
    assert status["images"]["partially_labeled"] == 2
    depth = sum(nib.load(server.studies / f"{image}.nii.gz").shape[2] for image in PARTIAL)
    assert status["slices"]["annotated"] == sum(len(s) for s in PARTIAL.values())  # the full ones predate the server
    assert status["slices"]["in_labeled_volumes"] == depth


def test_slice_queries_name_a_partial_volume_and_only_slices_nobody_annotated(server: ServerProcess) -> None:
    answer = _slices(server, slices=3)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] in PARTIAL
    assert body["axis"] == 2
    assert len(body["slices"]) == 3
    assert len(set(body["slices"])) == 3
    assert not set(body["slices"]) & set(PARTIAL[body["id"]])
    assert body["annotated_slices"] == PARTIAL[body["id"]]
    assert body["lease"]["image_id"] == body["id"]
    spread = np.diff(body["slices"])
    assert spread.min() >= max(1, body["slice_count"] // 6)  # spread apart, not neighbours


def test_leases_cover_whole_volumes_and_bad_requests_get_a_reason(server: ServerProcess) -> None:
    """reader-1 holds one of the two volumes with open slices (previous test): one is left."""

    def ask(reader: str) -> dict[str, Any]:
        response = requests.post(
            f"{server.url}/activelearning/uncertain_slices", json={"client_id": reader, "slices": 2}, timeout=120
        )
        assert response.status_code == 200, response.text
        return response.json()

    second = ask("reader-2")
    assert second["id"] in PARTIAL
    assert ask("reader-3") == {}  # both volumes are leased, whatever slices are left in them
    for request, message in [({"slices": 0}, "slices must be an integer"), ({"axis": 5}, "axis must be")]:
        response = _slices(server, **request)
        assert response.status_code == 422, response.text
        assert message in response.json()["detail"]
