"""The task worker: a process that has imported the task code once and forks a process per task.

``python -m activelabel.workers.zygote --socket PATH [--app DIR]`` imports torch, MONAI,
MONAI Label and the app's ``main.py`` (its imports: all of ActiveLabel), then listens on the
Unix socket ``PATH`` for :mod:`activelabel.workers.client` requests.  Each request gets a forked
process that runs the task (:mod:`activelabel.workers.fork`) and builds the app from scratch, as
MONAI Label's own task process would; the imports are what it saves.

Fork safety: the worker never builds the app and never runs a torch operation, so neither
torch's OpenMP pool nor CUDA exists when it forks (it refuses to serve if CUDA was
initialized by an import).  Isolation: a task that crashes, is OOM-killed or calls
``os._exit`` ends only its forked process; the client reports the exit code.  When a
client's connection closes before its task ended (MONAI Label stopped the task by killing
the client) the worker kills the forked process and its descendants.  The worker exits,
killing its tasks, on SIGTERM, SIGINT or end of its stdin (the server holds the other end,
so a server that dies however it dies takes the worker with it).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from activelabel.workers.fork import run_forked_task
from activelabel.workers.protocol import (
    STREAM_FDS,
    ProtocolError,
    TaskRequest,
    exit_code,
    receive_message,
    send_message,
)

logger = logging.getLogger("activelabel.workers.launcher")

REQUEST_TIMEOUT = 10.0
"""Seconds a connected client may take to send its request (clients send it at once)."""

UNSAFE_TO_FORK = 3
"""Exit code when an import initialized CUDA: forked processes could not use it."""


@dataclass
class RunningTask:
    """A forked task process and the connection of the client waiting for it."""

    pid: int
    conn: socket.socket
    client_gone: bool = False


def preload(app_dir: str | None) -> float:
    """Import what every task imports; the seconds it took.

    The app's ``main.py`` is executed the way MONAI Label loads it (not registered in
    ``sys.modules``), only for its imports; a failure there is logged, not fatal.
    """
    began = time.perf_counter()
    import monailabel.interfaces.utils.app  # noqa: F401
    import psutil  # noqa: F401
    from monailabel.utils.others.class_utils import module_from_file

    main_py = Path(app_dir) / "main.py" if app_dir else None
    if main_py is not None and main_py.is_file():
        try:
            module_from_file("main", str(main_py))
        except Exception:
            logger.exception("importing %s failed; tasks will import it themselves", main_py)
    return time.perf_counter() - began


def fork_unsafe_reason() -> str | None:
    """Why forking this process would give tasks a broken runtime, or None."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA was initialized while importing the task code"
    return None


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (what MONAI Label's own stop does)."""
    import psutil

    try:
        root = psutil.Process(pid)
        victims = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()


def listen(path: str) -> socket.socket:
    """A listening socket at ``path``, bound under a temporary name and renamed, so it appears ready."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    staging = f"{path}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(staging)
    os.chmod(staging, 0o600)
    listener.listen(16)
    os.replace(staging, path)
    return listener


class Zygote:
    """The accept/fork/reap loop, single-threaded so that forking is safe.

    Args:
        listener: the listening Unix socket.
        path: its file, removed when the worker stops.
        liveness: a descriptor whose end of file means the server is gone (the worker's stdin).
    """

    def __init__(self, *, listener: socket.socket, path: str, liveness: int, niceness: int = 0) -> None:
        self.listener = listener
        self.niceness = niceness
        self.path = path
        self.liveness = liveness
        self.tasks: dict[int, RunningTask] = {}
        self.selector = selectors.DefaultSelector()
        self.wakeup_read, self.wakeup_write = os.pipe()
        self.stopping = False

    def serve(self) -> None:
        """Run until SIGTERM, SIGINT or end of the liveness descriptor; then kill and reap the tasks."""
        os.set_blocking(self.wakeup_read, False)
        os.set_blocking(self.wakeup_write, False)
        signal.set_wakeup_fd(self.wakeup_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._request_stop)
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self.selector.register(self.wakeup_read, selectors.EVENT_READ, self._drain_wakeups)
        self.selector.register(self.liveness, selectors.EVENT_READ, self._check_liveness)
        try:
            while not self.stopping:
                for key, _events in self.selector.select():
                    key.data(key.fileobj)
                self._reap()
        finally:
            self._shutdown()

    def _request_stop(self, signum: int, _frame: object) -> None:
        logger.info("task worker stopping on signal %d", signum)
        self.stopping = True

    def _drain_wakeups(self, _fileobj: object) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wakeup_read, 512):
                pass

    def _check_liveness(self, _fileobj: object) -> None:
        if not os.read(self.liveness, 512):
            logger.info("task worker stopping: the server closed its end")
            self.stopping = True

    def _accept(self, _fileobj: object) -> None:
        conn, _ = self.listener.accept()
        fds: list[int] = []
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            self._check_peer(conn)
            message, fds = receive_message(conn, max_fds=STREAM_FDS)
            if message is None:
                conn.close()
                return
            if len(fds) != STREAM_FDS:
                raise ProtocolError(f"expected {STREAM_FDS} stream descriptors, got {len(fds)}")
            request = TaskRequest.from_message(message)
        except (OSError, ProtocolError) as error:
            logger.warning("task worker refused a request: %s", error)
            with contextlib.suppress(OSError):
                send_message(conn, {"error": str(error)})
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        try:
            self._fork(request, conn=conn, stdout=fds[0], stderr=fds[1])
        finally:
            for fd in fds:
                os.close(fd)

    def _check_peer(self, conn: socket.socket) -> None:
        """Only processes of the worker's own user may start tasks (the socket file is 0600 too)."""
        if not hasattr(socket, "SO_PEERCRED"):
            return
        credentials = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        uid = int.from_bytes(credentials[4:8], sys.byteorder)
        if uid != os.getuid():
            raise ProtocolError(f"client of user id {uid} refused")

    def _fork(self, request: TaskRequest, *, conn: socket.socket, stdout: int, stderr: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as error:
            logger.warning("task worker could not fork: %s", error)
            with contextlib.suppress(OSError):
                send_message(conn, {"error": f"fork failed: {error}"})
            conn.close()
            return
        if pid == 0:
            self._become_task(request, stdout=stdout, stderr=stderr, parent=parent)
        conn.settimeout(None)
        self.tasks[pid] = RunningTask(pid=pid, conn=conn)
        self.selector.register(conn, selectors.EVENT_READ, self._client_closed)
        try:
            send_message(conn, {"pid": pid})
        except OSError:
            self._client_closed(conn)

    def _become_task(self, request: TaskRequest, *, stdout: int, stderr: int, parent: int) -> None:
        """In the forked process: run the task, dropping the worker's descriptors first; never returns."""
        run_forked_task(
            request, stdout=stdout, stderr=stderr, parent=parent, release=self._release, niceness=self.niceness
        )

    def _release(self) -> None:
        """Close the worker's descriptors in a forked process (after its signal handlers are reset)."""
        self.selector.close()
        self.listener.close()
        for task in self.tasks.values():
            task.conn.close()
        for fd in (self.wakeup_read, self.wakeup_write):
            os.close(fd)

    def _client_closed(self, conn: socket.socket) -> None:
        """A client's connection is readable before its task ended: it is gone, so is its task."""
        task = next((task for task in self.tasks.values() if task.conn is conn), None)
        if task is None or task.client_gone:
            return
        task.client_gone = True
        self.selector.unregister(conn)
        logger.info("task client went away: killing forked process %d and its descendants", task.pid)
        kill_tree(task.pid)

    def _reap(self) -> None:
        while self.tasks:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            task = self.tasks.pop(pid, None)
            if task is not None:
                self._report(task, exit_code(status))

    def _report(self, task: RunningTask, code: int) -> None:
        if not task.client_gone:
            self.selector.unregister(task.conn)
            with contextlib.suppress(OSError):
                send_message(task.conn, {"exit": code})
        task.conn.close()

    def _shutdown(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.listener.close()
        for task in list(self.tasks.values()):
            kill_tree(task.pid)
        for pid, task in list(self.tasks.items()):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            task.conn.close()
        self.tasks.clear()


def configure_logging() -> None:
    """Worker messages on stderr (the server's log), leaving the root logger to the tasks."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)s] [%(levelname)s] (%(name)s) - %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--app", default=None, help="MONAI Label app folder whose main.py to import")
    parser.add_argument("--niceness", type=int, default=0, help="how much lower the forked tasks' CPU priority is")
    args = parser.parse_args(argv)
    configure_logging()
    seconds = preload(args.app)
    reason = fork_unsafe_reason()
    if reason is not None:
        logger.error("task worker not started: %s", reason)
        return UNSAFE_TO_FORK
    listener = listen(args.socket)
    logger.info("task worker ready in %.1f s on %s", seconds, args.socket)
    Zygote(listener=listener, path=args.socket, liveness=sys.stdin.fileno(), niceness=args.niceness).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
