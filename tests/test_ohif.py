"""MONAI Label's bundled OHIF v3 viewer on a real PACS, through the server's DICOMweb proxy.

Real Orthanc, real ``activelabel serve --studies <DICOMweb URL>`` and Debian's chromium driven
headless by Playwright (``make test`` installs chromium with apt-get); never skipped.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, Response, sync_playwright

from activelabel.cli import build_parser
from activelabel.commands.serve import server_command
from activelabel.data.phantoms import PHANTOM_LABELS, generate_datastore
from activelabel.data.to_dicom import ConvertedSeries, datastore_to_dicom
from activelabel.labelmap import LabelMap
from activelabel.ml.transforms import Modality
from activelabel.pacs.orthanc import OrthancConfig, start_orthanc, stop_orthanc, upload
from activelabel.testing.server_process import ServerProcess, free_port
from tests.conftest import ServerFactory
from tests.test_pacs import _require_orthanc

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "bench" / "results" / "ohif.png"
"""The README's picture; refreshed only with ACTIVELABEL_WRITE_OHIF_PNG=1, so test runs leave the tree clean."""
# Software WebGL: headless chromium has no GPU here.
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> ConvertedSeries:
    """One CT phantom as a DICOM series."""
    root = tmp_path_factory.mktemp("ohif-phantom")
    generate_datastore(root / "ct", modality="ct", count=1, seed=0, labeled=0)
    return datastore_to_dicom(root / "ct", root / "dicom", modality=Modality.CT)[0]


@pytest.fixture(scope="module")
def ohif_server(
    sample: ConvertedSeries, server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Orthanc with the sample loaded and the server on it (PACS credentials as settings only)."""
    _require_orthanc()
    work = tmp_path_factory.mktemp("ohif")
    pacs = OrthancConfig(work / "pacs", port=free_port(), user="al-ohif", password="pw-ohif")
    start_orthanc(pacs)
    try:
        upload(pacs, [sample.folder])
        conf = {
            "labels": json.dumps(LabelMap.from_mapping(PHANTOM_LABELS[Modality.CT]).to_dict()),
            "pacs_user": pacs.user,
            "pacs_password": pacs.password,
        }
        with server_factory.start(pacs.dicomweb_url, conf=conf, work=work) as server:
            yield server
    finally:
        stop_orthanc(pacs.data_dir)


def _viewport_pixels(page: Page) -> np.ndarray:
    """The first viewport canvas as seen on screen, grey levels."""
    png = page.locator("canvas.cornerstone-canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)


def test_ohif_lists_opens_and_renders_the_pacs_study(
    ohif_server: ServerProcess, sample: ConvertedSeries, tmp_path: Path
) -> None:
    screenshot = DOCS_SCREENSHOT if os.environ.get("ACTIVELABEL_WRITE_OHIF_PNG") == "1" else tmp_path / "ohif.png"
    assert CHROMIUM.is_file() or shutil.which("chromium"), "the OHIF test needs Debian's chromium (make test)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(30_000)
            proxied: list[tuple[str, int]] = []

            def record(response: Response) -> None:
                if "/proxy/dicom/" in response.url:
                    proxied.append((response.url, response.status))

            page.on("response", record)
            page.goto(f"{ohif_server.url}/ohif/")
            row = page.locator(f"[data-cy='studyRow-{sample.study_uid}']")
            row.wait_for()
            assert f"Phantom^{sample.image_id}" in row.inner_text().replace(", ", "^")
            row.click()
            page.locator(f"[data-cy='mode-viewer-{sample.study_uid}']").click()
            page.wait_for_url(f"**/ohif/viewer?*StudyInstanceUIDs={sample.study_uid}*")
            page.locator("canvas.cornerstone-canvas").first.wait_for()
            pixels = _viewport_pixels(page)
            for _ in range(60):
                if pixels.std() > 5 and (pixels > 30).mean() > 0.05:
                    break
                page.wait_for_timeout(500)
                pixels = _viewport_pixels(page)
            banner = page.locator("[data-cy='confirm-and-hide-button']")
            if banner.is_visible():
                banner.click()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    assert pixels.std() > 5, f"viewport stayed blank (std {pixels.std():.1f}); see {screenshot}"
    assert (pixels > 30).mean() > 0.05
    # Study list (QIDO) and pixels (WADO) both came through the server's proxy, none refused.
    assert any("/proxy/dicom/qido/studies" in url for url, _ in proxied)
    assert any("/proxy/dicom/wado/" in url for url, _ in proxied)
    assert all(status < 400 for _, status in proxied), [p for p in proxied if p[1] >= 400]


def test_serve_gives_the_pacs_credentials_to_the_dicomweb_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MONAI_LABEL_DICOMWEB_USERNAME", "MONAI_LABEL_DICOMWEB_PASSWORD", "ACTIVELABEL_PACS_USER"):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["serve", "--studies", "http://127.0.0.1:8042/dicom-web"])
    args.conf = [["labels", '{"liver": 1}'], ["pacs_user", "u"], ["pacs_password", "p"]]
    _, env = server_command(args)
    assert (env["MONAI_LABEL_DICOMWEB_USERNAME"], env["MONAI_LABEL_DICOMWEB_PASSWORD"]) == ("u", "p")
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_USERNAME", "explicit")
    assert server_command(args)[1]["MONAI_LABEL_DICOMWEB_USERNAME"] == "explicit"
