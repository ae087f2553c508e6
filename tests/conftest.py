"""Shared fixtures: generated datastores and real ActiveLabel servers in subprocesses.

Every test that needs a server gets it from :class:`ServerFactory` (the ``server_factory``
fixture): it generates the phantom studies, starts the server with the fast test settings and
stops every server it started when the test module ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from activelabel.data.phantoms import generate_datastore
from activelabel.testing.server_process import ServerProcess, start_server

# Small settings so a whole train/score cycle takes seconds on two CPU cores.  The servers use the
# cheaper UNet; the default DynUNet is trained, scored and triaged end to end by test_simulation
# and served by test_server's default-architecture test.
FAST_CONF = {
    "architecture": "unet",
    "max_epochs": "1",
    "steps_per_epoch": "0",
    "patience": "0",
    "mc_samples": "2",
    "samples_per_volume": "1",
    "retrain_after": "0",
    "presegment_refresh": "2",
    "rescore_after_training": "false",
    "refine_steps": "1",
}


class ServerFactory:
    """Phantom studies and real servers for one test module, all stopped at its end."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self.started: list[ServerProcess] = []

    def phantoms(self, name: str, *, count: int, seed: int, labeled: int, modality: str = "ct") -> Path:
        """A new folder ``<tmp>/<name>N/studies`` of ``count`` phantoms, the first ``labeled`` labeled."""
        studies = self._tmp.mktemp(name) / "studies"
        generate_datastore(studies, modality=modality, count=count, seed=seed, labeled=labeled)
        return studies

    def start(
        self,
        studies: Path | str,
        *,
        conf: dict[str, str] | None = None,
        launcher: str = "activelabel",
        work: Path | None = None,
    ) -> ServerProcess:
        """A server on ``studies`` with :data:`FAST_CONF` (plus ``conf``), its state and log in ``work``."""
        work = work if work is not None else self._tmp.mktemp("server")
        conf = {**FAST_CONF, "state_dir": str(work / "state"), **(conf or {})}
        server = start_server(studies, log=work / f"server-{len(self.started)}.log", conf=conf, launcher=launcher)
        self.started.append(server)
        return server

    def restart(self, server: ServerProcess) -> ServerProcess:
        """A new server on the same studies and settings (the old one stopped or killed)."""
        log = server.log.with_name(f"server-{len(self.started)}.log")
        again = start_server(server.studies, log=log, conf=server.conf)
        self.started.append(again)
        return again

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Starts servers for the module's tests and stops them all when the module is done."""
    factory = ServerFactory(tmp_path_factory)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def ct_studies(server_factory: ServerFactory) -> Path:
    """Six CT phantoms, the first two labeled."""
    return server_factory.phantoms("ct", count=6, seed=0, labeled=2)


@pytest.fixture(scope="module")
def server(ct_studies: Path, server_factory: ServerFactory) -> ServerProcess:
    """A real server on the CT phantoms."""
    return server_factory.start(ct_studies)
