"""Inside a process forked from the task worker: become MONAI Label's task process and run the task.

The stock task process is ``python -m monailabel.interfaces.utils.app ARGS`` started with a
given environment.  A forked process already has the modules imported, so it only has to
take on what differs from one task to the next before calling the same ``run_main``:

- stdin, stdout and stderr: ``/dev/null`` and the client's descriptors;
- the environment, working directory and ``PYTHONPATH`` entries of the request;
- MONAI Label's settings object, which reads the environment when it is built (it was built
  in the worker, with the server's environment);
- the seeds that a fresh interpreter draws from the OS at import (``random``, NumPy's global
  generator); torch's default generator starts from a fixed seed in a fresh process and the
  worker never draws from it, so it is left as is.

Then it exits the way the interpreter would (non-daemon threads joined, ``atexit`` handlers
run, streams flushed) but with ``os._exit``, never returning into the worker's code.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable

from activelabel.workers.protocol import STOCK_MODULE, TaskRequest

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the worker that forked it dies (Linux), so no task outlives it."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return
    if os.getppid() != parent:  # the worker died before prctl took effect
        os._exit(1)


def reset_signals() -> None:
    """The dispositions of a fresh interpreter instead of the worker's handlers."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def attach_streams(stdout: int, stderr: int) -> None:
    """stdin from ``/dev/null``; stdout and stderr onto the client's descriptors."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for target, fd in ((1, stdout), (2, stderr)):
        os.dup2(fd, target)
    for fd in {stdout, stderr} - {0, 1, 2}:
        os.close(fd)


def python_path_entries(pythonpath: str, *, present: Iterable[str]) -> list[str]:
    """``PYTHONPATH`` entries not yet on ``sys.path``, in order (a bundle path MONAI Label added)."""
    seen = set(present)
    entries: list[str] = []
    for entry in pythonpath.split(os.pathsep):
        if entry and entry not in seen:
            seen.add(entry)
            entries.append(entry)
    return entries


def adopt_environment(request: TaskRequest) -> None:
    """The request's environment, working directory and import path, and settings built from them."""
    os.environ.clear()
    os.environ.update(request.env)
    os.chdir(request.cwd)
    sys.path[1:1] = python_path_entries(request.env.get("PYTHONPATH", ""), present=sys.path)
    from monailabel.config import settings

    settings.__init__()  # pydantic settings re-read the environment in place; importers share this object


def reseed() -> None:
    """Fresh OS-drawn seeds where a fresh interpreter would have them."""
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def exit_status(code: object) -> int:
    """The exit status the interpreter gives a ``SystemExit`` code."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_app_method(argv: tuple[str, ...]) -> int:
    """``python -m monailabel.interfaces.utils.app ARGV`` in this process; its exit status."""
    from monailabel.interfaces.utils import app as stock

    stock.clear_cache()
    sys.argv = [stock.__file__ or STOCK_MODULE, *argv]
    try:
        stock.run_main()
    except SystemExit as stop:
        return exit_status(stop.code)
    except BaseException:  # the interpreter prints any uncaught exception and exits with 1
        traceback.print_exc()
        return 1
    return 0


def finish(code: int) -> None:
    """End the process like an interpreter shutdown would, without unwinding into the worker."""
    try:
        # The interpreter's own shutdown step: first the threading exit hooks (they stop idle
        # concurrent.futures workers, which would otherwise wait for work forever), then a join of
        # every non-daemon thread.
        shutdown = getattr(threading, "_shutdown", None)
        if callable(shutdown) and threading.current_thread() is threading.main_thread():
            shutdown()
        else:
            current = threading.current_thread()
            for thread in threading.enumerate():
                if thread is not current and not thread.daemon:
                    thread.join()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def run_forked_task(
    request: TaskRequest, *, stdout: int, stderr: int, parent: int, release: Callable[[], None], niceness: int = 0
) -> None:
    """Everything a forked task process does; never returns.

    Args:
        request: the task's arguments, environment and working directory.
        stdout: the client's stdout descriptor (closed here once duplicated).
        stderr: the client's stderr descriptor (closed here once duplicated).
        parent: the worker's pid, to detect that it died while this process started.
        release: closes the worker's own descriptors (its socket, pipes, other clients).
        niceness: how much lower this task's CPU priority is than the worker's.
    """
    code = 1
    try:
        if niceness:
            os.nice(niceness)
        die_with_parent(parent)
        reset_signals()
        release()
        attach_streams(stdout, stderr)
        adopt_environment(request)
        reseed()
        code = run_app_method(request.argv)
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        finish(code)
