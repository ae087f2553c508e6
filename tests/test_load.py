"""Several clinicians at once against a real server: nobody gets a volume twice, no label is lost.

A short version of ``make bench``'s load test (20 clinicians for 10 minutes): the pool is
scored first, so pre-segmentations are served from the cache, and training is requested
while the clinicians work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from activelabel.testing.loadtest import LoadConfig, check_labels, run_load, score_pool_first
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory


@pytest.fixture(scope="module")
def crowded(server_factory: ServerFactory) -> ServerProcess:
    studies = server_factory.phantoms("load", count=16, seed=3, labeled=0)
    return server_factory.start(studies)


def test_concurrent_clinicians_get_distinct_volumes_and_every_acknowledged_label_is_stored(
    crowded: ServerProcess,
) -> None:
    score_pool_first(crowded.url, timeout=600)
    config = LoadConfig(
        clinicians=6, seconds=40, think=(0.1, 0.5), edit=(1.0, 2.0), strategy="most_uncertain", timeout=120, train_at=6
    )

    report = run_load(crowded.url, crowded.studies, config)

    assert report.errors == [], crowded.log_tail()
    assert report.failed_requests == 0
    assert report.latency_ms["infer_hit"]["count"] >= 1  # served from the scored pool's pre-segmentations
    assert report.training["status_code"] == 200
    assert report.training["status"] == "DONE", crowded.log_tail()
    assert report.submitted >= 6
    assert report.served == report.submitted  # every served volume was submitted, none twice
    assert report.duplicate_serves == 0
    assert (report.lost_labels, report.corrupted_labels) == (0, 0)
    assert report.latency_ms["next_sample"]["count"] >= report.served
    assert report.latency_ms["submit"]["p99"] is not None


def test_label_check_finds_missing_and_altered_files(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"not a label")
    lost, corrupted = check_labels(tmp_path, {"a": "0" * 64, "b": "0" * 64})
    assert (lost, corrupted) == (["b"], ["a"])


def test_a_load_run_refuses_a_server_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback server only"):
        run_load("http://10.1.2.3:8000", tmp_path, LoadConfig(clinicians=1, seconds=1))
