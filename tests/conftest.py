"""Shared fixtures: generated datastores and a real ActiveLabel server in a subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from activelabel.data.phantoms import generate_datastore
from activelabel.server_process import ServerProcess, start_server

# Small settings so a whole train/score cycle takes seconds on two CPU cores.
FAST_CONF = {"max_epochs": "1", "mc_samples": "2", "samples_per_volume": "1", "retrain_after": "0"}


def start_test_server(
    studies: Path, work: Path, *, launcher: str = "activelabel", conf: dict[str, str] | None = None
) -> ServerProcess:
    """A server with fast settings (plus ``conf``) whose state lives in ``work/state``."""
    conf = {**FAST_CONF, "state_dir": str(work / "state"), **(conf or {})}
    return start_server(studies, log=work / "server.log", conf=conf, launcher=launcher)


@pytest.fixture(scope="module")
def ct_studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six CT phantoms, the first two labeled."""
    studies = tmp_path_factory.mktemp("ct") / "studies"
    generate_datastore(studies, modality="ct", count=6, seed=0, labeled=2)
    return studies


@pytest.fixture(scope="module")
def server(ct_studies: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server on the CT phantoms."""
    running = start_test_server(ct_studies, tmp_path_factory.mktemp("server"))
    try:
        yield running
    finally:
        running.stop()
