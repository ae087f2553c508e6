"""Triage of auto-labels by predicted quality, against a real server.

One trained model with a validation volume (so it has a calibration): ``activelabel autolabel``
stores each auto-label with its quality and triage, status counts only the accepted ones as
automated, and the audit strategy serves the accepted ones least trusted first.  The audit
mark is set to 0 so the calibration threshold is the validation volume's own quality: both
outcomes can then occur with a model trained for one epoch.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from activelabel.cli import main
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory

UNLABELED = [f"ct_{i:03d}" for i in range(4, 10)]


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ServerProcess:
    studies = server_factory.phantoms("triage", count=10, seed=11, labeled=4)
    server = server_factory.start(studies, conf={"audit_dice": "0", "val_split": "0.25"})
    response = requests.post(f"{server.url}/train/segmentation", json={"max_epochs": 1}, timeout=60)
    assert response.status_code == 200, response.text
    task = server.wait_for_task("train")
    assert task["status"] == "DONE", server.log_tail()
    return server


def _status(server: ServerProcess) -> dict[str, Any]:
    return requests.get(f"{server.url}/activelabel/status", timeout=30).json()


def _auto_version(server: ServerProcess, image: str) -> dict[str, Any]:
    versions = requests.get(f"{server.url}/activelabel/labels/{image}/versions", timeout=30).json()
    [auto] = [v for v in versions if v["tag"] == "auto"]
    return auto


@pytest.fixture(scope="module")
def triaged(server: ServerProcess) -> dict[str, dict[str, Any]]:
    """Image id -> the triage details of its auto-label, after one ``activelabel autolabel``."""
    assert main(["autolabel", "--server", server.url, "--timeout", "600"]) == 0
    return {image: _auto_version(server, image)["details"] for image in UNLABELED}


def test_training_calibrates_a_quality_threshold_on_its_validation_volume(server: ServerProcess) -> None:
    model = requests.get(f"{server.url}/info/", timeout=30).json()["activelabel"]["model"]
    calibration = model["calibration"]
    assert calibration["volumes"] == model["val_count"] == 1
    assert (calibration["dice_threshold"], calibration["accuracy"]) == (0.0, 0.95)
    assert 0.0 <= calibration["threshold"] <= 1.0
    assert calibration["expected_accuracy"] == 1.0  # every volume passes a mark of 0


def test_every_auto_label_carries_its_quality_and_the_triage_it_implies(
    server: ServerProcess, triaged: dict[str, dict[str, Any]]
) -> None:
    threshold = _status(server)["automation"]["quality_threshold"]
    for image, details in triaged.items():
        assert 0.0 <= details["quality"] <= 1.0, image
        assert details["quality_threshold"] == threshold
        expected = "accepted" if details["quality"] >= threshold else "sent_back"
        assert details["triage"] == expected, image


def test_status_counts_only_accepted_auto_labels_as_automated(
    server: ServerProcess, triaged: dict[str, dict[str, Any]]
) -> None:
    accepted = sum(d["triage"] == "accepted" for d in triaged.values())
    automation = _status(server)["automation"]
    assert automation["auto_labeled"] == accepted
    assert automation["sent_back"] == len(UNLABELED) - accepted
    assert automation["automation"] == pytest.approx(accepted / 10)
    assert automation["expected_accuracy"] == 1.0
    assert automation["calibration_volumes"] == 1


def test_audit_serves_accepted_auto_labels_least_trusted_first_and_never_a_sent_back_one(
    server: ServerProcess, triaged: dict[str, dict[str, Any]]
) -> None:
    accepted = sorted((d["quality"], image) for image, d in triaged.items() if d["triage"] == "accepted")
    served = []
    for reviewer in range(len(accepted) + 1):  # leases: each reviewer gets the next one
        answer = requests.post(
            f"{server.url}/activelearning/audit", json={"client_id": f"reviewer-{reviewer}"}, timeout=60
        ).json()
        if not answer:
            break
        assert answer["order"] == "least_trusted"
        served.append((answer["quality"], answer["id"]))
    assert served == accepted


def test_an_unknown_audit_order_is_refused_with_the_choices(server: ServerProcess) -> None:
    response = requests.post(
        f"{server.url}/activelearning/audit", json={"client_id": "reviewer-x", "order": "newest"}, timeout=60
    )
    assert response.status_code == 422, response.text
    assert "least_trusted, random" in response.json()["detail"]
