"""Fetching MSD hippocampus: from a local mirror, a checksummed download, and safe extraction.

Nothing here touches the internet: downloads are served by ``http.server`` on 127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from activelabel.data.fetch import (
    MSD_HIPPOCAMPUS_LABELS,
    MSD_HIPPOCAMPUS_MD5,
    MSD_HIPPOCAMPUS_URL,
    FetchError,
    extract_safely,
    fetch_msd_hippocampus,
)
from activelabel.testing.datasets import MSD_HIPPOCAMPUS

MSD_MIRROR = MSD_HIPPOCAMPUS
TINY_CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_004")

needs_mirror = pytest.mark.skipif(
    not (MSD_MIRROR / "imagesTr").is_dir(), reason=f"MSD hippocampus mirror not found at {MSD_MIRROR}"
)


class QuietHandler(SimpleHTTPRequestHandler):
    """Static file handler that does not log each request to stderr."""

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on a free local port: ``(folder, base_url)``."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def write_tiny_task(root: Path, *, cases: tuple[str, ...] = TINY_CASES) -> Path:
    """Write an extracted-archive-like folder with tiny volumes; return the task folder."""
    task = root / "Task04_Hippocampus"
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for offset, case in enumerate(cases):
        shape = (6 + offset, 7, 5)
        label = np.zeros(shape, dtype=np.uint8)
        label[2:4, 2:4, 1:3] = 1
        label[2:4, 4:6, 1:3] = 2
        for folder, data in (("imagesTr", rng.integers(0, 140, shape, dtype=np.uint8)), ("labelsTr", label)):
            (task / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), task / folder / f"{case}.nii.gz")
    (task / "dataset.json").write_text(json.dumps({"name": "Hippocampus"}))
    return task


def write_tiny_tar(path: Path, workdir: Path) -> Path:
    """A ``.tar`` laid out like the MSD archive (top folder ``Task04_Hippocampus/``)."""
    task = write_tiny_task(workdir)
    with tarfile.open(path, "w") as tar:
        tar.add(task, arcname=task.name)
    return path


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_url_and_md5_are_the_ones_monai_uses() -> None:
    from monai.apps import DecathlonDataset

    assert DecathlonDataset.resource["Task04_Hippocampus"] == MSD_HIPPOCAMPUS_URL
    assert DecathlonDataset.md5["Task04_Hippocampus"] == MSD_HIPPOCAMPUS_MD5


@needs_mirror
def test_mirror_folder_becomes_a_datastore_with_truth_and_labeled_cases(tmp_path: Path) -> None:
    dest = tmp_path / "studies"
    summary = fetch_msd_hippocampus(dest, mirror=MSD_MIRROR, labeled=2)

    images = sorted(dest.glob("*.nii.gz"))
    truths = sorted((dest / "truth").glob("*.nii.gz"))
    finals = sorted((dest / "labels" / "final").glob("*.nii.gz"))
    assert (summary.images, summary.labeled, summary.dest) == (200, 2, dest)
    assert len(images) == 200
    assert len(truths) == 200
    assert [p.name for p in finals] == ["hippocampus_001.nii.gz", "hippocampus_003.nii.gz"]
    assert json.loads((dest / "labels.json").read_text()) == {"anterior": 1, "posterior": 2}
    assert [p.name for p in images] == [p.name for p in truths]
    assert not any(p.is_symlink() for p in [*images, *truths, *finals])
    for image_file in images:
        image, truth = nib.load(image_file), nib.load(dest / "truth" / image_file.name)
        assert image.shape == truth.shape
        np.testing.assert_allclose(image.affine, truth.affine)
    first = images[0].name
    assert (dest / first).read_bytes() == (MSD_MIRROR / "imagesTr" / first).read_bytes()
    assert (dest / "labels" / "final" / first).read_bytes() == (MSD_MIRROR / "labelsTr" / first).read_bytes()


def test_mirror_folder_holding_the_extracted_task_folder_skips_macos_resource_files(tmp_path: Path) -> None:
    task = write_tiny_task(tmp_path / "mirror")
    (task / "imagesTr" / "._hippocampus_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    dest = tmp_path / "studies"

    summary = fetch_msd_hippocampus(dest, mirror=tmp_path / "mirror", labeled=1)

    assert summary.images == len(TINY_CASES)
    assert sorted(p.name for p in dest.glob("*.nii.gz")) == [f"{case}.nii.gz" for case in TINY_CASES]
    assert not list(dest.rglob("._*"))
    assert summary.labels == MSD_HIPPOCAMPUS_LABELS


def test_mirror_tar_is_checksummed_and_extracted(tmp_path: Path) -> None:
    archive = write_tiny_tar(tmp_path / "Task04_Hippocampus.tar", tmp_path / "work")
    dest = tmp_path / "studies"

    summary = fetch_msd_hippocampus(dest, mirror=archive, md5=md5_of(archive), labeled=3)

    assert (summary.images, summary.labeled) == (3, 3)
    assert len(files(dest / "labels" / "final")) == 3
    assert not list((dest / ".downloads").iterdir()), "the extraction folder should be removed"


def test_mirror_tar_with_a_wrong_checksum_is_refused(tmp_path: Path) -> None:
    archive = write_tiny_tar(tmp_path / "Task04_Hippocampus.tar", tmp_path / "work")
    dest = tmp_path / "studies"

    with pytest.raises(FetchError, match="checksum mismatch"):
        fetch_msd_hippocampus(dest, mirror=archive, md5="0" * 32)
    assert not dest.exists()


def test_download_with_the_right_md5_is_laid_out_and_cached(http_root: tuple[Path, str], tmp_path: Path) -> None:
    root, base_url = http_root
    archive = write_tiny_tar(root / "Task04_Hippocampus.tar", tmp_path / "work")
    dest = tmp_path / "studies"

    summary = fetch_msd_hippocampus(dest, url=f"{base_url}/Task04_Hippocampus.tar", md5=md5_of(archive), labeled=1)

    assert (summary.images, summary.labeled) == (3, 1)
    assert len(files(dest / "truth")) == 3
    cached = dest / ".downloads" / "Task04_Hippocampus.tar"
    assert md5_of(cached) == md5_of(archive)
    assert not list((dest / ".downloads").glob("*.part"))

    archive.unlink()  # the cached archive is reused: no second download is needed
    again = fetch_msd_hippocampus(
        tmp_path / "again", url=f"{base_url}/Task04_Hippocampus.tar", md5=md5_of(cached), downloads=cached.parent
    )
    assert again.images == 3


def test_download_with_a_wrong_md5_raises_and_leaves_nothing_behind(
    http_root: tuple[Path, str], tmp_path: Path
) -> None:
    root, base_url = http_root
    archive = write_tiny_tar(root / "Task04_Hippocampus.tar", tmp_path / "work")
    dest = tmp_path / "studies"
    wrong = "f" * 32

    with pytest.raises(FetchError) as caught:
        fetch_msd_hippocampus(dest, url=f"{base_url}/Task04_Hippocampus.tar", md5=wrong)

    message = str(caught.value)
    assert wrong in message
    assert md5_of(archive) in message
    assert "\n" not in message
    assert not dest.exists(), f"partial datastore left behind: {files(dest)}"


def test_download_http_error_is_a_fetch_error(http_root: tuple[Path, str], tmp_path: Path) -> None:
    _, base_url = http_root
    with pytest.raises(FetchError, match="404"):
        fetch_msd_hippocampus(tmp_path / "studies", url=f"{base_url}/missing.tar", md5=MSD_HIPPOCAMPUS_MD5)
    assert not (tmp_path / "studies").exists()


def test_tar_member_escaping_the_target_is_rejected(tmp_path: Path) -> None:
    archive = write_tiny_tar(tmp_path / "Task04_Hippocampus.tar", tmp_path / "work")
    with tarfile.open(archive, "a") as tar:
        payload = b"escaped"
        info = tarfile.TarInfo("../evil")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    dest = tmp_path / "nested" / "studies"

    with pytest.raises(FetchError, match=r"'\.\./evil'.*outside"):
        fetch_msd_hippocampus(dest, mirror=archive, md5=md5_of(archive))
    assert not list(tmp_path.rglob("evil"))
    assert not (tmp_path / "nested").exists()


@pytest.mark.parametrize(
    ("member", "kind"),
    [("/tmp/absolute-evil", tarfile.REGTYPE), ("link-out", tarfile.SYMTYPE)],
)
def test_absolute_members_and_links_are_rejected(tmp_path: Path, member: str, kind: bytes) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo(member)
        info.type = kind
        info.linkname = "../../outside" if kind == tarfile.SYMTYPE else ""
        tar.addfile(info, io.BytesIO(b""))
    target = tmp_path / "target"
    target.mkdir()

    with pytest.raises(FetchError, match="refusing to extract"):
        extract_safely(archive, target)
    assert not list(target.iterdir())


def test_images_without_labels_are_reported(tmp_path: Path) -> None:
    task = write_tiny_task(tmp_path / "mirror")
    (task / "labelsTr" / f"{TINY_CASES[1]}.nii.gz").unlink()
    with pytest.raises(FetchError, match="no label"):
        fetch_msd_hippocampus(tmp_path / "studies", mirror=task)
    assert not (tmp_path / "studies").exists()


def test_missing_mirror_and_too_many_labeled_are_fetch_errors(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="does not exist"):
        fetch_msd_hippocampus(tmp_path / "studies", mirror=tmp_path / "nowhere")
    task = write_tiny_task(tmp_path / "mirror")
    with pytest.raises(FetchError, match="exceeds"):
        fetch_msd_hippocampus(tmp_path / "studies", mirror=task, labeled=4)
    assert not (tmp_path / "studies").exists()


def test_existing_images_are_not_overwritten_without_permission(tmp_path: Path) -> None:
    task = write_tiny_task(tmp_path / "mirror")
    dest = tmp_path / "studies"
    fetch_msd_hippocampus(dest, mirror=task)
    before = (dest / f"{TINY_CASES[0]}.nii.gz").stat().st_mtime_ns

    with pytest.raises(FetchError, match="already exist"):
        fetch_msd_hippocampus(dest, mirror=task)
    assert (dest / f"{TINY_CASES[0]}.nii.gz").stat().st_mtime_ns == before

    summary = fetch_msd_hippocampus(dest, mirror=task, labeled=2, overwrite=True)
    assert summary.labeled == 2
