"""Shared fixtures: generated datastores and a real ActiveLabel server in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from activelabel.data.phantoms import generate_datastore
from tests.helpers import REPO

SERVER_START_TIMEOUT = 180.0

# Small settings so a whole train/score cycle takes seconds on two CPU cores.
FAST_CONF = {"max_epochs": "1", "mc_samples": "2", "samples_per_volume": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A server subprocess and where its state lives."""

    url: str
    studies: Path
    state_dir: Path
    log: Path
    process: subprocess.Popen

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def launch_command(launcher: str, studies: Path, port: int) -> list[str]:
    """``activelabel serve`` or MONAI Label's own ``start_server`` with the ActiveLabel app."""
    if launcher == "activelabel":
        return [sys.executable, "-m", "activelabel.cli", "serve", "--studies", str(studies), "--port", str(port)]
    if launcher == "monailabel":
        app = REPO / "apps" / "radiology_al"
        return [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
    raise ValueError(f"unknown launcher {launcher!r}")


def start_server(
    studies: Path,
    state_dir: Path,
    log: Path,
    *,
    conf: dict[str, str] | None = None,
    launcher: str = "activelabel",
) -> RunningServer:
    """Start a server subprocess and wait until it answers ``/info/``."""
    port = free_port()
    command = launch_command(launcher, studies, port)
    if launcher == "monailabel":
        command += ["--host", "127.0.0.1", "--port", str(port)]
    for key, value in {**FAST_CONF, "state_dir": str(state_dir), **(conf or {})}.items():
        command += ["--conf", key, value]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    handle = log.open("w")
    process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)
    server = RunningServer(f"http://127.0.0.1:{port}", studies, state_dir, log, process)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if requests.get(f"{server.url}/info/", timeout=5).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"server did not answer within {SERVER_START_TIMEOUT:.0f}s:\n{server.log_tail()}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def ct_studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six CT phantoms, the first two labeled."""
    studies = tmp_path_factory.mktemp("ct") / "studies"
    generate_datastore(studies, modality="ct", count=6, seed=0, labeled=2)
    return studies


@pytest.fixture(scope="module")
def server(ct_studies: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real server on the CT phantoms; its log is printed when a test fails."""
    work = tmp_path_factory.mktemp("server")
    running = start_server(ct_studies, work / "state", work / "server.log")
    try:
        yield running
    finally:
        stop_server(running)
