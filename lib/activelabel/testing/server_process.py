"""Start and stop an ActiveLabel server in a subprocess (tests, benchmarks, scripts)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from activelabel.config import DEFAULT_APP_DIR
from activelabel.errors import ActiveLabelError


class ServerStartError(ActiveLabelError, RuntimeError):
    """The server exited or did not answer in time; the message ends with its log."""


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_command(
    launcher: str, studies: Path | str, port: int, conf: dict[str, str], *, app_dir: Path = DEFAULT_APP_DIR
) -> list[str]:
    """Argv of ``activelabel serve`` or of MONAI Label's own ``start_server`` with ``app_dir`` (ours by default)."""
    if launcher == "activelabel":
        command = [sys.executable, "-m", "activelabel.cli", "serve", "--studies", str(studies), "--port", str(port)]
    elif launcher == "monailabel":
        command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir)]
        command += ["--studies", str(studies), "--host", "127.0.0.1", "--port", str(port)]
    else:
        raise ValueError(f"unknown launcher {launcher!r}; choose activelabel or monailabel")
    for key, value in conf.items():
        command += ["--conf", key, value]
    return command


@dataclass
class ServerProcess:
    """A running server: its URL, folders and log file."""

    url: str
    studies: Path | str
    log: Path
    process: subprocess.Popen
    started_in: float
    conf: dict[str, str] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        """Where the server keeps scores and models (the ``state_dir`` setting or its default)."""
        return Path(self.conf["state_dir"]) if "state_dir" in self.conf else Path(self.studies) / ".activelabel"

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the server's log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_for_task(self, kind: str, *, timeout: float = 300.0, poll: float = 1.0) -> dict:
        """MONAI Label's status of the latest ``kind`` task (``train``, ``scoring``, ``batch/infer``) once it ended.

        Raises:
            TimeoutError: when it is still running after ``timeout`` seconds (the message ends with the log).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = requests.get(f"{self.url}/{kind}/", timeout=30).json()
            if task.get("status") in ("DONE", "ERROR"):
                return task
            time.sleep(poll)
        raise TimeoutError(f"{kind} did not finish in {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, *, timeout: float = 30.0) -> None:
        """Terminate the server and its task subprocesses (training, scoring, batch infer).

        The server runs in its own process group, so the signal reaches the tasks MONAI Label
        started too; whatever has not exited after ``timeout`` seconds is killed.
        """
        group = os.getpgid(self.process.pid) if self.process.poll() is None else None
        if group is not None:
            os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def start_server(
    studies: Path | str,
    *,
    log: Path,
    conf: dict[str, str] | None = None,
    launcher: str = "activelabel",
    app_dir: Path = DEFAULT_APP_DIR,
    timeout: float = 180.0,
) -> ServerProcess:
    """Start a server on a free loopback port and wait until ``/info/`` answers (200, or 401 with access control).

    Raises:
        ServerStartError: when the process exits or does not answer within ``timeout``.
    """
    port = free_port()
    conf = dict(conf or {})
    command = launch_command(launcher, studies, port, conf, app_dir=app_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = ServerProcess(f"http://127.0.0.1:{port}", studies, log, process, 0.0, conf)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(f"server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            # 401: the app answers, but access control is on (a users file was given).
            if requests.get(f"{server.url}/info/", timeout=5).status_code in (200, 401):
                server.started_in = time.perf_counter() - began
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    server.stop()
    raise ServerStartError(f"server did not answer within {timeout:.0f}s:\n{server.log_tail()}")
