"""A throw-away Ray cluster on this machine, for tests, benchmarks and trying ``--ray-address``.

``ray start --head --block`` runs in its own process group, so stopping it ends the head,
its raylet and every worker it started, and nothing else (``ray stop`` would end every Ray
process of the machine).  Ray 2.x records the machine's address as the node's address even
when asked for 127.0.0.1, but the head is reached on the loopback address given here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from activelabel.errors import ActiveLabelError
from activelabel.testing.server_process import free_port

READY_LINE = "Ray runtime started"
START_TIMEOUT_SECONDS = 180.0


class RayStartError(ActiveLabelError, RuntimeError):
    """``ray start`` exited or did not come up in time; the message ends with its log."""


@dataclass
class LocalRayCluster:
    """A running single-node Ray head: its address (``127.0.0.1:PORT``), process and files."""

    address: str
    process: subprocess.Popen
    temp_dir: Path
    log: Path

    def stop(self, *, timeout: float = 5.0) -> None:
        """End the head and all its processes, then remove its files."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers that outlived the head
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def ray_executable() -> str:
    """The ``ray`` command beside this interpreter, so workers import the same packages."""
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.is_file() else "ray"


def start_local_cluster(*, cpus: int, object_store_mb: int = 100, port: int | None = None) -> LocalRayCluster:
    """Start a Ray head on 127.0.0.1 with ``cpus`` CPUs (so at most that many one-CPU tasks at once).

    Raises:
        RayStartError: when the head exits or is not up within a few minutes.
    """
    port = port or free_port()
    # A short folder: Ray's Unix sockets live under it and socket paths are limited to ~100 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="al-ray-", dir="/tmp"))
    log = temp_dir / "start.log"
    command = [
        ray_executable(),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-cpus",
        str(cpus),
        "--num-gpus",
        "0",
        "--include-dashboard",
        "false",
        "--object-store-memory",
        str(object_store_mb * 1024 * 1024),
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = LocalRayCluster(address=f"127.0.0.1:{port}", process=process, temp_dir=temp_dir, log=log)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while READY_LINE not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            cluster.stop()
            raise RayStartError(f"ray start did not come up (exit code {process.poll()}):\n{tail}")
        time.sleep(0.2)
    return cluster
