"""MONAI Label's bundled OHIF v3 viewer on a real PACS, through the server's DICOMweb proxy.

Real Orthanc, real ``activelabel serve --studies <DICOMweb URL>`` with access control on, and
Debian's chromium driven headless by Playwright (``make test`` installs chromium with apt-get);
never skipped.  The browser signs in with HTTP Basic as the OHIF user.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import Browser, Page, Playwright, Response, sync_playwright

from activelabel.access.policy import Role
from activelabel.access.users import User, UserStore, password_hash
from activelabel.cli import build_parser
from activelabel.commands.serve import server_command
from activelabel.data.phantoms import PHANTOM_LABELS, generate_datastore
from activelabel.data.to_dicom import ConvertedSeries, datastore_to_dicom
from activelabel.labelmap import LabelMap
from activelabel.ml.transforms import Modality
from activelabel.pacs.orthanc import OrthancConfig, start_orthanc, stop_orthanc, upload
from activelabel.server.routes.ohif import BUNDLE_PATCHES, multipart_related_parts, ohif_labels, patched_bundles
from activelabel.store.validation import InputRejected
from activelabel.testing.server_process import ServerProcess, free_port
from tests.conftest import ServerFactory
from tests.test_pacs import _require_orthanc

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "bench" / "results" / "ohif.png"
"""The README's picture; refreshed only with ACTIVELABEL_WRITE_OHIF_PNG=1, so test runs leave the tree clean."""
# Software WebGL: headless chromium has no GPU here.
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"]
OHIF_USER, OHIF_PASSWORD = "ohif-reader", "pw-ohif-reader"
"""The annotator the browser signs in as; the label's author must be this name."""


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
        users = work / "users.json"
        UserStore((User(OHIF_USER, Role.ANNOTATOR, password=password_hash(OHIF_PASSWORD)),)).save(users)
        conf = {
            "labels": json.dumps(LabelMap.from_mapping(PHANTOM_LABELS[Modality.CT]).to_dict()),
            "pacs_user": pacs.user,
            "pacs_password": pacs.password,
            "users_file": str(users),
        }
        with server_factory.start(pacs.dicomweb_url, conf=conf, work=work) as server:
            yield server
    finally:
        stop_orthanc(pacs.data_dir)


def _browser(playwright: Playwright) -> Browser:
    assert CHROMIUM.is_file() or shutil.which("chromium"), "the OHIF test needs Debian's chromium (make test)"
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


def _signed_in_page(browser: Browser, width: int = 1280, height: int = 800) -> Page:
    """A page whose every request carries the OHIF user's HTTP Basic credentials."""
    credentials = {"username": OHIF_USER, "password": OHIF_PASSWORD, "send": "always"}
    context = browser.new_context(viewport={"width": width, "height": height}, http_credentials=credentials)
    page = context.new_page()
    page.set_default_timeout(30_000)
    return page


def _viewport_pixels(page: Page) -> np.ndarray:
    """The first viewport canvas as seen on screen, grey levels."""
    png = page.locator("canvas.cornerstone-canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)


def test_ohif_lists_opens_and_renders_the_pacs_study(
    ohif_server: ServerProcess, sample: ConvertedSeries, tmp_path: Path
) -> None:
    screenshot = DOCS_SCREENSHOT if os.environ.get("ACTIVELABEL_WRITE_OHIF_PNG") == "1" else tmp_path / "ohif.png"
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = _signed_in_page(browser)
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


STEP_URLS = {
    "connect": "/info/",
    "next sample": "/activelearning/random",
    "segmentation": "/infer/segmentation",
    "submit": "/proxy/dicom/wado/studies",
}
"""The panel's steps and the request each makes; each must answer < 400."""
TRAINING_PROBE = "/train/?check_if_running=true"
"""The panel's training probe: MONAI Label answers 404 while no training runs (the panel reads 'not running')."""


def _is_post(path: str) -> Callable[[Response], bool]:
    return lambda response: response.request.method == "POST" and path in response.url


def test_ohif_monai_label_panel_connects_fetches_segments_and_submits_a_label_version_by_its_user(
    ohif_server: ServerProcess, sample: ConvertedSeries, tmp_path: Path
) -> None:
    screenshot = tmp_path / "ohif-panel-failure.png"
    answered: list[tuple[str, str, int]] = []
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        page = _signed_in_page(browser, 1600, 900)
        try:
            page.on(
                "response",
                lambda r: answered.append((r.request.method, r.url, r.status)) if "/ohif/" not in r.url else None,
            )
            page.goto(f"{ohif_server.url}/ohif/")
            page.locator(f"[data-cy='studyRow-{sample.study_uid}']").click()
            page.locator(f"[data-cy='mode-monai-label-{sample.study_uid}']").click()
            page.wait_for_url("**/ohif/monai-label*")
            page.locator("canvas.cornerstone-canvas").first.wait_for()
            page.locator("[data-cy='confirm-and-hide-button']").click()
            # Connect: the panel's server field, then its connect button.
            page.locator("#monailabelServerURL").fill(f"{ohif_server.url}/")
            with page.expect_response(lambda r: STEP_URLS["connect"] in r.url):
                page.locator(".settingsTable button.actionButton").click()
            # Active learning tab: next sample names the PACS series.
            page.get_by_text("Active Learning", exact=True).click()
            with page.expect_response(_is_post(STEP_URLS["next sample"])) as sampled:
                page.get_by_role("button", name="Next Sample").click()
            assert sampled.value.json()["id"] == sample.series_uid
            page.locator(".nextSampleForm").get_by_text(sample.series_uid).wait_for()
            page.keyboard.press("Escape")
            # Auto-segmentation tab: the (untrained) model's label map lands in the viewer.
            page.get_by_text("Auto-Segmentation", exact=True).click()
            with page.expect_response(_is_post(STEP_URLS["segmentation"]), timeout=120_000) as inferred:
                page.locator("button[title='Run Segmentation']").click()
            assert inferred.value.ok
            assert inferred.value.body()[:4] == b"NRRD"
            # Submit: the segmentation panel's "Export DICOM SEG" (STOW-RS through the server).
            page.locator("[data-cy='panelSegmentation-btn']").click()
            page.locator("button.h-6.w-6[aria-haspopup='menu']:not([aria-label]):visible").first.click()
            page.get_by_text("Export & Download").click()
            page.get_by_text("Export DICOM SEG").click()
            page.get_by_role("textbox").last.fill("OHIF label")
            with page.expect_response(_is_post(STEP_URLS["submit"]), timeout=60_000) as submitted:
                page.get_by_role("button", name="Save").click()
            assert submitted.value.status == 200, submitted.value.text()
        except Exception:
            page.screenshot(path=str(screenshot))
            raise
        finally:
            browser.close()
    for step, path in STEP_URLS.items():
        statuses = [status for _, url, status in answered if path in url]
        assert statuses, (step, f"see {screenshot}")
        assert all(status < 400 for status in statuses), (step, statuses, f"see {screenshot}")
    refused = [a for a in answered if a[2] >= 400 and TRAINING_PROBE not in a[1] and str(ohif_server.url) in a[1]]
    assert not refused, refused
    # The label arrived as a new final label version, by the signed-in OHIF user.
    versions = requests.get(
        f"{ohif_server.url}/activelabel/labels/{sample.series_uid}/versions",
        auth=(OHIF_USER, OHIF_PASSWORD),
        timeout=30,
    )
    assert versions.status_code == 200, versions.text
    finals = [v for v in versions.json() if v["tag"] == "final"]
    assert len(finals) == 1, versions.json()
    assert (finals[0]["author"], finals[0]["source"], finals[0]["current"]) == (OHIF_USER, "human", True)


def test_ohif_gets_the_app_labels_as_the_list_its_panel_appends_to() -> None:
    info = {"labels": {"spleen": 2, "liver": 1}, "models": {"seg": {"labels": {"spleen": 2, "liver": 1}}}}
    assert ohif_labels(info) == {**info, "labels": ["liver", "spleen"]}
    assert ohif_labels({"labels": ["liver"]}) == {"labels": ["liver"]}


def test_ohif_bundles_are_patched_for_the_segmentation_panel_and_its_export() -> None:
    patched = patched_bundles()
    assert len(patched) == len(BUNDLE_PATCHES)
    for _, _, replacement in BUNDLE_PATCHES:
        assert sum(replacement in content for content in patched.values()) == 1


def test_stow_body_is_split_into_its_dicom_parts_and_other_bodies_are_refused() -> None:
    part = b"\r\n--b1\r\nContent-Type: application/dicom\r\n\r\n"
    body = part + b"AAA" + part + b"BB\r\n--b1--"
    content_type = 'multipart/related; type="application/dicom"; boundary=b1'
    assert multipart_related_parts(content_type, body) == [b"AAA", b"BB"]
    with pytest.raises(InputRejected) as refused:
        multipart_related_parts("application/json", b"{}")
    assert refused.value.status == 415
    with pytest.raises(InputRejected) as empty:
        multipart_related_parts("multipart/related; boundary=other", body)
    assert empty.value.status == 400


def test_serve_gives_the_pacs_credentials_to_the_dicomweb_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MONAI_LABEL_DICOMWEB_USERNAME", "MONAI_LABEL_DICOMWEB_PASSWORD", "ACTIVELABEL_PACS_USER"):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["serve", "--studies", "http://127.0.0.1:8042/dicom-web"])
    args.conf = [["labels", '{"liver": 1}'], ["pacs_user", "u"], ["pacs_password", "p"]]
    _, env = server_command(args)
    assert (env["MONAI_LABEL_DICOMWEB_USERNAME"], env["MONAI_LABEL_DICOMWEB_PASSWORD"]) == ("u", "p")
    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_USERNAME", "explicit")
    assert server_command(args)[1]["MONAI_LABEL_DICOMWEB_USERNAME"] == "explicit"
