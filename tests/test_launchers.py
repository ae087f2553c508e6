"""Both launchers serve the app; the CLI reports user errors in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from activelabel.cli import main
from activelabel.testing.server_process import free_port
from tests.conftest import ServerFactory
from tests.helpers import REPO, write_nifti


def test_monailabel_start_server_serves_the_app_with_upload_checks(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    studies = server_factory.phantoms("launchers", count=2, seed=1, labeled=1)
    with server_factory.start(studies, launcher="monailabel") as server:
        info = requests.get(f"{server.url}/info/", timeout=30).json()
        assert "segmentation" in info["models"]
        assert "epistemic" in info["scoring"]
        assert {"most_uncertain", "random"} <= set(info["strategies"])
        image = nib.load(studies / "ct_001.nii.gz")
        bad = write_nifti(tmp_path / "bad.nii.gz", np.full(image.shape, 7, np.uint8), affine=image.affine)
        with bad.open("rb") as handle:
            response = requests.put(
                f"{server.url}/datastore/label", params={"image": "ct_001"}, files={"label": handle}, timeout=60
            )
        assert response.status_code == 422, response.text
        assert not (studies / "labels" / "final" / "ct_001.nii.gz").exists()
        # The extra endpoints are part of `activelabel serve` only.
        assert requests.get(f"{server.url}/activelabel/status", timeout=30).status_code == 404


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "activelabel.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--studies", "/nonexistent/studies"], "studies folder not found"),
        (["serve", "--studies", "{tmp}", "--conf", "mc_samples", "0"], "invalid value '0' for 'mc_samples'"),
        (["serve", "--studies", "{empty}"], "no labels configured"),
        (["serve", "--studies", "{tmp}", "--app", "/nonexistent/app"], "no MONAI Label app"),
    ],
)
def test_serve_reports_bad_input_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "labels.json").write_text(json.dumps({"liver": 1}))
    (tmp_path / "empty").mkdir()
    filled = [a.format(tmp=tmp_path, empty=tmp_path / "empty") for a in args]
    result = _cli(*filled)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]


def test_autolabel_without_a_server_reports_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["autolabel", "--server", f"http://127.0.0.1:{free_port()}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot reach the server")
