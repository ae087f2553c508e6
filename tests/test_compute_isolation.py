"""Compute kept off the control plane: a bounded pool for network passes, MONAI Label's routes off the event loop."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from activelabel.server.offload import find_route, offload_blocking_endpoints
from activelabel.testing.server_process import ServerProcess
from activelabel.workers.compute import ComputeBusy, ComputePool
from tests.conftest import ServerFactory


def _miss(server: ServerProcess, image_id: str) -> requests.Response:
    """A segmentation that must run the network (the cache is bypassed)."""
    return requests.post(
        f"{server.url}/infer/segmentation",
        params={"image": image_id, "output": "json"},
        data={"params": json.dumps({"cache": False})},
        timeout=300,
    )


@pytest.fixture(scope="module")
def studies(server_factory: ServerFactory) -> Path:
    return server_factory.phantoms("isolation", count=6, seed=5, labeled=2)


def test_next_sample_and_status_are_answered_while_network_passes_run(
    server_factory: ServerFactory, studies: Path
) -> None:
    server = server_factory.start(studies, conf={"infer_workers": "1", "infer_queue": "4"})
    _miss(server, "ct_002")  # warm: the network is loaded and the writer imported
    finished: list[float] = []

    def infer(image_id: str) -> int:
        status = _miss(server, image_id).status_code
        finished.append(time.monotonic())
        return status

    with ThreadPoolExecutor(3) as pool:
        passes = [pool.submit(infer, image_id) for image_id in ("ct_003", "ct_004", "ct_005")]
        time.sleep(0.5)  # the passes are admitted and queued behind one worker
        busy = requests.get(f"{server.url}/activelabel/status", timeout=60).json()["serving"]["compute"]
        sample = requests.post(f"{server.url}/activelearning/random", json={"client_id": "cheap"}, timeout=60)
        answered = time.monotonic()
        statuses = [p.result() for p in passes]

    assert statuses == [200, 200, 200]
    assert sample.status_code == 200
    assert sample.json()["id"]
    assert busy["running"] + busy["queued"] >= 2
    assert answered < max(finished)  # the cheap requests did not wait for the queue to drain


def test_a_full_compute_queue_answers_503_with_retry_after_and_a_reason(
    server_factory: ServerFactory, studies: Path
) -> None:
    server = server_factory.start(studies, conf={"infer_workers": "1", "infer_queue": "0"})
    _miss(server, "ct_002")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda image_id: _miss(server, image_id), ["ct_002", "ct_003", "ct_004", "ct_005"]))

    codes = sorted(a.status_code for a in answers)
    assert codes[0] == 200, [a.text for a in answers]
    assert set(codes) <= {200, 503}
    assert 503 in codes
    busy = next(a for a in answers if a.status_code == 503)
    assert int(busy.headers["Retry-After"]) >= 1
    assert "busy" in busy.json()["detail"]
    compute = requests.get(f"{server.url}/activelabel/status", timeout=60).json()["serving"]["compute"]
    assert compute["rejected"] == codes.count(503)
    assert (compute["running"], compute["queued"]) == (0, 0)


def test_background_tasks_run_at_a_lower_cpu_priority_than_the_server(server: ServerProcess) -> None:
    worker = _task_worker_pid(server.process.pid)
    assert requests.post(f"{server.url}/train/segmentation", json={}, timeout=60).status_code == 200
    _poll(lambda: next(iter(_children(worker)), None), "a forked training process")
    base = _niceness(server.process.pid)

    def lowered_child() -> int | None:  # a forked process may exit between listing and reading
        for child in _children(worker):
            try:
                niceness = _niceness(child)
            except FileNotFoundError:
                continue
            if niceness != base:
                return niceness
        return None

    lowered = _poll(lowered_child, "lowered priority")
    server.wait_for_task("train")

    assert lowered - base == 10  # task_niceness
    assert _niceness(worker) == base  # the worker itself forks at full speed


def _poll(probe: Callable[[], int | None], what: str, *, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.02)
    raise AssertionError(f"found no {what} within {timeout:.0f} s")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _task_worker_pid(server_pid: int) -> int:
    def worker() -> int | None:
        for child in _children(server_pid):
            if b"activelabel.workers.zygote" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        return None

    return _poll(worker, "task worker")


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_the_pool_refuses_beyond_workers_plus_queue_and_counts_it() -> None:
    pool = ComputePool(workers=1, queue=1)
    release = threading.Event()
    started = threading.Event()

    def hold() -> str:
        started.set()
        release.wait(10)
        return "done"

    with ThreadPoolExecutor(2) as callers:
        first = callers.submit(pool.run, hold)
        assert started.wait(10)
        second = callers.submit(pool.run, lambda: "queued")
        deadline = time.monotonic() + 10
        while pool.stats().queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(ComputeBusy, match="busy") as refused:
            pool.run(lambda: "refused")
        release.set()
        assert (first.result(), second.result()) == ("done", "queued")

    assert refused.value.retry_after >= 1
    stats = pool.stats()
    assert (stats.completed, stats.rejected, stats.running, stats.queued) == (2, 1, 0, 0)


def test_the_pool_re_raises_what_the_call_raised() -> None:
    pool = ComputePool(workers=1, queue=0)

    def fail() -> None:
        raise KeyError("broken")

    with pytest.raises(KeyError, match="broken"):
        pool.run(fail)
    assert pool.stats().queued == 0
    assert pool.run(lambda: 7) == 7


@pytest.mark.parametrize(("workers", "queue"), [(0, 1), (1, -1)])
def test_the_pool_refuses_impossible_sizes(workers: int, queue: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        ComputePool(workers=workers, queue=queue)


def test_blocking_async_endpoints_run_in_worker_threads_and_request_readers_stay_on_the_loop() -> None:
    app = FastAPI()
    loop_threads: dict[str, str] = {}

    @app.get("/blocking")
    async def blocking(value: int = 1) -> dict[str, int]:
        loop_threads["blocking"] = threading.current_thread().name
        time.sleep(0.01)  # a blocking call inside an async endpoint, as MONAI Label's are
        return {"value": value}

    @app.post("/reads-body")
    async def reads_body(request: Request) -> dict[str, int]:
        loop_threads["reads_body"] = threading.current_thread().name
        return {"length": len(await request.body())}

    changed = offload_blocking_endpoints(app, module=__name__)

    assert changed == ["GET /blocking"]
    with TestClient(app) as client:
        main = client.portal.call(lambda: threading.current_thread().name)  # the loop's own thread
        assert client.get("/blocking", params={"value": 3}).json() == {"value": 3}
        assert client.post("/reads-body", content=b"abcd").json() == {"length": 4}
    assert loop_threads["blocking"] != main
    assert loop_threads["reads_body"] == main
    assert "value" in json.dumps(app.openapi()["paths"]["/blocking"])  # the same parameters are documented
    assert find_route(app, "/blocking", "GET").endpoint.__name__ == "blocking"
