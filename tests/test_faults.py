"""Faults that lose nothing: a full disk, a damaged SQLite file, a kill during scoring.

Each fault is real: a size-limited tmpfs that fills up, bytes overwritten in the server's
database files between two runs, SIGKILL to the server's process group while a scoring task
writes.  The server runs in a subprocess, as in production.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from activelabel.data.phantoms import generate_datastore
from activelabel.ml.uncertainty import VolumeUncertainty
from activelabel.store.scores import ScoreStore
from activelabel.testing.server_process import ServerProcess, free_port
from tests.conftest import ServerFactory

REPO = Path(__file__).resolve().parents[1]
TASK_TIMEOUT = 300.0


def _label(image: Path, value: int) -> bytes:
    """A valid gzipped NIfTI label on the image's grid: a cube of one label value."""
    reference = nib.load(str(image))
    data = np.zeros(reference.shape, dtype=np.uint8)
    x, y, z = (n // 2 for n in reference.shape)
    data[x - 3 : x + 3, y - 3 : y + 3, z - 3 : z + 3] = value
    return gzip.compress(nib.Nifti1Image(data, reference.affine).to_bytes())


def _put_label(server: ServerProcess, image_id: str, content: bytes) -> requests.Response:
    return requests.put(
        f"{server.url}/datastore/label",
        params={"image": image_id, "tag": "final"},
        files={"label": (f"{image_id}.nii.gz", content)},
        data={"params": '{"client_id": "reader"}'},
        timeout=60,
    )


def _get_label(server: ServerProcess, image_id: str) -> bytes:
    response = requests.get(f"{server.url}/datastore/label", params={"label": image_id, "tag": "final"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def _versions(server: ServerProcess, image_id: str) -> list[dict]:
    response = requests.get(f"{server.url}/activelabel/labels/{image_id}/versions", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _objects(server: ServerProcess) -> dict[str, dict]:
    return requests.get(f"{server.url}/datastore/?output=all", timeout=30).json()["objects"]


def _labeled(server: ServerProcess) -> set[str]:
    return {image_id for image_id, obj in _objects(server).items() if "final" in (obj.get("labels") or {})}


def _status(server: ServerProcess) -> dict:
    return requests.get(f"{server.url}/activelabel/status", timeout=30).json()


def _kill(server: ServerProcess) -> None:
    """SIGKILL the server and every task it started: no chance to clean up."""
    os.killpg(os.getpgid(server.process.pid), signal.SIGKILL)
    server.process.wait(timeout=30)


def _fill(folder: Path) -> Path:
    """Write one file into ``folder`` until its file system has no byte left; returns the file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 20, 1 << 12, 1):  # big blocks first, then the last page byte by byte
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


# -- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 64 MiB tmpfs mounted for the test (root only), unmounted at its end."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root and mount(8)")
    folder = tmp_path_factory.mktemp("small-disk")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here, got {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_answers_507_keeps_the_previous_label_and_recovers_once_space_is_back(
    small_disk: Path, server_factory: ServerFactory
) -> None:
    studies = small_disk / "studies"
    generate_datastore(studies, modality="ct", count=3, seed=11, labeled=1)
    # The log stays off the small disk: only the studies and the server's state fill up.
    server = server_factory.start(studies, conf={"state_dir": str(small_disk / "state")})
    try:
        image_id = sorted(set(_objects(server)) - _labeled(server))[0]
        first = _label(studies / f"{image_id}.nii.gz", value=1)
        assert _put_label(server, image_id, first).status_code == 200
        before = _versions(server, image_id)

        filler = _fill(small_disk)
        second = _label(studies / f"{image_id}.nii.gz", value=2)
        refused = _put_label(server, image_id, second)

        assert refused.status_code == 507, refused.text
        assert "disk is full" in refused.json()["detail"]
        assert _get_label(server, image_id) == first
        assert _versions(server, image_id) == before
        assert (studies / "labels" / "final" / f"{image_id}.nii.gz").read_bytes() == first
        assert requests.get(f"{server.url}/info/", timeout=30).status_code == 200  # still serving

        filler.unlink()
        stored = _put_label(server, image_id, second)

        assert stored.status_code == 200, stored.text
        assert _get_label(server, image_id) == second
        assert [v["version"] for v in _versions(server, image_id)] == [v["version"] for v in before] + [
            before[-1]["version"] + 1
        ]
    finally:
        server.stop()  # before the tmpfs is unmounted


# -- damaged SQLite files ----------------------------------------------------------------------


def _overwrite_with_garbage(path: Path) -> None:
    size = max(path.stat().st_size, 4096)
    path.write_bytes(os.urandom(size))


def _truncate_to_half(path: Path) -> None:
    """Cut the file to half its size, without its write-ahead log: a copy that stopped half way."""
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    for side in ("-wal", "-shm"):
        Path(f"{path}{side}").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def stopped_project(server_factory: ServerFactory) -> tuple[ServerProcess, str]:
    """A project that served once and was stopped cleanly; the image that got a label version."""
    studies = server_factory.phantoms("damaged", count=4, seed=12, labeled=1)
    server = server_factory.start(studies)
    image_id = sorted(set(_objects(server)) - _labeled(server))[0]
    assert _put_label(server, image_id, _label(studies / f"{image_id}.nii.gz", value=1)).status_code == 200
    served = requests.post(f"{server.url}/activelearning/random", json={"client_id": "reader"}, timeout=30)
    assert served.status_code == 200, served.text
    server.stop()
    return server, image_id


def test_a_damaged_datastore_index_and_lease_file_are_rebuilt_and_the_log_says_so(
    stopped_project: tuple[ServerProcess, str], server_factory: ServerFactory
) -> None:
    stopped_project, _ = stopped_project
    state = stopped_project.state_dir
    labels_before = sorted(p.name for p in (Path(stopped_project.studies) / "labels" / "final").glob("*.nii.gz"))
    _truncate_to_half(state / "datastore.sqlite")
    _overwrite_with_garbage(state / "leases.sqlite")

    server = server_factory.restart(stopped_project)
    try:
        log = server.log.read_text(errors="replace")
        assert "datastore.sqlite was corrupt" in log
        assert "rebuilt from the image and label files" in log
        assert "leases.sqlite was corrupt" in log
        assert "leases start empty" in log
        assert list(state.glob("datastore.sqlite.corrupt-*"))
        assert list(state.glob("leases.sqlite.corrupt-*"))
        assert len(_objects(server)) == 4
        assert sorted(f"{image_id}.nii.gz" for image_id in _labeled(server)) == labels_before
        served = requests.post(f"{server.url}/activelearning/random", json={"client_id": "other"}, timeout=30)
        assert served.status_code == 200, served.text  # leases work again
    finally:
        server.stop()


def _serve(studies: Path | str, conf: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``activelabel serve`` run to its end (it only ends by itself when it refuses to start)."""
    command = [sys.executable, "-m", "activelabel.cli", "serve", "--studies", str(studies), "--port", str(free_port())]
    for key, value in conf.items():
        command += ["--conf", key, value]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)


def test_a_damaged_label_version_index_refuses_to_start_with_one_line_and_a_restored_backup_starts(
    stopped_project: tuple[ServerProcess, str], server_factory: ServerFactory, tmp_path: Path
) -> None:
    stopped_project, image_id = stopped_project
    index = stopped_project.state_dir / "label-versions.sqlite"
    backup = tmp_path / index.name
    shutil.copyfile(index, backup)
    _overwrite_with_garbage(index)
    damaged = index.read_bytes()

    result = _serve(stopped_project.studies, stopped_project.conf)

    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    naming = [line for line in result.stderr.splitlines() if str(index) in line]
    assert len(naming) == 1, result.stderr
    assert naming[0].startswith("error: ")
    assert "restore the file from a backup" in naming[0]
    assert index.read_bytes() == damaged  # left as found, for whoever restores it

    shutil.copyfile(backup, index)  # what the line says to do
    server = server_factory.restart(stopped_project)
    try:
        assert [v["source"] for v in _versions(server, image_id)] == ["human"]
    finally:
        server.stop()


# -- SIGKILL during scoring --------------------------------------------------------------------


def test_a_kill_during_scoring_leaves_no_torn_file_in_use_and_the_next_run_rescores_what_is_stale(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    studies = server_factory.phantoms("killscore", count=8, seed=13, labeled=1)
    state_dir = tmp_path / "state"
    unlabeled = sorted(p.name.removesuffix(".nii.gz") for p in studies.glob("*.nii.gz"))
    unlabeled = [i for i in unlabeled if not (studies / "labels" / "final" / f"{i}.nii.gz").exists()]
    # Scores of an older model: stale, to be redone.
    old = VolumeUncertainty(entropy=9.0, mutual_information=9.0, variance=9.0, foreground_fraction=0.1, samples=2)
    scores = ScoreStore(state_dir / "scores.sqlite")
    scores.put_many([(i, -1, old, 1.0) for i in unlabeled])

    server = server_factory.start(studies, conf={"state_dir": str(state_dir), "presegment": "true"})
    started = requests.post(f"{server.url}/scoring/epistemic", json={"mc_samples": 4}, timeout=60)
    assert started.status_code == 200, started.text
    deadline = time.monotonic() + TASK_TIMEOUT
    while _status(server)["scores"]["fresh"] < 1:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    _kill(server)
    left_stale = [i for i, score in scores.all().items() if score.model_version == -1]
    assert left_stale, "scoring finished before the kill"
    # What a kill in the middle of writing a pre-segmentation leaves: atomic_write's temporary file.
    torn = state_dir / "presegmentations" / left_stale[0] / ".v0.nii.gz.k1ll3d00.nii.gz"
    torn.parent.mkdir(parents=True, exist_ok=True)
    torn.write_bytes(b"\x1f\x8b half a file")

    restarted = server_factory.restart(server)
    try:
        assert not torn.exists(), restarted.log_tail()
        assert "temporary file(s) of interrupted writes" in restarted.log.read_text(errors="replace")
        version = _status(restarted)["model"]["version"]
        again = requests.post(f"{restarted.url}/scoring/epistemic", json={}, timeout=60)
        assert again.status_code == 200, again.text
        assert restarted.wait_for_task("scoring", timeout=TASK_TIMEOUT)["status"] == "DONE", restarted.log_tail()

        assert _status(restarted)["scores"] == {"fresh": len(unlabeled), "stale": 0, "unscored": 0}
        assert {scores.all()[i].model_version for i in unlabeled} == {version}
        for image_id in unlabeled:  # one whole pre-segmentation per volume, by the current model
            files = sorted((state_dir / "presegmentations" / image_id).iterdir())
            assert [f.name for f in files] == [f"v{version}.nii.gz"]
            assert nib.load(str(files[0])).get_fdata().shape == nib.load(str(studies / f"{image_id}.nii.gz")).shape
    finally:
        restarted.stop()
