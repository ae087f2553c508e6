"""Task start-up: seconds from request to DONE with the task worker on and off, side by side.

Starts two real servers on identical tiny phantom datastores (three CT volumes): one
with ``task_worker`` on (tasks fork from a pre-imported worker), one with it off (MONAI
Label's fresh ``python -m monailabel.interfaces.utils.app`` per task).  After one untimed
scoring per server (it scores and embeds what is there, and waits for the worker to be
ready), it alternates between the servers: N scoring tasks with nothing stale left to score
(pure start-up and app-building overhead), then M one-epoch training tasks; the servers
and the warm-ups run at the same time, the timed tasks one at a time.  It also times the
bare imports of the stock task process.  Prints the figures and writes
``bench/results/task_startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import requests

from activelabel.config import DEFAULT_APP_DIR
from activelabel.data.phantoms import generate_datastore
from activelabel.testing.server_process import ServerProcess, start_server

RESULTS = Path(__file__).resolve().parent / "results"
FAST_CONF = {"max_epochs": "1", "mc_samples": "2", "samples_per_volume": "1", "retrain_after": "0"}
MODES = ("worker", "stock")
TASKS = {"scoring": "scoring/epistemic", "train": "train/segmentation"}
TASK_TIMEOUT = 600.0
POLL_SECONDS = 0.05
STOCK_IMPORTS = (
    "import monailabel.interfaces.utils.app\n"
    "from monailabel.utils.others.class_utils import module_from_file\n"
    f"module_from_file('main', {str(DEFAULT_APP_DIR / 'main.py')!r})\n"
)


@dataclass(frozen=True)
class TaskRun:
    """One timed task: which server, which kind, seconds from request to its end, its status."""

    mode: str
    kind: str
    seconds: float
    status: str
    result: str


def run_task(server: ServerProcess, kind: str, *, mode: str) -> TaskRun:
    """Start a ``kind`` task and poll until it ends; the seconds from the request to DONE/ERROR."""
    began = time.perf_counter()
    response = requests.post(f"{server.url}/{TASKS[kind]}", json={}, timeout=60)
    response.raise_for_status()
    deadline = time.monotonic() + TASK_TIMEOUT
    while time.monotonic() < deadline:
        task = requests.get(f"{server.url}/{kind}/", timeout=30).json()
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            seconds = time.perf_counter() - began
            result = next((line for line in reversed(task.get("details", [])) if "Result:" in line), "")
            return TaskRun(mode, kind, seconds, task["status"], result.split("Result:", 1)[-1].strip()[:300])
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"{kind} on the {mode} server did not end within {TASK_TIMEOUT:.0f}s:\n{server.log_tail()}")


def time_stock_imports(repeats: int) -> list[float]:
    """Seconds of a fresh interpreter importing what the stock task process imports before any work."""
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", STOCK_IMPORTS], check=True, capture_output=True)
        seconds.append(time.perf_counter() - began)
    return seconds


def time_client_import(repeats: int) -> list[float]:
    """Seconds of a fresh interpreter importing the task client (what replaces the stock command)."""
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import activelabel.workers.client"], check=True, capture_output=True)
        seconds.append(time.perf_counter() - began)
    return seconds


def summarize(runs: Sequence[TaskRun]) -> dict[str, Any]:
    """Median seconds per kind and mode, and the stock/worker ratio and seconds saved per task."""
    summary: dict[str, Any] = {}
    for kind in TASKS:
        medians = {}
        for mode in MODES:
            seconds = [run.seconds for run in runs if run.kind == kind and run.mode == mode]
            if seconds:
                medians[mode] = statistics.median(seconds)
        if len(medians) == len(MODES):
            medians["ratio_stock_over_worker"] = medians["stock"] / medians["worker"]
            medians["saved_seconds_per_task"] = medians["stock"] - medians["worker"]
        summary[kind] = medians
    return summary


def worker_ready_seconds(log: Path) -> float | None:
    """The worker's own report of its import time, from the server log."""
    for line in log.read_text(errors="replace").splitlines():
        if "task worker ready in" in line:
            return float(line.split("task worker ready in", 1)[1].split()[0])
    return None


def worker_rss_mib(server: ServerProcess) -> float | None:
    """Resident memory of the server's task worker (shared copy-on-write with its forked tasks)."""
    for child in psutil.Process(server.process.pid).children():
        if "activelabel.workers.zygote" in child.cmdline():
            return child.memory_info().rss / 2**20
    return None


def start_servers(work: Path) -> dict[str, ServerProcess]:
    """Both servers, started at the same time, each on its own copy of the same phantoms."""

    def start(mode: str) -> ServerProcess:
        studies = work / mode / "studies"
        generate_datastore(studies, modality="ct", count=3, seed=0, labeled=2)
        conf = {**FAST_CONF, "state_dir": str(work / mode / "state"), "task_worker": str(mode == "worker").lower()}
        return start_server(studies, log=work / mode / "server.log", conf=conf)

    with ThreadPoolExecutor(max_workers=len(MODES)) as pool:
        futures = {mode: pool.submit(start, mode) for mode in MODES}
    servers = {mode: future.result() for mode, future in futures.items() if future.exception() is None}
    failed = [future.exception() for future in futures.values() if future.exception() is not None]
    if failed:
        for server in servers.values():
            server.stop()
        raise failed[0]  # type: ignore[misc]
    return servers


def measure(servers: dict[str, ServerProcess], *, scorings: int, trainings: int) -> list[TaskRun]:
    """An untimed warm-up scoring per server (both at once), then the timed tasks, alternating servers."""
    runs: list[TaskRun] = []
    with ThreadPoolExecutor(max_workers=len(MODES)) as pool:
        warmups = list(pool.map(lambda mode: run_task(servers[mode], "scoring", mode=mode), MODES))
    for warmup in warmups:
        print(f"  warm-up scoring on {warmup.mode}: {warmup.seconds:.1f} s ({warmup.status})", flush=True)
    for kind, count in (("scoring", scorings), ("train", trainings)):
        for index in range(count):
            order = MODES if index % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                run = run_task(servers[mode], kind, mode=mode)
                runs.append(run)
                print(f"  {kind} {index + 1}/{count} {mode:>6}: {run.seconds:6.2f} s {run.status}", flush=True)
    return runs


def report_lines(report: dict[str, Any]) -> list[str]:
    imports = report["stock_import_seconds"]
    lines = [
        f"stock task process imports: median {statistics.median(imports):.2f} s over {len(imports)} runs",
        f"task client imports:        median {statistics.median(report['client_import_seconds']):.3f} s",
        f"worker ready after:         {report['worker_ready_seconds']} s of imports (once per server), "
        f"resident memory {report['worker_rss_mib']} MiB",
    ]
    for kind, figures in report["summary"].items():
        if "ratio_stock_over_worker" in figures:
            ratio, saved = figures["ratio_stock_over_worker"], figures["saved_seconds_per_task"]
            lines.append(
                f"{kind:8s} request->DONE median: worker {figures['worker']:.2f} s, stock {figures['stock']:.2f} s, "
                f"stock/worker {ratio:.1f}x, saved {saved:.1f} s per task"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorings", type=int, default=5, help="timed scoring tasks per server")
    parser.add_argument("--trainings", type=int, default=2, help="timed one-epoch training tasks per server")
    parser.add_argument("--import-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "task_startup.json")
    args = parser.parse_args()

    began = time.perf_counter()
    print("timing bare imports ...", flush=True)
    stock_imports = time_stock_imports(args.import_repeats)
    client_imports = time_client_import(args.import_repeats)
    with tempfile.TemporaryDirectory(prefix="activelabel-task-startup-") as tmp:
        work = Path(tmp)
        print("starting a server with the task worker and one without ...", flush=True)
        servers = start_servers(work)
        try:
            runs = measure(servers, scorings=args.scorings, trainings=args.trainings)
            ready = worker_ready_seconds(servers["worker"].log)
            rss = worker_rss_mib(servers["worker"])
            started_in = {mode: round(server.started_in, 2) for mode, server in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
    report = {
        "benchmark": "task_startup",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "stock_import_seconds": [round(s, 3) for s in stock_imports],
        "client_import_seconds": [round(s, 3) for s in client_imports],
        "worker_ready_seconds": ready,
        "worker_rss_mib": round(rss, 1) if rss is not None else None,
        "server_started_in_seconds": started_in,
        "summary": {kind: {k: round(v, 3) for k, v in figures.items()} for kind, figures in summarize(runs).items()},
        "runs": [{**asdict(run), "seconds": round(run.seconds, 3)} for run in runs],
        "wall_seconds": round(time.perf_counter() - began, 1),
    }
    print("\n".join(report_lines(report)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
