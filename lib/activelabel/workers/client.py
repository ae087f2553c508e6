"""The command MONAI Label runs for a task when the task worker is on: a thin client of the worker.

``python -m activelabel.workers.client SOCKET WORKER_PID ARGS...`` asks the task worker
``WORKER_PID`` listening on ``SOCKET`` (waiting while it still imports) to fork a process
that runs ``python -m monailabel.interfaces.utils.app ARGS...`` with this process's
environment, working directory, stdout and stderr; it then waits and exits with that
process's exit code.  MONAI Label keeps treating this client as the task
process: its output is the task's output, its exit code the task's result, and killing it
(stopping the task) makes the worker kill the forked process.

When the worker cannot take the task (it exited, hangs or refuses) the client
replaces itself with the stock command, so a task never fails because of the worker.

Standard library only (``activelabel/__init__`` imports nothing either): this process
starts in milliseconds instead of the seconds the stock command spends importing.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Sequence

from activelabel.errors import ActiveLabelError
from activelabel.processes import process_running
from activelabel.workers.protocol import STOCK_MODULE, ProtocolError, TaskRequest, receive_message, send_message

HANDSHAKE_TIMEOUT = 30.0
"""Seconds to wait for the worker to report the forked process; longer means it is stuck."""

STARTUP_TIMEOUT = 120.0
"""Seconds to wait for a worker that is still importing; it started before this task, so waiting
for it is never slower than the stock command's own imports, unless it hangs."""

POLL_SECONDS = 0.05

CLIENT_MODULE = "activelabel.workers.client"
PREFIX = "activelabel task worker:"


class WorkerUnavailable(ActiveLabelError):
    """The worker did not start the task; the stock command can run it instead."""


def wait_until_ready(socket_path: str, *, worker_pid: int, timeout: float = STARTUP_TIMEOUT) -> None:
    """Wait while the worker is still importing (its socket appears when it is ready).

    Raises:
        WorkerUnavailable: when the worker exits or does not get ready within ``timeout``.
    """
    if os.path.exists(socket_path):
        return
    print(f"{PREFIX} waiting for the worker (pid {worker_pid}) to finish starting", flush=True)
    deadline = time.monotonic() + timeout
    while not os.path.exists(socket_path):
        if not process_running(worker_pid):
            raise WorkerUnavailable(f"the worker (pid {worker_pid}) exited while starting")
        if time.monotonic() > deadline:
            raise WorkerUnavailable(f"the worker was not ready within {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def start_in_worker(socket_path: str, request: TaskRequest) -> tuple[socket.socket, int]:
    """Hand the task to the worker; the open connection and the pid of the forked process.

    Raises:
        WorkerUnavailable: when nothing was started (no worker, a refusal, a stuck worker).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        sock.connect(socket_path)
        send_message(sock, request.to_message(), fds=(sys.stdout.fileno(), sys.stderr.fileno()))
        reply, _ = receive_message(sock)
    except (OSError, ProtocolError) as error:
        sock.close()
        raise WorkerUnavailable(f"{type(error).__name__}: {error}") from None
    if reply is None or not isinstance(reply.get("pid"), int):
        sock.close()
        reason = reply.get("error") if reply else None
        raise WorkerUnavailable(str(reason or "the worker closed the connection"))
    sock.settimeout(None)
    return sock, reply["pid"]


def wait_for_exit(sock: socket.socket) -> int:
    """The forked process's exit code; 1 when the worker went away before reporting it."""
    try:
        reply, _ = receive_message(sock)
    except (OSError, ProtocolError) as error:
        reply, detail = None, f" ({error})"
    else:
        detail = ""
    if reply is None or not isinstance(reply.get("exit"), int):
        print(f"{PREFIX} the worker stopped before the task finished{detail}", file=sys.stderr, flush=True)
        return 1
    return int(reply["exit"])


def run_stock(argv: Sequence[str]) -> None:
    """Replace this process with MONAI Label's own task command (same pid, so stopping still works)."""
    os.execv(sys.executable, [sys.executable, "-m", STOCK_MODULE, *argv])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or not args[1].isdigit():
        print(f"usage: python -m {CLIENT_MODULE} SOCKET WORKER_PID [{STOCK_MODULE} arguments...]", file=sys.stderr)
        return 2
    socket_path, worker_pid, app_args = args[0], int(args[1]), args[2:]
    request = TaskRequest(argv=tuple(app_args), env=dict(os.environ), cwd=os.getcwd())
    try:
        wait_until_ready(socket_path, worker_pid=worker_pid)
        sock, pid = start_in_worker(socket_path, request)
    except WorkerUnavailable as reason:
        print(f"{PREFIX} unavailable ({reason}); running the task in a fresh process", flush=True)
        run_stock(app_args)
        return 1  # not reached: execv replaces this process
    print(f"{PREFIX} forked process {pid} runs the task", flush=True)
    with sock:
        code = wait_for_exit(sock)
    # MONAI Label keeps only a task's last lines in its details: say again who ran it.
    print(f"{PREFIX} forked process {pid} exited with code {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
