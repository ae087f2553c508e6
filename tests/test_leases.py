"""Leases and the retrain policy: concurrent clinicians never get the same volume; submit and skip
release it; enough new labels start one training run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from activelabel.store.leases import LeasedDatastoreView, LeaseStore
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ServerProcess:
    studies = server_factory.phantoms("leases", count=5, seed=2, labeled=1)
    return server_factory.start(studies, conf={"retrain_after": "1"})


def _next(server: ServerProcess, client: str, strategy: str = "random") -> dict:
    response = requests.post(f"{server.url}/activelearning/{strategy}", json={"client_id": client}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_concurrent_clients_never_get_the_same_volume(server: ServerProcess) -> None:
    clients = [f"reader-{i}" for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda c: _next(server, c, "most_uncertain"), clients))
    ids = [a["id"] for a in answers]
    assert len(set(ids)) == 4
    assert {a["lease"]["client_id"] for a in answers} == set(clients)
    assert _next(server, "reader-5") == {}  # every unlabeled volume is leased


def test_a_client_asking_again_keeps_its_own_volume(server: ServerProcess) -> None:
    first = _next(server, "reader-0", "most_uncertain")
    assert _next(server, "reader-0", "most_uncertain")["id"] == first["id"]


def test_skip_returns_the_volume_to_the_pool(server: ServerProcess) -> None:
    held = _next(server, "reader-1", "most_uncertain")["id"]
    wrong = requests.post(f"{server.url}/activelabel/skip", params={"image": held, "client_id": "reader-2"}, timeout=30)
    assert wrong.status_code == 409
    unknown = requests.post(f"{server.url}/activelabel/skip", params={"image": "nope", "client_id": "x"}, timeout=30)
    assert unknown.status_code == 404
    skipped = requests.post(
        f"{server.url}/activelabel/skip", params={"image": held, "client_id": "reader-1"}, timeout=30
    )
    assert skipped.json() == {"image": held, "released": True}
    assert _next(server, "reader-5")["id"] == held


def test_submission_releases_the_lease(server: ServerProcess) -> None:
    held = _next(server, "reader-2", "most_uncertain")["id"]
    truth = server.studies / "truth" / f"{held}.nii.gz"
    with truth.open("rb") as handle:
        response = requests.put(
            f"{server.url}/datastore/label",
            params={"image": held, "tag": "final"},
            data={"params": '{"client_id": "reader-2"}'},
            files={"label": (truth.name, handle)},
            timeout=60,
        )
    assert response.status_code == 200, response.text
    leases = LeaseStore(server.state_dir / "leases.sqlite", seconds=60)
    assert held not in leases.active()


def test_enough_new_labels_start_training_once(server: ServerProcess) -> None:
    # retrain_after=1: the submission above was one new label since version 0 (trained on none).
    task = requests.get(f"{server.url}/train/", timeout=30).json()
    assert task["status"] in ("SUBMITTED", "RUNNING", "DONE"), task
    tasks = requests.get(f"{server.url}/train/", params={"all": True}, timeout=30).json()
    assert len(tasks) == 1


def test_expired_leases_stop_counting(tmp_path: Path) -> None:
    leases = LeaseStore(tmp_path / "leases.sqlite", seconds=10)
    leases.grant("a", "reader-1", now=100.0)
    assert leases.held_by_others("reader-2", now=105.0) == {"a"}
    assert leases.held_by_others("reader-1", now=105.0) == set()
    assert leases.held_by_others("reader-2", now=111.0) == set()


def test_leased_view_hides_only_excluded_unlabeled_volumes() -> None:
    class Store:
        def get_unlabeled_images(self) -> list[str]:
            return ["a", "b", "c"]

        def list_images(self) -> list[str]:
            return ["a", "b", "c", "d"]

    view = LeasedDatastoreView(Store(), excluded={"b"})
    assert view.get_unlabeled_images() == ["a", "c"]
    assert view.list_images() == ["a", "b", "c", "d"]
