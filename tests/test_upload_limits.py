"""Upload limits under load: slow and oversized uploads cannot stop other clients being served.

One real server with a small body limit and short body-time limits.  Twenty raw-socket
clients at once: ten trickle a body at one byte per second, five declare a body over the
limit, five send their headers and then nothing.  Meanwhile another client keeps asking for
the server's info.  Every slow client gets its 4xx with the reason, the others are answered
promptly, the server's memory stays bounded and nothing stored changes.
"""

from __future__ import annotations

import select
import socket
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests

from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory
from tests.helpers import write_nifti

STALL_SECONDS = 2.0
LIMITS = {"max_upload_mb": "1", "upload_stall_seconds": str(STALL_SECONDS), "upload_min_kib_s": "1"}
ANSWER_WITHIN = 30.0
"""Seconds a slow client may wait for its answer: the grace period, the rejection's bounded drain, a loaded CPU."""
TARGET = "ct_002"  # unlabeled: the uploads aim here
BOUNDARY = "activelabel-slow-boundary"


@dataclass(frozen=True)
class SlowAnswer:
    status: int
    text: str
    seconds: float
    bytes_sent: int


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ServerProcess:
    studies = server_factory.phantoms("uploads", count=3, seed=3, labeled=2)
    return server_factory.start(studies, conf=LIMITS)


def _slow_upload(server: ServerProcess, *, declared: int, bytes_per_second: float) -> SlowAnswer:
    """PUT a label with ``declared`` bytes of Content-Length, sending at most ``bytes_per_second``."""
    url = urllib.parse.urlsplit(server.url)
    head = (
        f"PUT /datastore/label?image={TARGET}&tag=final HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    sent = 0
    with socket.create_connection((url.hostname, url.port), timeout=ANSWER_WITHIN) as sock:
        sock.sendall(head)
        answer = b""
        while time.monotonic() - started < ANSWER_WITHIN:
            readable, _, _ = select.select([sock], [], [], 1.0)
            if readable:
                chunk = sock.recv(65536)
                answer += chunk
                if not chunk or (b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}")):
                    break
            elif bytes_per_second > 0 and sent < declared:
                try:
                    sock.sendall(b"-")
                    sent += 1
                except OSError:
                    break
    status_line, _, rest = answer.decode("latin-1").partition("\r\n")
    status = int(status_line.split()[1]) if status_line.startswith("HTTP/") else 0
    return SlowAnswer(status=status, text=rest, seconds=time.monotonic() - started, bytes_sent=sent)


def _stored_labels(server: ServerProcess) -> dict[str, bytes]:
    labels = server.studies / "labels"
    return {str(path.relative_to(labels)): path.read_bytes() for path in sorted(labels.rglob("*")) if path.is_file()}


def test_twenty_slow_or_oversized_uploads_leave_other_clients_served(server: ServerProcess) -> None:
    before = _stored_labels(server)
    process = psutil.Process(server.process.pid)
    rss_before = process.memory_info().rss
    jobs = (
        [{"declared": 500_000, "bytes_per_second": 1.0}] * 10  # trickling, under the size limit
        + [{"declared": 50 * 2**30, "bytes_per_second": 1.0}] * 5  # declared over the limit
        + [{"declared": 500_000, "bytes_per_second": 0.0}] * 5  # headers, then nothing
    )
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(_slow_upload, server, **job) for job in jobs]
        time.sleep(0.5)  # every slow client holds its connection
        served = []
        while not all(future.done() for future in futures):
            started = time.monotonic()
            response = requests.get(f"{server.url}/info/", timeout=30)
            served.append((response.status_code, time.monotonic() - started))
            time.sleep(0.2)
        answers = [future.result() for future in futures]
    trickling, oversized, stalled = answers[:10], answers[10:15], answers[15:]
    assert len(served) >= 10
    assert all(status == 200 for status, _ in served), served
    assert max(seconds for _, seconds in served) < 2.0, served
    assert all(answer.status == 408 and "upload_min_kib_s" in answer.text for answer in trickling), trickling
    assert all(answer.bytes_sent < 30 for answer in trickling), trickling
    assert all(answer.status == 413 and "max_upload_mb" in answer.text for answer in oversized), oversized
    assert all(answer.seconds < 5 for answer in oversized), oversized
    assert all(answer.status == 408 and "upload_stall_seconds" in answer.text for answer in stalled), stalled
    assert (process.memory_info().rss - rss_before) < 100 * 2**20
    assert _stored_labels(server) == before


def test_an_upload_slower_than_the_grace_period_but_above_the_rate_is_stored(
    server: ServerProcess, tmp_path: Path
) -> None:
    image = nib.load(server.studies / f"{TARGET}.nii.gz")
    label = write_nifti(tmp_path / "label.nii", np.zeros(image.shape, dtype=np.uint8), affine=image.affine)
    body = b"".join(
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="label"; filename="label.nii"\r\n'.encode(),
            b"Content-Type: application/octet-stream\r\n\r\n",
            label.read_bytes(),
            f"\r\n--{BOUNDARY}--\r\n".encode(),
        )
    )
    parts = 8
    seconds = 2 * STALL_SECONDS
    assert len(body) / seconds > 1024  # above upload_min_kib_s for the whole upload

    def paced() -> Iterator[bytes]:
        step = -(-len(body) // parts)
        for start in range(0, len(body), step):
            yield body[start : start + step]
            time.sleep(seconds / parts)

    response = requests.put(
        f"{server.url}/datastore/label",
        params={"image": TARGET, "tag": "final"},
        data=paced(),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert (server.studies / "labels" / "final" / f"{TARGET}.nii").exists()
