"""Where distributed scoring runs: tasks on a Ray cluster, or a pool of local processes.

A backend takes the images still to score and yields one outcome per image as soon as a
worker finishes it, in completion order; the driver writes each to the score store at once.
Both backends send one image per task and keep only a few tasks in flight per worker, so a
worker that dies loses only the image it was scoring, which is then scored again: Ray retries
the task, the local backend restarts its pool and resubmits what had not finished.

Torch threads per worker are ``cores // workers`` (at least 1), so workers x threads never
exceeds the cores of the machine (local) or the CPUs of the cluster (Ray).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

from activelabel.errors import ActiveLabelError
from activelabel.scoring.worker import ImageFailure, ImageResult, ScoringJob, score_image

logger = logging.getLogger(__name__)

Outcome = ImageResult | ImageFailure

# Tasks queued per worker beyond the one it runs, so a worker never waits for the driver.
_QUEUED_PER_WORKER = 1
CONNECT_TIMEOUT_SECONDS = 5.0


class ScoringError(ActiveLabelError, RuntimeError):
    """A distributed scoring run that cannot start or go on; the message is one line."""


def threads_per_worker(*, cores: int, workers: int) -> int:
    """Torch threads for each of ``workers`` sharing ``cores`` without oversubscribing them."""
    return max(1, cores // max(1, workers))


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ScoringBackend(Protocol):
    """A way of running workers: entered, it is connected and sized; it then streams outcomes."""

    name: str
    workers: int | None
    threads: int

    def __enter__(self) -> ScoringBackend: ...

    def __exit__(self, *exc: object) -> None: ...

    def results(self, job: ScoringJob, todo: Mapping[str, str]) -> Iterator[Outcome]:
        """One outcome per image of ``todo`` (id -> path), in completion order."""
        ...


@dataclass
class LocalProcesses:
    """A pool of ``workers`` local processes (default: one per core).

    A worker process that dies (killed, out of memory) breaks the whole pool: the pool is
    started again and the images that had not finished are resubmitted, up to
    ``max_restarts`` times in one run (``restarts`` counts them).
    """

    workers: int | None = None
    max_restarts: int = 3
    name: str = "local processes"
    threads: int = field(init=False, default=1)
    restarts: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ScoringError(f"workers must be >= 1, got {self.workers}")
        cores = available_cores()
        self.workers = self.workers or cores
        self.threads = threads_per_worker(cores=cores, workers=self.workers)

    def __enter__(self) -> LocalProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def results(self, job: ScoringJob, todo: Mapping[str, str]) -> Iterator[Outcome]:
        pending = dict(todo)
        while pending:
            try:
                yield from self._run_pool(job, pending)
            except BrokenProcessPool:
                self.restarts += 1
                if self.restarts > self.max_restarts:
                    raise ScoringError(
                        f"scoring worker processes died {self.restarts} times; {len(pending)} image(s) stay stale "
                        "and the next run scores them"
                    ) from None
                logger.warning(
                    "a scoring worker process died: restarting the pool for %d unfinished image(s)", len(pending)
                )

    def _run_pool(self, job: ScoringJob, pending: dict[str, str]) -> Iterator[Outcome]:
        """Score ``pending`` in one pool, removing each image from it as its outcome is yielded."""
        assert self.workers is not None
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_worker_context())
        queue = iter(list(pending.items()))
        running: dict[Future[ImageResult], str] = {}
        try:
            while True:
                for image_id, path in islice(queue, self.workers * (1 + _QUEUED_PER_WORKER) - len(running)):
                    running[pool.submit(score_image, job, image_id, path, threads=self.threads)] = image_id
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    image_id = running.pop(future)
                    error = future.exception()
                    if isinstance(error, BrokenProcessPool):
                        broken = True
                        continue
                    del pending[image_id]
                    yield future.result() if error is None else ImageFailure(image_id, _describe(error))
                if broken:
                    raise BrokenProcessPool("a worker process died")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class RayCluster:
    """Tasks on the Ray cluster at ``address`` (``host:port`` of its head, or ``auto``).

    ``workers`` is how many tasks run at once (default: one per CPU of the cluster); each
    task asks Ray for ``threads`` CPUs.  A task whose worker dies is retried by Ray up to
    ``max_retries`` times; after that its image is reported as failed and stays stale.
    """

    address: str
    workers: int | None = None
    max_retries: int = 3
    name: str = "ray"
    threads: int = field(init=False, default=1)
    _ray: Any = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ScoringError(f"workers must be >= 1, got {self.workers}")

    def __enter__(self) -> RayCluster:
        check_reachable(self.address)
        import ray  # only runs that use Ray pay for importing it (seconds)

        self._ray = ray
        try:
            ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ScoringError(f"cannot connect to the Ray cluster at {self.address}: {_describe(error)}") from None
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < 1:
            ray.shutdown()
            raise ScoringError(f"the Ray cluster at {self.address} has no CPUs to run scoring tasks")
        self.workers = self.workers or cpus
        self.threads = threads_per_worker(cores=cpus, workers=self.workers)
        return self

    def __exit__(self, *exc: object) -> None:
        self._ray.shutdown()

    def results(self, job: ScoringJob, todo: Mapping[str, str]) -> Iterator[Outcome]:
        ray = self._ray
        assert self.workers is not None
        remote = ray.remote(score_image).options(
            num_cpus=self.threads,
            num_gpus=1 if job.device.startswith("cuda") else 0,
            max_retries=self.max_retries,
            retry_exceptions=False,
        )
        queue = iter(todo.items())
        running: dict[Any, str] = {}
        try:
            while True:
                for image_id, path in islice(queue, self.workers * (1 + _QUEUED_PER_WORKER) - len(running)):
                    running[remote.remote(job, image_id, path, threads=self.threads)] = image_id
                if not running:
                    return
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    image_id = running.pop(ref)
                    outcome: Outcome
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as error:  # the image's own error, or retries used up
                        outcome = ImageFailure(image_id, _describe(error))
                    yield outcome
        finally:
            for ref in running:
                ray.cancel(ref, force=True)


def _worker_context() -> multiprocessing.context.BaseContext:
    """Fork workers from a fresh server process that imported the scoring code once.

    Cheaper than spawning (torch and MONAI are imported once, not per worker or pool
    restart) and safe unlike plain fork, which would copy the caller's threads and state.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([score_image.__module__])
    return context


def make_backend(*, address: str | None, workers: int | None) -> LocalProcesses | RayCluster:
    """Ray tasks when a cluster ``address`` is given, local processes otherwise."""
    if address:
        return RayCluster(address=address, workers=workers)
    return LocalProcesses(workers=workers)


def check_reachable(address: str, *, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Fail fast with one line when a ``host:port`` address does not accept connections.

    Ray itself retries an unreachable head for a long time before giving up.
    """
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ScoringError(f"bad Ray address {address!r}: expected HOST:PORT of the cluster's head, or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise ScoringError(f"the Ray cluster at {address} is unreachable: {error.strerror or error}") from None


def _describe(error: BaseException) -> str:
    """The first line of an error, for one-line reports."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
