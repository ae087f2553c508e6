"""kill -9 the server while it writes labels and while it trains: nothing acknowledged is lost.

The server runs in its own process group; SIGKILL to the group also kills the training
subprocess, like a power cut of the workstation.  The restarted server must come up on the
same folders, with every acknowledged label stored, readable and unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from activelabel.ml.checkpoints import ModelStore
from activelabel.testing.loadtest import check_labels
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory

TASK_TIMEOUT = 300.0


class Servers:
    """The servers a test started (the first and its restarts), all stopped at the end."""

    def __init__(self, factory: ServerFactory, studies: Path) -> None:
        self.factory = factory
        self.running = [factory.start(studies, conf={"max_epochs": "50"})]

    @property
    def current(self) -> ServerProcess:
        return self.running[-1]

    def kill(self) -> None:
        """SIGKILL the server and every task it started: no chance to clean up."""
        os.killpg(os.getpgid(self.current.process.pid), signal.SIGKILL)
        self.current.process.wait(timeout=30)

    def restart(self) -> ServerProcess:
        self.running.append(self.factory.restart(self.current))
        return self.current


@pytest.fixture
def servers(server_factory: ServerFactory) -> Iterator[Servers]:
    studies = server_factory.phantoms("crash", count=12, seed=5, labeled=2)
    started = Servers(server_factory, studies)
    try:
        yield started
    finally:
        for server in started.running:
            server.stop()


def _label(image: Path, value: int) -> bytes:
    """A valid gzipped NIfTI label on the image's grid: a cube of one label value."""
    reference = nib.load(str(image))
    data = np.zeros(reference.shape, dtype=np.uint8)
    x, y, z = (n // 2 for n in reference.shape)
    data[x - 3 : x + 3, y - 3 : y + 3, z - 3 : z + 3] = value
    return gzip.compress(nib.Nifti1Image(data, reference.affine).to_bytes())


def _submit_until_stopped(url: str, studies: Path, name: str, acked: dict[str, str], stop: threading.Event) -> None:
    """Take volumes and submit labels until told to stop or the server dies."""
    with requests.Session() as http:
        while not stop.is_set():
            try:
                answer = http.post(f"{url}/activelearning/random", json={"client_id": name}, timeout=30)
                image_id = answer.json().get("id")
                if not image_id:
                    return
                content = _label(studies / f"{image_id}.nii.gz", value=1 + len(acked) % 4)
                saved = http.put(
                    f"{url}/datastore/label",
                    params={"image": image_id, "tag": "final"},
                    files={"label": (f"{image_id}.nii.gz", content)},
                    data={"params": json.dumps({"client_id": name})},
                    timeout=30,
                )
            except requests.RequestException:
                return  # the server was killed mid-request: that label was never acknowledged
            if saved.ok:
                acked[image_id] = hashlib.sha256(content).hexdigest()


def _labeled(server: ServerProcess) -> set[str]:
    objects = requests.get(f"{server.url}/datastore/?output=all", timeout=30).json()["objects"]
    return {image_id for image_id, obj in objects.items() if "final" in (obj.get("labels") or {})}


def test_labels_acknowledged_before_a_kill_during_writes_survive_the_restart(servers: Servers) -> None:
    server = servers.current
    acked: dict[str, str] = {}
    stop = threading.Event()
    writers = [
        threading.Thread(target=_submit_until_stopped, args=(server.url, server.studies, f"reader-{i}", acked, stop))
        for i in range(3)
    ]
    for writer in writers:
        writer.start()
    deadline = time.monotonic() + 120
    while len(acked) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    servers.kill()  # while the writers are still uploading
    stop.set()
    for writer in writers:
        writer.join(timeout=60)
    assert len(acked) >= 4, server.log_tail()

    restarted = servers.restart()

    lost, corrupted = check_labels(restarted.studies / "labels" / "final", acked)
    assert (lost, corrupted) == ([], [])
    assert set(acked) <= _labeled(restarted)
    for image_id in acked:  # readable through the server too
        response = requests.get(
            f"{restarted.url}/datastore/label", params={"label": image_id, "tag": "final"}, timeout=30
        )
        assert response.status_code == 200, response.text
        assert hashlib.sha256(response.content).hexdigest() == acked[image_id]


def test_a_kill_during_training_leaves_the_model_and_labels_usable(servers: Servers) -> None:
    server = servers.current
    store = ModelStore(server.state_dir / "model")
    before = store.info()
    labels_before = {p.name: p.read_bytes() for p in (server.studies / "labels" / "final").glob("*.nii.gz")}
    started = requests.post(f"{server.url}/train/segmentation", json={"max_epochs": 50}, timeout=30)
    assert started.status_code == 200, started.text
    deadline = time.monotonic() + TASK_TIMEOUT
    while requests.get(f"{server.url}/train/", timeout=30).json().get("status") != "RUNNING":
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.5)
    time.sleep(8.0)  # well into data loading and the first epochs
    servers.kill()

    restarted = servers.restart()

    after = store.info()
    assert after is not None
    assert after.version >= before.version
    state, info = store.load()
    assert info.version == after.version
    assert state  # the checkpoint on disk is whole and loads
    labels_after = {p.name: p.read_bytes() for p in (restarted.studies / "labels" / "final").glob("*.nii.gz")}
    assert labels_after == labels_before
    again = requests.post(f"{restarted.url}/train/segmentation", json={"max_epochs": 1}, timeout=30)
    assert again.status_code == 200, again.text
    deadline = time.monotonic() + TASK_TIMEOUT
    while (task := requests.get(f"{restarted.url}/train/", timeout=30).json()).get("status") not in ("DONE", "ERROR"):
        assert time.monotonic() < deadline, restarted.log_tail()
        time.sleep(1.0)
    assert task["status"] == "DONE", restarted.log_tail()
    assert store.info().version == after.version + 1
