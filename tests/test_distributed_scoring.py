"""Scoring as a batch job: local worker processes, a real local Ray cluster, the CLI and the server.

Workers are real processes that get killed for real (SIGKILL): the tests check that what a
dead worker or a dead run was doing is scored again, and nothing that was finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from activelabel.cli import main
from activelabel.config import Settings, load_settings
from activelabel.datastore.factory import open_datastore
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.uncertainty import VolumeUncertainty
from activelabel.scoring.backends import LocalProcesses, RayCluster
from activelabel.scoring.distributed import score_distributed
from activelabel.scoring.scorer import ScoringOptions
from activelabel.store.label_versions import LabelVersionStore
from activelabel.store.scores import ScoreStore
from activelabel.testing.ray_local import LocalRayCluster, start_local_cluster
from activelabel.testing.server_process import free_port
from tests.conftest import FAST_CONF, ServerFactory

# Coarse grid and a small network: a volume scores in about a second on one core.
SMALL = {"spacing": "6,6,6", "roi_size": "32,32,32", "channels": "8,16,32"}
CONF = {**FAST_CONF, **SMALL}
OPTIONS = ScoringOptions(samples=2)
TASK_TIMEOUT = 240.0


@pytest.fixture(scope="module")
def studies(server_factory: ServerFactory) -> Path:
    """Five CT phantoms, the first one labeled."""
    return server_factory.phantoms("distributed", count=5, seed=0, labeled=1)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    """A real Ray head on 127.0.0.1 with 2 CPUs, stopped with all its workers afterwards."""
    cluster = start_local_cluster(cpus=2)
    try:
        yield cluster
    finally:
        cluster.stop()


def _project(studies: Path, state: Path) -> tuple[Settings, ModelStore, ScoreStore, dict[str, str]]:
    """Settings, published model (version 0), score store and unlabeled images of a fresh state folder."""
    settings = load_settings({**CONF, "state_dir": str(state)}, studies=str(studies), app_dir=str(state))
    models = ModelStore(settings.model_dir)
    models.ensure_initial(settings.network, settings.labels.to_dict(), seed=settings.seed)
    versions = LabelVersionStore(settings.label_versions_dir, index=settings.label_versions_path)
    datastore = open_datastore(str(studies), settings=settings, conf={}, versions=versions)
    unlabeled = {image_id: datastore.get_image_uri(image_id) for image_id in datastore.get_unlabeled_images()}
    return settings, models, ScoreStore(settings.scores_path), unlabeled


def _cli_args(studies: Path, state: Path) -> list[str]:
    conf = [part for key, value in {**CONF, "state_dir": str(state)}.items() for part in ("--conf", key, value)]
    return ["score", "--studies", str(studies), *conf, "--mc-samples", "2"]


def _fresh(store: ScoreStore, version: int = 0) -> dict[str, float]:
    """Image id -> scoring time of the scores from model ``version``."""
    return {image_id: s.scored_at for image_id, s in store.all().items() if s.model_version == version}


def _kill_one(processes: list[psutil.Process]) -> int:
    victim = processes[0]
    victim.kill()
    return victim.pid


def _pool_workers() -> list[psutil.Process]:
    """This process's scoring pool workers (children of its multiprocessing fork server)."""
    servers = [p for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())]
    return [worker for server in servers for worker in server.children()]


def _busy_ray_workers() -> list[psutil.Process]:
    """Ray worker processes running a scoring task right now (Ray titles them ``ray::<task>``)."""
    busy = []
    for process in psutil.process_iter(["cmdline"]):
        if (process.info["cmdline"] or [""])[0] == "ray::score_image":
            busy.append(process)
    return busy


def test_local_processes_score_every_stale_image_with_the_current_model_and_skip_fresh_ones(
    studies: Path, tmp_path: Path
) -> None:
    settings, models, store, unlabeled = _project(studies, tmp_path / "state")
    fresh_id, stale_id = sorted(unlabeled)[:2]
    stored = VolumeUncertainty(entropy=1.0, mutual_information=0.5, variance=0.1, foreground_fraction=0.2, samples=2)
    store.put(fresh_id, 0, stored, seconds=1.0)
    store.put(stale_id, 7, stored, seconds=1.0)  # from another model version
    before = store.get(fresh_id)

    report = score_distributed(
        unlabeled,
        model_store=models,
        preset=settings.preset,
        store=store,
        options=OPTIONS,
        backend=LocalProcesses(workers=2),
    )

    assert (report.scored, report.skipped, report.failed) == (len(unlabeled) - 1, 1, ())
    assert (report.backend, report.workers, report.threads) == ("local processes", 2, 1)
    assert set(_fresh(store)) == set(unlabeled)
    assert store.get(fresh_id) == before
    assert set(store.embeddings(0)) == set(unlabeled) - {fresh_id}


def test_a_killed_local_worker_share_is_redone(studies: Path, tmp_path: Path) -> None:
    settings, models, store, unlabeled = _project(studies, tmp_path / "state")
    backend = LocalProcesses(workers=2)
    killed: list[int] = []

    def kill_a_worker_once(done: int, total: int, image_id: str) -> None:
        if not killed:
            killed.append(_kill_one(_pool_workers()))

    report = score_distributed(
        unlabeled,
        model_store=models,
        preset=settings.preset,
        store=store,
        options=OPTIONS,
        backend=backend,
        progress=kill_a_worker_once,
    )

    assert killed
    assert backend.restarts == 1
    assert (report.scored, report.failed) == (len(unlabeled), ())
    assert set(_fresh(store)) == set(unlabeled)


def test_a_killed_score_run_resumes_with_only_the_images_still_stale(
    studies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    _, _, store, unlabeled = _project(studies, state)
    args = _cli_args(studies, state)
    run = subprocess.Popen(
        [sys.executable, "-m", "activelabel.cli", *args, "--workers", "1"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TASK_TIMEOUT
    try:
        while not _fresh(store) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the run and its worker processes, mid-way
        run.wait()
    first = _fresh(store)
    assert 1 <= len(first) < len(unlabeled), "the run should have been killed part-way"

    assert main(args) == 0

    out = capsys.readouterr().out
    assert f"scored {len(unlabeled) - len(first)}, skipped {len(first)} (fresh)" in out
    after = _fresh(store)
    assert set(after) == set(unlabeled)
    assert {image_id: after[image_id] for image_id in first} == first  # not scored again


def test_score_command_reports_an_unreachable_ray_address_in_one_line(
    studies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    _project(studies, state)
    address = f"127.0.0.1:{free_port()}"

    assert main([*_cli_args(studies, state), "--ray-address", address]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: the Ray cluster at {address} is unreachable: Connection refused"]


def test_a_killed_ray_worker_share_is_redone(studies: Path, tmp_path: Path, ray_cluster: LocalRayCluster) -> None:
    settings, models, store, unlabeled = _project(studies, tmp_path / "state")
    killed: list[int] = []

    def kill_a_busy_worker_once(done: int, total: int, image_id: str) -> None:
        busy = _busy_ray_workers()
        if not killed and busy:
            killed.append(_kill_one(busy))

    report = score_distributed(
        unlabeled,
        model_store=models,
        preset=settings.preset,
        store=store,
        options=OPTIONS,
        backend=RayCluster(address=ray_cluster.address, workers=2),
        progress=kill_a_busy_worker_once,
    )

    assert killed, "no Ray worker was scoring when the first result arrived"
    assert (report.backend, report.workers, report.threads) == ("ray", 2, 1)
    assert (report.scored, report.failed) == (len(unlabeled), ())
    assert set(_fresh(store)) == set(unlabeled)


def test_server_scoring_with_a_ray_address_scores_through_ray(
    studies: Path, server_factory: ServerFactory, ray_cluster: LocalRayCluster
) -> None:
    with server_factory.start(studies, conf={**SMALL, "ray_address": ray_cluster.address}) as server:
        response = requests.post(f"{server.url}/scoring/epistemic", json={}, timeout=60)
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + TASK_TIMEOUT
        task: dict = {}
        while time.monotonic() < deadline and task.get("status") not in ("DONE", "ERROR"):
            time.sleep(1.0)
            task = requests.get(f"{server.url}/scoring/", timeout=30).json()
        details = "\n".join(task.get("details", []))
        assert task.get("status") == "DONE", details or server.log_tail()
        assert "on ray: 2 worker(s)" in details
        store = ScoreStore(server.state_dir / "scores.sqlite")
        unlabeled = {path.name.removesuffix(".nii.gz") for path in studies.glob("*.nii.gz")} - {"ct_000"}
        assert set(_fresh(store)) == unlabeled
