"""Run MONAI Label's background tasks in processes forked from a pre-imported worker.

MONAI Label starts ``python -m monailabel.interfaces.utils.app`` for every training,
scoring and batch-infer task; importing torch, MONAI, MONAI Label and the app takes seconds
before any work.  With the ``task_worker`` setting on (the default) the server keeps one
:mod:`activelabel.workers.zygote` process that has done those imports, and MONAI Label's task
runner launches :mod:`activelabel.workers.client` instead, which has the worker fork the task.

How it is hooked in: :func:`install_task_worker` replaces the ``subprocess`` name inside
``monailabel.utils.async_tasks.utils`` (and nowhere else) by :class:`WorkerSubprocess`,
whose ``Popen`` rewrites only the stock task command and otherwise is ``subprocess.Popen``.
MONAI Label's task runner keeps all its bookkeeping (task states, output lines in the task
details, stopping a task by killing its process), because the process it starts still stands
for the task.  The alternatives were worse: copying ``_task_func`` forks MONAI Label code that
would drift from upstream, and patching ``subprocess.Popen`` or ``sys.executable`` globally
would change every subprocess the server starts.

The socket lives in a private temporary folder (mode 0700, unique per server process)
rather than the state folder: a Unix socket path may not exceed about 100 bytes, and a
folder of its own leaves no stale socket to a later server.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monailabel.utils.async_tasks import utils as task_runner

from activelabel.config import setting
from activelabel.workers.client import CLIENT_MODULE
from activelabel.workers.protocol import STOCK_MODULE
from activelabel.workers.zygote import UNSAFE_TO_FORK

logger = logging.getLogger(__name__)

ZYGOTE_MODULE = "activelabel.workers.zygote"

RESTART_INTERVAL = 10.0
"""Seconds between two starts of the worker, so that a worker that keeps dying costs little."""


def worker_command(command: Sequence[str], *, socket_path: str, worker_pid: int) -> list[str]:
    """The task client's argv in place of the stock task command; any other command unchanged."""
    command = list(command)
    if command[1:3] != ["-m", STOCK_MODULE]:
        return command
    return [command[0], "-m", CLIENT_MODULE, socket_path, str(worker_pid), *command[3:]]


class TaskWorker:
    """Starts, restarts and stops the worker process of one server.

    Args:
        app_dir: the MONAI Label app folder whose ``main.py`` the worker imports in advance.
        restart_interval: the least seconds between two starts of the worker.
        niceness: how much lower the CPU priority of the tasks it forks is (the worker itself keeps the server's).
    """

    def __init__(self, *, app_dir: str | None, restart_interval: float = RESTART_INTERVAL, niceness: int = 0) -> None:
        self.app_dir = app_dir
        self.niceness = niceness
        self.restart_interval = restart_interval
        self.folder = Path(tempfile.mkdtemp(prefix="activelabel-worker-"))
        self.socket_path = str(self.folder / "worker.sock")
        self.disabled = False
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = -math.inf
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The worker's pid while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def ensure_running(self) -> int | None:
        """Start the worker unless it runs (or started less than ``restart_interval`` ago); its pid, or None.

        A worker that runs may still be importing; clients wait for it.
        """
        with self._lock:
            if self.disabled:
                return None
            if self._process is not None:
                code = self._process.poll()
                if code is None:
                    return self._process.pid
                if code == UNSAFE_TO_FORK:
                    logger.error("task worker cannot fork safely; tasks run in fresh processes")
                    self.disabled = True
                    return None
                logger.warning("task worker exited with code %s", code)
                self._process = None
            if time.monotonic() - self._started_at < self.restart_interval:
                return None
            return self._start()

    def _start(self) -> int:
        command = [sys.executable, "-m", ZYGOTE_MODULE, "--socket", self.socket_path]
        if self.app_dir:
            command += ["--app", self.app_dir]
        if self.niceness:
            command += ["--niceness", str(self.niceness)]
        # stdin: a pipe only this process writes to; the worker exits at its end of file.
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE)
        self._started_at = time.monotonic()
        logger.info("task worker starting (pid %d)", self._process.pid)
        return self._process.pid

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop the worker (it kills running tasks) and remove its folder."""
        with self._lock:
            self.disabled = True
            process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class WorkerSubprocess:
    """Stands in for the ``subprocess`` module inside MONAI Label's task runner.

    ``Popen`` of the stock task command starts the task client instead while the worker
    runs (the worker forks the task ``niceness`` lower), and otherwise starts the stock
    command ``niceness`` lower; every other name is the real module's.
    """

    def __init__(self, worker: TaskWorker | None, *, niceness: int = 0) -> None:
        self.worker = worker
        self.niceness = niceness

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, args: Sequence[str], *rest: Any, **kwargs: Any) -> subprocess.Popen[Any]:  # noqa: N802
        pid = self.worker.ensure_running() if self.worker is not None else None
        if pid is not None and self.worker is not None:
            args = worker_command(args, socket_path=self.worker.socket_path, worker_pid=pid)
        elif self.niceness and list(args)[1:3] == ["-m", STOCK_MODULE] and "preexec_fn" not in kwargs:
            niceness = self.niceness
            kwargs["preexec_fn"] = lambda: os.nice(niceness)
        return subprocess.Popen(args, *rest, **kwargs)


def installed_worker() -> TaskWorker | None:
    """The worker that runs this server's tasks, if any."""
    runner = task_runner.subprocess
    return runner.worker if isinstance(runner, WorkerSubprocess) else None


def install_task_worker(*, conf: Mapping[str, str], app_dir: str | None) -> TaskWorker | None:
    """Route MONAI Label's tasks through a started worker, unless ``task_worker`` is off.

    Either way tasks (training, scoring, batch infer) run ``task_niceness`` lower than the
    server, so interactive requests keep the CPU.  Called once in the server process; a
    second call returns the installed worker.
    """
    if isinstance(task_runner.subprocess, WorkerSubprocess):
        return installed_worker()
    niceness = int(setting("task_niceness", conf=conf))
    worker = TaskWorker(app_dir=app_dir, niceness=niceness) if setting("task_worker", conf=conf) else None
    if worker is not None:
        worker.ensure_running()
        atexit.register(worker.stop)
    task_runner.subprocess = WorkerSubprocess(worker, niceness=niceness)  # type: ignore[assignment]
    return worker
