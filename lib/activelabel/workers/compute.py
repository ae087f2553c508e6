"""A bounded pool for the network passes of interactive requests, apart from the HTTP threads.

A network pass takes seconds on a CPU; requests that need one (a pre-segmentation that is not
cached) wait in this pool's queue, so the HTTP threads and the event loop stay free for the
cheap requests (next sample, submit, status).  The queue has a limit: a request arriving when
``workers + queue`` passes are already admitted is refused at once with :class:`ComputeBusy`
(the server answers 503 with ``Retry-After``), never left hanging.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from activelabel.errors import ActiveLabelError

T = TypeVar("T")


class ComputeBusy(ActiveLabelError, RuntimeError):
    """Every worker is busy and the queue is full; ``retry_after`` is the advised wait in seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class ComputeStats:
    """What the pool is doing now and has done since the server started."""

    workers: int
    queue_limit: int
    running: int
    queued: int
    completed: int
    rejected: int
    mean_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ComputePool:
    """Runs callables on ``workers`` threads with at most ``queue`` more waiting.

    :meth:`run` blocks the calling thread (an HTTP worker thread, never the event loop) until
    its callable finished, and re-raises what it raised.  The executor starts on first use, so
    a process that never runs interactive passes (a task subprocess) starts no thread.

    Args:
        workers: passes run at once (keyword-only, >= 1).
        queue: passes that may wait for a worker (>= 0).
    """

    def __init__(self, *, workers: int, queue: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if queue < 0:
            raise ValueError(f"queue must be >= 0, got {queue}")
        self.workers = workers
        self.queue = queue
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._admitted = 0
        self._running = 0
        self._completed = 0
        self._rejected = 0
        self._seconds = 0.0

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= self.workers + self.queue:
                self._rejected += 1
                raise ComputeBusy(
                    f"the server is busy: {self._running} network passes running and {self._admitted - self._running} "
                    f"waiting (queue limit {self.queue}); retry later",
                    retry_after=self._retry_after(),
                )
            self._admitted += 1
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="compute")

    def _retry_after(self) -> int:
        """Whole seconds until a queue place is likely free: the waiting passes' mean time per worker."""
        mean = self._seconds / self._completed if self._completed else 5.0
        return max(1, math.ceil(mean * max(1, self._admitted - self.workers + 1) / self.workers))

    def run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` on a pool thread, in the caller's context variables.

        Raises:
            ComputeBusy: when the pool already admitted ``workers + queue`` calls.
        """
        self._admit()
        context = contextvars.copy_context()

        def timed() -> T:
            began = time.perf_counter()
            with self._lock:
                self._running += 1
            try:
                return context.run(function, *args, **kwargs)
            finally:
                with self._lock:
                    self._running -= 1
                    self._completed += 1
                    self._seconds += time.perf_counter() - began

        try:
            assert self._executor is not None
            return self._executor.submit(timed).result()
        finally:
            with self._lock:
                self._admitted -= 1

    def stats(self) -> ComputeStats:
        with self._lock:
            return ComputeStats(
                workers=self.workers,
                queue_limit=self.queue,
                running=self._running,
                queued=self._admitted - self._running,
                completed=self._completed,
                rejected=self._rejected,
                mean_seconds=self._seconds / self._completed if self._completed else None,
            )
