"""Tasks forked from the pre-imported task worker: same results and logs, isolation, stop, fallback.

The server tests run in file order and share one server with the worker on; the last one
stops it.  A second server checks that ``task_worker false`` keeps MONAI Label's own path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from activelabel.testing.server_process import ServerProcess
from activelabel.workers.fork import finish
from activelabel.workers.launcher import CLIENT_MODULE, worker_command
from activelabel.workers.protocol import STOCK_MODULE
from tests.conftest import ServerFactory

TASK_TIMEOUT = 300.0
FORKED = "activelabel task worker: forked process"
LONG_TRAINING = {"max_epochs": 200}


@pytest.fixture(scope="module")
def studies(server_factory: ServerFactory) -> Path:
    """Three CT phantoms, two labeled: one volume to score, enough to train."""
    return server_factory.phantoms("worker", count=3, seed=0, labeled=2)


@pytest.fixture(scope="module")
def server(studies: Path, server_factory: ServerFactory) -> ServerProcess:
    return server_factory.start(studies)


def _wait_until(condition: Callable[[], Any], *, what: str, timeout: float = TASK_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _start(server: ServerProcess, kind: str, body: dict[str, Any] | None = None) -> None:
    path = {"scoring": "scoring/epistemic", "train": "train/segmentation"}[kind]
    response = requests.post(f"{server.url}/{path}", json=body or {}, timeout=60)
    assert response.status_code == 200, response.text


def _finished(server: ServerProcess, kind: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        task = requests.get(f"{server.url}/{kind}/", timeout=30).json()
        return task if task.get("status") in ("DONE", "ERROR", "STOPPED") else None

    return _wait_until(ended, what=f"{kind} to end:\n{server.log_tail()}")


def _run(server: ServerProcess, kind: str) -> dict[str, Any]:
    _start(server, kind)
    return _finished(server, kind)


def _worker(server: ServerProcess) -> psutil.Process | None:
    """The server's task worker process, if one runs."""
    for child in psutil.Process(server.process.pid).children():
        try:
            if "activelabel.workers.zygote" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _forked_task(worker: psutil.Process) -> psutil.Process:
    """The worker's forked task process, once it runs."""
    return _wait_until(lambda: next(iter(worker.children()), None), what="a forked task process", timeout=60)


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_only_the_stock_task_command_is_rewritten() -> None:
    stock = [sys.executable, "-m", STOCK_MODULE, "-m", "train", "-r", "{}"]
    assert worker_command(stock, socket_path="/s.sock", worker_pid=7) == [
        sys.executable,
        "-m",
        CLIENT_MODULE,
        "/s.sock",
        "7",
        "-m",
        "train",
        "-r",
        "{}",
    ]
    other = [sys.executable, "-m", "other.module", "-m", "train"]
    assert worker_command(other, socket_path="/s.sock", worker_pid=7) == other


def test_task_client_imports_no_torch() -> None:
    heavy = "{'torch', 'numpy', 'monai', 'monailabel'}"
    code = (
        f"import sys, activelabel.workers.client; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_task_client_without_a_worker_runs_the_stock_command(tmp_path: Path) -> None:
    exited = subprocess.Popen(["true"])
    exited.wait()
    command = [sys.executable, "-m", CLIENT_MODULE, str(tmp_path / "none.sock"), str(exited.pid), "-m", "nonsense"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert "unavailable" in result.stdout
    assert "invalid choice: 'nonsense'" in result.stderr  # the stock module's own argument check
    assert result.returncode == 2


def test_scoring_and_training_run_forked_with_their_log_in_the_task_details(server: ServerProcess) -> None:
    for kind, line in (("scoring", "Result:"), ("train", "published model version")):
        task = _run(server, kind)
        assert task["status"] == "DONE", task
        details = "\n".join(task["details"])
        assert FORKED in details
        assert "exited with code 0" in details
        assert line in details
    assert _worker(server) is not None


def test_killed_task_process_ends_in_error_and_the_worker_runs_the_next_task(server: ServerProcess) -> None:
    worker = _worker(server)
    assert worker is not None
    _start(server, "train", LONG_TRAINING)
    _forked_task(worker).send_signal(signal.SIGKILL)
    assert _finished(server, "train")["status"] == "ERROR"
    assert worker.is_running()
    assert _worker(server) == worker
    task = _run(server, "scoring")
    assert task["status"] == "DONE", task
    assert FORKED in "\n".join(task["details"])


def test_stopping_training_kills_its_forked_process(server: ServerProcess) -> None:
    worker = _worker(server)
    assert worker is not None
    _start(server, "train", LONG_TRAINING)
    forked = _forked_task(worker)
    response = requests.delete(f"{server.url}/train/", timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "STOPPED"
    _wait_until(lambda: _gone(forked), what="the forked training process to die", timeout=30)
    assert worker.is_running()


def test_a_killed_worker_is_replaced_and_tasks_keep_running(server: ServerProcess) -> None:
    worker = _worker(server)
    assert worker is not None
    worker.send_signal(signal.SIGKILL)
    _wait_until(lambda: _gone(worker), what="the worker to die", timeout=30)
    task = _run(server, "scoring")
    assert task["status"] == "DONE", task
    replacement = _wait_until(lambda: _worker(server), what="a new worker", timeout=60)
    assert replacement.pid != worker.pid
    task = _run(server, "scoring")
    assert task["status"] == "DONE", task
    assert FORKED in "\n".join(task["details"])


def test_stopping_the_server_stops_the_worker_and_its_tasks(server: ServerProcess) -> None:
    worker = _worker(server)
    assert worker is not None
    _start(server, "train", LONG_TRAINING)
    forked = _forked_task(worker)
    server.stop()
    _wait_until(lambda: _gone(worker) and _gone(forked), what="the worker and its task to exit", timeout=30)


def test_with_task_worker_off_tasks_run_in_fresh_processes(studies: Path, server_factory: ServerFactory) -> None:
    with server_factory.start(studies, conf={"task_worker": "false"}) as running:
        assert _worker(running) is None
        task = _run(running, "scoring")
        assert task["status"] == "DONE", task
        assert "activelabel task worker" not in "\n".join(task["details"])
        assert _worker(running) is None


def test_a_forked_task_that_leaves_an_idle_thread_pool_still_exits() -> None:
    pid = os.fork()
    if pid == 0:  # the forked task: a thread pool (as the compute pool starts) stays idle until exit
        pool = ThreadPoolExecutor(max_workers=1)
        pool.submit(lambda: None).result()
        finish(0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked task hung at exit waiting for its idle thread pool")
