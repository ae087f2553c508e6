"""Label versions: every stored label is kept with its provenance and can be listed and fetched.

The store is tested on its own, then through a real server: the model's pre-segmentation,
submissions, a correction and a label shipped with the studies all become versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from activelabel.store.label_versions import LabelSource, LabelVersionStore, Provenance, file_sha256
from activelabel.store.validation import InputRejected
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory
from tests.helpers import write_nifti


def _store(tmp_path: Path) -> LabelVersionStore:
    return LabelVersionStore(tmp_path / "versions", index=tmp_path / "versions.sqlite")


def _file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_versions_are_numbered_per_image_and_keep_their_bytes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    human = Provenance(source=LabelSource.HUMAN, author="reader-1", seconds_spent=12.0)
    first = store.add("a", _file(tmp_path / "1.nii.gz", b"one"), tag="final", ext=".nii.gz", provenance=human)
    model = Provenance(source=LabelSource.MODEL, model_version=3)
    second = store.add("a", _file(tmp_path / "2.nii.gz", b"two"), tag="original", ext=".nii.gz", provenance=model)
    other = store.add("b", _file(tmp_path / "3.nrrd", b"three"), tag="final", ext=".nrrd", provenance=human)
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert [v.version for v in store.versions("a")] == [1, 2]
    assert store.path(first).read_bytes() == b"one"
    assert store.path(other).name == "v1.nrrd"
    assert first.sha256 == file_sha256(tmp_path / "1.nii.gz")
    listed = store.get("a", 2)
    assert listed is not None
    assert (listed.source, listed.model_version, listed.author) == (LabelSource.MODEL, 3, None)
    assert store.get("a", 3) is None
    assert store.latest("a", tag="final") == first
    assert first.to_dict()["source"] == "human"
    assert "file" not in first.to_dict()


def test_readings_count_each_reader_once_with_their_latest_label(tmp_path: Path) -> None:
    store = _store(tmp_path)
    label = _file(tmp_path / "l.nii.gz", b"x")
    for author in ("r1", "r2", "r1"):
        store.add("a", label, tag="final", ext=".nii.gz", provenance=Provenance(LabelSource.HUMAN, author=author))
    store.add("a", label, tag="original", ext=".nii.gz", provenance=Provenance(LabelSource.MODEL))
    store.add("b", label, tag="final", ext=".nii.gz", provenance=Provenance(LabelSource.HUMAN, author="r2"))
    readings = store.readings("a")
    assert {author: v.version for author, v in readings.items()} == {"r1": 3, "r2": 2}
    assert store.reader_counts() == {"a": 2, "b": 1}
    assert store.images_read_by("r2") == {"a", "b"}
    assert store.images_read_by("r3") == set()


def test_an_unrecorded_live_label_is_imported_once(tmp_path: Path) -> None:
    store = _store(tmp_path)
    live = _file(tmp_path / "live.nii.gz", b"shipped with the studies")
    imported = store.keep_unrecorded("a", live, tag="final", ext=".nii.gz")
    assert imported is not None
    assert imported.source is LabelSource.IMPORTED
    assert store.keep_unrecorded("a", live, tag="final", ext=".nii.gz") is None


def test_image_ids_that_are_not_plain_names_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(InputRejected, match="not allowed"):
        store.add(
            "../x",
            _file(tmp_path / "l.nii.gz", b"x"),
            tag="final",
            ext=".nii.gz",
            provenance=Provenance(LabelSource.HUMAN),
        )


# --- through a real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ServerProcess:
    studies = server_factory.phantoms("versions", count=4, seed=4, labeled=1)
    return server_factory.start(studies)


@pytest.fixture(scope="module")
def client(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> MONAILabelClient:
    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")), client_id="reader-1")


def _versions(server: ServerProcess, image: str) -> list[dict[str, Any]]:
    response = requests.get(f"{server.url}/activelabel/labels/{image}/versions", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def submit(server: ServerProcess, image: str, label: Path, **params: Any) -> dict[str, Any]:
    """PUT a final label as a client does, with ``params`` (client_id, seconds_spent) as its JSON params."""
    with label.open("rb") as handle:
        response = requests.put(
            f"{server.url}/datastore/label",
            params={"image": image, "tag": "final"},
            data={"params": json.dumps(params)},
            files={"label": ("label.nii.gz", handle)},
            timeout=60,
        )
    assert response.status_code == 200, response.text
    return response.json()


def _version_bytes(server: ServerProcess, image: str, number: int) -> bytes:
    response = requests.get(f"{server.url}/activelabel/labels/{image}/versions/{number}", timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def test_pre_segmentation_is_a_model_version(client: MONAILabelClient, server: ServerProcess) -> None:
    _, params = client.infer("segmentation", "ct_001", {"save_label": True})
    [version] = _versions(server, "ct_001")
    assert version["version"] == 1
    assert version["tag"] == "original"
    assert version["source"] == "model"
    assert version["model_version"] == params["model_version"] == 0
    assert version["author"] is None
    assert version["current"] is True
    stored = server.studies / "labels" / "original" / "ct_001.nii.gz"
    assert _version_bytes(server, "ct_001", 1) == stored.read_bytes()
    assert version["sha256"] == file_sha256(stored)


def test_submissions_and_corrections_are_versions_with_author_and_time(server: ServerProcess, tmp_path: Path) -> None:
    truth = server.studies / "truth" / "ct_001.nii.gz"
    answer = submit(server, "ct_001", truth, client_id="reader-1", seconds_spent=30.5)
    assert answer["label_version"] == 2
    image = nib.load(server.studies / "ct_001.nii.gz")
    edited = np.asarray(nib.load(truth).dataobj).astype(np.uint8)
    edited[edited == 2] = 0
    correction = write_nifti(tmp_path / "correction.nii.gz", edited, affine=image.affine)
    assert submit(server, "ct_001", correction, client_id="reader-2")["label_version"] == 3
    versions = _versions(server, "ct_001")
    assert [(v["version"], v["tag"], v["source"], v["author"]) for v in versions] == [
        (1, "original", "model", None),
        (2, "final", "human", "reader-1"),
        (3, "final", "human", "reader-2"),
    ]
    assert versions[1]["seconds_spent"] == pytest.approx(30.5)
    assert versions[0]["created_at"] <= versions[1]["created_at"] <= versions[2]["created_at"]
    assert [v["current"] for v in versions] == [True, False, True]
    live = server.studies / "labels" / "final" / "ct_001.nii.gz"
    assert _version_bytes(server, "ct_001", 2) == truth.read_bytes()
    assert _version_bytes(server, "ct_001", 3) == live.read_bytes() == correction.read_bytes()
    info = requests.get(
        f"{server.url}/datastore/label/info", params={"label": "ct_001", "tag": "final"}, timeout=30
    ).json()
    assert (info["version"], info["source"]) == (3, "human")


def test_a_label_shipped_with_the_studies_is_kept_before_it_is_replaced(server: ServerProcess) -> None:
    live = server.studies / "labels" / "final" / "ct_000.nii.gz"
    shipped = live.read_bytes()
    assert _versions(server, "ct_000") == []
    submit(server, "ct_000", server.studies / "truth" / "ct_000.nii.gz", client_id="reader-1")
    versions = _versions(server, "ct_000")
    assert [(v["version"], v["source"], v["current"]) for v in versions] == [(1, "imported", False), (2, "human", True)]
    assert _version_bytes(server, "ct_000", 1) == shipped


def test_unknown_image_or_version_is_404(server: ServerProcess) -> None:
    for path in ("no_such_image/versions", "no_such_image/versions/1", "ct_001/versions/99", "ct_002/versions/1"):
        response = requests.get(f"{server.url}/activelabel/labels/{path}", timeout=30)
        assert response.status_code == 404, path
        assert response.json()["detail"], path
    assert (
        "has no label version 99 (it has versions 1 to 3)"
        in requests.get(f"{server.url}/activelabel/labels/ct_001/versions/99", timeout=30).json()["detail"]
    )


def test_a_rejected_upload_stores_no_version(server: ServerProcess, tmp_path: Path) -> None:
    bad = write_nifti(tmp_path / "bad.nii.gz", np.zeros((9, 9, 9), np.uint8))
    with bad.open("rb") as handle:
        response = requests.put(
            f"{server.url}/datastore/label",
            params={"image": "ct_002", "tag": "final"},
            files={"label": (bad.name, handle)},
            timeout=60,
        )
    assert response.status_code == 422, response.text
    assert _versions(server, "ct_002") == []
