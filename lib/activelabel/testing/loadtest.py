"""Many clinicians at once against a running server: next sample → infer → submit, with think times.

Each simulated clinician is a thread with its own HTTP session and client id.  It asks a
strategy for the next volume, runs the server's segmentation, and submits that label after
random pauses (``think`` before the segmentation, ``edit`` before the submission), until the
time is up or no volume is left.  A 503 with ``Retry-After`` (the server's documented answer
when its compute queue is full) is waited out and retried, and counted apart from failures.
With ``train_at`` a training run is requested that many seconds into the run.  Segmentation
latencies are also reported apart for cache hits and misses (the server's
``X-ActiveLabel-Presegmentation`` header).  The report counts what a hospital
team must be able to trust: duplicate serves (a volume handed to two clinicians), and
acknowledged labels that are missing or differ from what was sent.  Loopback only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import nibabel as nib
import numpy as np
import requests
from nibabel.filebasedimages import ImageFileError

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
MODEL = "segmentation"


@dataclass(frozen=True)
class LoadConfig:
    """One load run.

    Attributes:
        clinicians: concurrent simulated users.
        seconds: how long they keep starting new volumes.
        think: range of the random pause (seconds) before infer.
        strategy: the active-learning strategy asked for the next volume.
        seed: seed of the think times.
        timeout: seconds one request may take.
        edit: range of the pause before submit, the clinician correcting the mask (default: ``think``).
        train_at: seconds into the run at which training is requested (None: never).
        max_retry_after: the longest ``Retry-After`` wait honoured before a retry, in seconds.
    """

    clinicians: int = 20
    seconds: float = 600.0
    think: tuple[float, float] = (1.0, 5.0)
    strategy: str = "random"
    seed: int = 0
    timeout: float = 300.0
    edit: tuple[float, float] | None = None
    train_at: float | None = None
    max_retry_after: float = 10.0

    def __post_init__(self) -> None:
        if self.clinicians < 1:
            raise ValueError(f"clinicians must be >= 1, got {self.clinicians}")
        if self.seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")
        for name in ("think", "edit"):
            pause = getattr(self, name)
            if pause is not None and not 0 <= pause[0] <= pause[1]:
                raise ValueError(f"{name} must be a range 0 <= low <= high, got {pause}")
        if self.train_at is not None and not 0 <= self.train_at < self.seconds:
            raise ValueError(f"train_at must be within the run (0 <= train_at < {self.seconds}), got {self.train_at}")

    @property
    def edit_pause(self) -> tuple[float, float]:
        return self.think if self.edit is None else self.edit


@dataclass
class LoadReport:
    """What the run did and what went wrong (every count here but the latencies should be exact)."""

    config: dict[str, object]
    seconds: float = 0.0
    requests: int = 0
    failed_requests: int = 0
    served: int = 0
    submitted: int = 0
    duplicate_serves: int = 0
    lost_labels: int = 0
    corrupted_labels: int = 0
    pool_exhausted: bool = False
    latency_ms: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    busy_responses: int = 0
    requests_per_second: float = 0.0
    training: dict[str, object] = field(default_factory=dict)
    model_versions_served: list[int] = field(default_factory=list)
    reconnects: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class _Recorder:
    """Thread-safe collection of latencies, serves, acknowledgements and errors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.serves: dict[str, list[str]] = defaultdict(list)
        self.acknowledged: dict[str, str] = {}
        self.requests = 0
        self.failures: list[str] = []
        self.exhausted = False
        self.busy = 0
        self.versions: set[int] = set()
        self.reconnects = 0

    def call(
        self, kind: str, send: requests.Session, method: str, url: str, *, max_wait: float, **kwargs: object
    ) -> requests.Response | None:
        """One request, retried after ``Retry-After`` while the server answers 503 busy.

        A kept-alive connection the server closed while idle (uvicorn closes them after 5 s)
        resets when reused; like a browser, the request is sent once more on a new connection,
        and counted in ``reconnects``.  A request that fails again is a failure (None).
        """
        while True:
            began = time.perf_counter()
            try:
                response = send.request(method, url, **kwargs)
            except requests.ConnectionError:
                with self.lock:
                    self.reconnects += 1
                send.close()  # drop the pooled connections; the retry opens a new one
                began = time.perf_counter()
                try:
                    response = send.request(method, url, **kwargs)
                except requests.RequestException as error:
                    with self.lock:
                        self.requests += 1
                        self.failures.append(f"{kind} {type(error).__name__}: {error}")
                    return None
            elapsed = (time.perf_counter() - began) * 1000
            retry_after = response.headers.get("Retry-After") if response.status_code == 503 else None
            with self.lock:
                self.requests += 1
                if retry_after is not None:
                    self.busy += 1
                    self.latencies["busy"].append(elapsed)
                else:
                    self.latencies[kind].append(elapsed)
                    cache = response.headers.get("X-ActiveLabel-Presegmentation")
                    if response.ok and cache:
                        self.latencies[f"{kind}_{cache}"].append(elapsed)
                    version = response.headers.get("X-ActiveLabel-Model-Version")
                    if response.ok and version is not None and version.isdigit():
                        self.versions.add(int(version))
                    if not response.ok:
                        self.failures.append(f"{kind} {response.status_code}: {response.text[:200]}")
            if retry_after is None:
                return response
            time.sleep(min(max_wait, float(retry_after) if retry_after.isdigit() else 1.0))


def _clinician(name: str, url: str, config: LoadConfig, deadline: float, rng: random.Random, rec: _Recorder) -> None:
    with requests.Session() as http:
        while time.monotonic() < deadline and not rec.exhausted:
            answer = rec.call(
                "next_sample",
                http,
                "POST",
                f"{url}/activelearning/{config.strategy}",
                json={"client_id": name},
                timeout=config.timeout,
                max_wait=config.max_retry_after,
            )
            if answer is None or not answer.ok:
                continue
            image_id = answer.json().get("id")
            if not image_id:
                with rec.lock:
                    rec.exhausted = True
                return
            with rec.lock:
                rec.serves[image_id].append(name)
            time.sleep(rng.uniform(*config.think))
            label = rec.call(
                "infer",
                http,
                "POST",
                f"{url}/infer/{MODEL}",
                params={"image": image_id, "output": "image"},
                data={"params": json.dumps({"client_id": name, "save_label": True})},
                timeout=config.timeout,
                max_wait=config.max_retry_after,
            )
            if label is None or not label.ok:
                continue
            started = time.monotonic()
            time.sleep(rng.uniform(*config.edit_pause))
            params = {"client_id": name, "seconds_spent": round(time.monotonic() - started, 2)}
            saved = rec.call(
                "submit",
                http,
                "PUT",
                f"{url}/datastore/label",
                params={"image": image_id, "tag": "final"},
                files={"label": (f"{image_id}.nii.gz", label.content)},
                data={"params": json.dumps(params)},
                timeout=config.timeout,
                max_wait=config.max_retry_after,
            )
            if saved is not None and saved.ok:
                with rec.lock:
                    rec.acknowledged[image_id] = hashlib.sha256(label.content).hexdigest()


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """Count, p50 and p99 (milliseconds) of a list of latencies."""
    if not values:
        return {"count": 0, "p50": None, "p99": None}
    return {
        "count": len(values),
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
    }


def check_labels(label_dir: Path, acknowledged: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Acknowledged labels that are missing, and those whose file differs from what was sent or is unreadable."""
    lost, corrupted = [], []
    for image_id, digest in sorted(acknowledged.items()):
        path = label_dir / f"{image_id}.nii.gz"
        if not path.is_file():
            lost.append(image_id)
            continue
        content = path.read_bytes()
        try:
            readable = nib.Nifti1Image.from_bytes(gzip.decompress(content)).shape is not None
        except (OSError, EOFError, ValueError, ImageFileError):
            readable = False
        if not readable or hashlib.sha256(content).hexdigest() != digest:
            corrupted.append(image_id)
    return lost, corrupted


def run_load(url: str, studies: Path, config: LoadConfig) -> LoadReport:
    """Run ``config.clinicians`` simulated clinicians against the server at ``url`` (loopback only).

    ``studies`` is the server's datastore folder: after the run every acknowledged label is
    read back from ``studies/labels/final``.
    """
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise ValueError(f"load tests run against a loopback server only, not {host!r}")
    rec = _Recorder()
    began = time.monotonic()
    deadline = began + config.seconds
    threads = [
        threading.Thread(
            target=_clinician,
            args=(f"clinician-{i:02d}", url.rstrip("/"), config, deadline, random.Random(f"{config.seed}-{i}"), rec),
            name=f"clinician-{i:02d}",
            daemon=True,
        )
        for i in range(config.clinicians)
    ]
    training: dict[str, object] = {}
    if config.train_at is not None:
        threads.append(
            threading.Thread(
                target=_train_at,
                args=(url.rstrip("/"), began, config.train_at, deadline, training),
                name="training",
                daemon=True,
            )
        )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lost, corrupted = check_labels(studies / "labels" / "final", rec.acknowledged)
    seconds = time.monotonic() - began
    report = LoadReport(
        config={**asdict(config), "think": list(config.think), "edit": list(config.edit_pause)},
        seconds=seconds,
        requests=rec.requests,
        failed_requests=len(rec.failures),
        served=sum(len(clients) for clients in rec.serves.values()),
        submitted=len(rec.acknowledged),
        duplicate_serves=sum(len(clients) - 1 for clients in rec.serves.values() if len(clients) > 1),
        lost_labels=len(lost),
        corrupted_labels=len(corrupted),
        pool_exhausted=rec.exhausted,
        latency_ms={kind: percentiles(values) for kind, values in sorted(rec.latencies.items())},
        errors=rec.failures[:20] + [f"lost: {i}" for i in lost] + [f"corrupted: {i}" for i in corrupted],
        busy_responses=rec.busy,
        requests_per_second=rec.requests / seconds if seconds else 0.0,
        training=training,
        model_versions_served=sorted(rec.versions),
        reconnects=rec.reconnects,
    )
    return report


def _train_at(url: str, began: float, after: float, deadline: float, record: dict[str, object]) -> None:
    """Request training ``after`` seconds past ``began``; record when it was asked for and when it ended."""
    time.sleep(max(0.0, began + after - time.monotonic()))
    started = time.monotonic()
    response = requests.post(f"{url}/train/segmentation", json={}, timeout=60)
    record.update(requested_after_s=round(started - began, 1), status_code=response.status_code)
    while time.monotonic() < deadline + 600:
        task = requests.get(f"{url}/train/", timeout=60).json()
        if task.get("status") in ("DONE", "ERROR"):
            record.update(status=task.get("status"), seconds=round(time.monotonic() - started, 1))
            return
        time.sleep(2.0)
    record["status"] = "still running"


def score_pool_first(url: str, *, timeout: float = 3600.0) -> float:
    """Score every unlabeled volume (and keep its pre-segmentation) before the clinicians start; the seconds it took.

    What a lab does before a labeling session: the server ranks the pool and has the
    pre-segmentations of the current model ready.

    Raises:
        RuntimeError: when the server refuses the scoring request or the task fails.
    """
    began = time.monotonic()
    url = url.rstrip("/")
    response = requests.post(f"{url}/scoring/epistemic", timeout=60)
    if not response.ok:
        raise RuntimeError(f"scoring refused ({response.status_code}): {response.text[:200]}")
    while time.monotonic() - began < timeout:
        task = requests.get(f"{url}/scoring/", timeout=60).json()
        if task.get("status") == "DONE":
            return time.monotonic() - began
        if task.get("status") == "ERROR":
            raise RuntimeError("scoring failed; see the server log")
        time.sleep(1.0)
    raise RuntimeError(f"scoring did not finish within {timeout:.0f} s")
