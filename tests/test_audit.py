"""Audits of auto-labels against a real server: the audit strategy, verdicts and status figures.

Tests run in file order on one server: auto-label the pool, then accept, reject and correct.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from activelabel.cli import main
from activelabel.store.audit import AuditLog, AuditRecord, Verdict
from activelabel.store.leases import LeaseStore
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory
from tests.helpers import write_nifti

UNLABELED = ["ct_001", "ct_002", "ct_003", "ct_004"]


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ServerProcess:
    studies = server_factory.phantoms("audit", count=5, seed=5, labeled=1)
    return server_factory.start(studies)


@pytest.fixture(scope="module")
def picks(server: ServerProcess) -> dict[str, str]:
    """The volumes the tests accept, reject, correct and leave, filled by the strategy test."""
    return {}


def _status(server: ServerProcess) -> dict[str, Any]:
    return requests.get(f"{server.url}/activelabel/status", timeout=30).json()


def _next(server: ServerProcess, client: str, strategy: str = "audit") -> dict[str, Any]:
    response = requests.post(f"{server.url}/activelearning/{strategy}", json={"client_id": client}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _audit(server: ServerProcess, image: str, verdict: str, label: Path | None = None, **params: Any) -> Any:
    query = {"image": image, "verdict": verdict, "client_id": "reviewer-1", **params}
    if label is None:
        return requests.post(f"{server.url}/activelabel/audit", params=query, timeout=60)
    with label.open("rb") as handle:
        files = {"label": (label.name, handle)}
        return requests.post(f"{server.url}/activelabel/audit", params=query, files=files, timeout=60)


def _versions(server: ServerProcess, image: str) -> list[dict[str, Any]]:
    return requests.get(f"{server.url}/activelabel/labels/{image}/versions", timeout=30).json()


def _final(server: ServerProcess, image: str) -> Path:
    return server.studies / "labels" / "final" / f"{image}.nii.gz"


def test_autolabel_stores_auto_versions_from_the_model(server: ServerProcess) -> None:
    assert main(["autolabel", "--server", server.url, "--timeout", "300"]) == 0
    for image in UNLABELED:
        [version] = _versions(server, image)
        assert (version["tag"], version["source"], version["model_version"]) == ("auto", "auto", 0)
    automation = _status(server)["automation"]
    assert automation["auto_labeled"] == 4
    assert (automation["audited"], automation["acceptance_rate"]) == (0, None)


def test_audit_strategy_serves_auto_labeled_volumes_to_one_reviewer_each(
    server: ServerProcess, picks: dict[str, str]
) -> None:
    served = [_next(server, f"reviewer-{i}") for i in range(4)]
    ids = [answer["id"] for answer in served]
    assert sorted(ids) == UNLABELED  # leases: never the same volume twice
    assert all(answer["strategy"] == "audit" and answer["label_tag"] == "auto" for answer in served)
    assert _next(server, "reviewer-9") == {}
    picks.update(accept=ids[0], reject=ids[1], correct=ids[2], left=ids[3])


def test_accept_makes_the_auto_label_final(server: ServerProcess, picks: dict[str, str]) -> None:
    image = picks["accept"]
    auto = (server.studies / "labels" / "auto" / f"{image}.nii.gz").read_bytes()
    response = _audit(server, image, "accept", seconds_spent=8)
    assert response.status_code == 200, response.text
    record = response.json()
    assert (record["verdict"], record["reviewer"], record["final_version"]) == ("accept", "reviewer-1", 2)
    assert _final(server, image).read_bytes() == auto
    final = _versions(server, image)[-1]
    assert (final["tag"], final["source"], final["reviewer"], final["model_version"]) == (
        "final",
        "model",
        "reviewer-1",
        0,
    )
    assert final["current"] is True
    assert _status(server)["images"]["labeled"] == 2
    assert image not in LeaseStore(server.state_dir / "leases.sqlite", seconds=60).active()


def test_reject_sends_the_volume_back_to_the_pool(server: ServerProcess, picks: dict[str, str]) -> None:
    image = picks["reject"]
    response = _audit(server, image, "reject")
    assert response.status_code == 200, response.text
    assert response.json()["final_version"] is None
    assert not _final(server, image).exists()
    assert image not in LeaseStore(server.state_dir / "leases.sqlite", seconds=60).active()
    # The other auto-labeled volumes are leased to reviewers: only the rejected one is free.
    assert _next(server, "reviewer-9") == {}  # audited: not offered for audit again
    assert _next(server, "labeler", "random")["id"] == image  # but back in the labeling pool
    skip = requests.post(f"{server.url}/activelabel/skip", params={"image": image, "client_id": "labeler"}, timeout=30)
    assert skip.status_code == 200, skip.text


def test_correct_stores_the_reviewers_label_as_final(server: ServerProcess, picks: dict[str, str]) -> None:
    image = picks["correct"]
    truth = server.studies / "truth" / f"{image}.nii.gz"
    response = _audit(server, image, "correct", label=truth, seconds_spent=95.5)
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["verdict"] == "correct"
    assert 0.0 <= record["agreement"] <= 1.0
    assert record["seconds_spent"] == pytest.approx(95.5)
    assert _final(server, image).read_bytes() == truth.read_bytes()
    final = _versions(server, image)[-1]
    assert (final["source"], final["author"], final["version"]) == ("human", "reviewer-1", record["final_version"])


def test_bad_verdicts_are_refused_with_a_reason(server: ServerProcess, picks: dict[str, str], tmp_path: Path) -> None:
    left, truth = picks["left"], server.studies / "truth" / f"{picks['left']}.nii.gz"
    wrong_shape = write_nifti(tmp_path / "small.nii.gz", np.zeros((9, 9, 9), np.uint8))
    cases = [
        ("no_such_image", "accept", None, 404, "unknown image"),
        (left, "maybe", None, 422, "verdict must be one of accept, reject, correct"),
        (left, "correct", None, 422, "needs the corrected label"),
        (left, "accept", truth, 422, "only a correct verdict takes a label"),
        (left, "correct", wrong_shape, 422, "shape"),
        (picks["accept"], "reject", None, 409, "already has a final label"),
        (picks["reject"], "accept", None, 409, "audited already"),
        ("ct_000", "accept", None, 409, "no auto label"),
    ]
    for image, verdict, label, status, reason in cases:
        response = _audit(server, image, verdict, label=label)
        assert response.status_code == status, f"{image} {verdict}: {response.text}"
        assert reason in response.json()["detail"], f"{image} {verdict}: {response.text}"
    assert not _final(server, left).exists()
    assert len(_versions(server, left)) == 1


def test_status_reports_audits_and_automation(server: ServerProcess) -> None:
    status = _status(server)
    automation = status["automation"]
    assert (automation["audited"], automation["accepted"], automation["rejected"], automation["corrected"]) == (
        3,
        1,
        1,
        1,
    )
    assert automation["acceptance_rate"] == pytest.approx(1 / 3)
    # The model's labels in use: the accepted one and the one not yet audited.
    assert automation["auto_labeled"] == 2
    assert automation["automation"] == pytest.approx(2 / 5)
    assert status["images"]["labeled"] == 3


def test_audit_log_keeps_verdicts_in_order(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audits.sqlite")
    log.add(AuditRecord("a", 1, Verdict.ACCEPT, "r", 2, None, None, 1.0))
    log.add(AuditRecord("b", None, Verdict.REJECT, "r", None, None, 4.0, 2.0))
    assert [r.verdict for r in log.all()] == [Verdict.ACCEPT, Verdict.REJECT]
    assert log.audited() == {"a": {1}, "b": {None}}
    assert log.rejected() == {"b": {None}}
    summary = log.summary()
    assert (summary.audited, summary.accepted, summary.acceptance_rate) == (2, 1, 0.5)
    assert json.loads(json.dumps(log.all()[0].to_dict()))["verdict"] == "accept"
