"""Many clinicians at once against a running server: next sample → infer → submit, with think times.

Each simulated clinician is a thread with its own HTTP session and client id.  It asks a
strategy for the next volume, runs the server's segmentation, and submits that label after
random pauses, until the time is up or no volume is left.  The report counts what a hospital
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
        think: range of the random pause (seconds) before infer and before submit.
        strategy: the active-learning strategy asked for the next volume.
        seed: seed of the think times.
        timeout: seconds one request may take.
    """

    clinicians: int = 20
    seconds: float = 600.0
    think: tuple[float, float] = (1.0, 5.0)
    strategy: str = "random"
    seed: int = 0
    timeout: float = 300.0

    def __post_init__(self) -> None:
        if self.clinicians < 1:
            raise ValueError(f"clinicians must be >= 1, got {self.clinicians}")
        if self.seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")
        if not 0 <= self.think[0] <= self.think[1]:
            raise ValueError(f"think must be a range 0 <= low <= high, got {self.think}")


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

    def call(self, kind: str, send: requests.Session, method: str, url: str, **kwargs: object) -> requests.Response:
        began = time.perf_counter()
        response = send.request(method, url, **kwargs)
        elapsed = (time.perf_counter() - began) * 1000
        with self.lock:
            self.requests += 1
            self.latencies[kind].append(elapsed)
            if not response.ok:
                self.failures.append(f"{kind} {response.status_code}: {response.text[:200]}")
        return response


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
            )
            if not answer.ok:
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
            )
            if not label.ok:
                continue
            started = time.monotonic()
            time.sleep(rng.uniform(*config.think))
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
            )
            if saved.ok:
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
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lost, corrupted = check_labels(studies / "labels" / "final", rec.acknowledged)
    report = LoadReport(
        config={**asdict(config), "think": list(config.think)},
        seconds=time.monotonic() - began,
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
    )
    return report
