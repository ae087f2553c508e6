"""Fetch the public Medical Segmentation Decathlon hippocampus set as a datastore.

Task04_Hippocampus holds T1 MRI crops (1 mm, uint8); the training ones (``imagesTr``) have
labels (``labelsTr``) 1 = anterior and 2 = posterior hippocampus (Antonelli et al., "The
Medical Segmentation Decathlon", Nature Communications 2022; CC-BY-SA 4.0).  The archive
URL and MD5 are the ones MONAI's ``DecathlonDataset`` uses.  The training cases are laid out with
:mod:`activelabel.data.layout`: images in the datastore, labels as hidden ground truth,
and the first ``labeled`` of them also as MONAI Label ``final`` labels.

Sources: a download (checksummed, extracted with path checks), a local copy of the
``.tar`` (checksummed), or a local folder laid out like the extracted archive.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from pathlib import Path

import requests

from activelabel.data.layout import DatastoreError, DatastoreSummary, check_writable, copy_datastore
from activelabel.errors import ActiveLabelError

MSD_HIPPOCAMPUS_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar"
"""Archive URL, as in ``monai.apps.DecathlonDataset.resource["Task04_Hippocampus"]``."""

MSD_HIPPOCAMPUS_MD5 = "9d24dba78a72977dbd1d2e110310f31b"
"""Archive MD5, as in ``monai.apps.DecathlonDataset.md5["Task04_Hippocampus"]``."""

MSD_HIPPOCAMPUS_LABELS: dict[str, int] = {"anterior": 1, "posterior": 2}
"""Label name -> value of the MSD hippocampus label maps."""

ARCHIVE_NAME = "Task04_Hippocampus.tar"
IMAGES_DIR = "imagesTr"
LABELS_DIR = "labelsTr"
NIFTI_SUFFIX = ".nii.gz"
_CHUNK = 1 << 20


class FetchError(ActiveLabelError, RuntimeError):
    """A fetch failed for a reason the user can act on; the message is one line."""


def fetch_msd_hippocampus(
    dest: Path,
    *,
    mirror: Path | None = None,
    labeled: int = 0,
    url: str = MSD_HIPPOCAMPUS_URL,
    md5: str = MSD_HIPPOCAMPUS_MD5,
    downloads: Path | None = None,
    overwrite: bool = False,
    timeout: float = 60.0,
) -> DatastoreSummary:
    """Lay out the MSD hippocampus training set as a datastore in ``dest``.

    Args:
        dest: datastore folder (created if missing).
        mirror: a local folder with ``imagesTr/`` and ``labelsTr/`` (or one holding the
            extracted ``Task04_Hippocampus/``), or a local copy of the ``.tar``; no download then.
        labeled: the first this many cases (by file name) also get a ``final`` label.
        url: where to download the archive from when there is no mirror.
        md5: expected MD5 of the archive (downloaded or mirrored ``.tar``).
        downloads: folder for the archive and its extraction; default ``dest/.downloads``.
        overwrite: replace images of the same ids already in ``dest``.
        timeout: seconds to wait for the server to connect or send data.

    Raises:
        FetchError: for every failure the user can act on (network, checksum, unsafe or
            malformed archive, missing labels, existing files); nothing partial is left behind
            by a failed download or check.
    """
    dest = Path(dest)
    downloads = dest / ".downloads" if downloads is None else Path(downloads)
    if labeled < 0:
        raise FetchError(f"labeled must be >= 0, got {labeled}")
    created = _missing_parents(downloads) + _missing_parents(dest)
    try:
        return _fetch(
            dest,
            mirror=mirror,
            labeled=labeled,
            url=url,
            md5=md5,
            downloads=downloads,
            overwrite=overwrite,
            timeout=timeout,
        )
    except FetchError:
        _remove_empty(created)
        raise
    except (DatastoreError, OSError) as exc:
        _remove_empty(created)
        raise FetchError(_one_line(str(exc))) from exc


def _fetch(
    dest: Path,
    *,
    mirror: Path | None,
    labeled: int,
    url: str,
    md5: str,
    downloads: Path,
    overwrite: bool,
    timeout: float,
) -> DatastoreSummary:
    """Resolve the source (folder, local archive or download) and lay it out."""
    if mirror is not None and Path(mirror).is_dir():
        return _lay_out(Path(mirror), dest, labeled=labeled, overwrite=overwrite)
    if mirror is not None:
        archive = Path(mirror)
        if not archive.is_file():
            raise FetchError(f"mirror {archive} does not exist")
        _verify_md5(archive, md5)
    else:
        archive = download(url, downloads / ARCHIVE_NAME, md5=md5, timeout=timeout)
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=downloads) as tmp:
        extract_safely(archive, Path(tmp))
        return _lay_out(Path(tmp), dest, labeled=labeled, overwrite=overwrite)


def download(url: str, target: Path, *, md5: str, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``target`` and check its MD5; an existing ``target`` with that MD5 is reused.

    The data goes to ``target.part`` first and is renamed only once the checksum matches, so
    ``target`` is never a partial or corrupt file.

    Raises:
        FetchError: on a network or HTTP error, or a checksum mismatch (the file is removed).
    """
    target = Path(target)
    if target.is_file():
        if _md5(target) == md5:
            return target
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        actual = _stream(url, part, timeout=timeout)
    except requests.RequestException as exc:
        part.unlink(missing_ok=True)
        raise FetchError(_one_line(f"download of {url} failed: {exc}")) from exc
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise FetchError(_one_line(f"cannot write {part}: {exc}")) from exc
    if actual != md5:
        part.unlink(missing_ok=True)
        raise FetchError(f"checksum mismatch for {url}: expected md5 {md5}, got {actual}; the download was removed")
    os.replace(part, target)
    return target


def _stream(url: str, part: Path, *, timeout: float) -> str:
    """Write the body of ``url`` to ``part``; return its MD5."""
    digest = hashlib.md5(usedforsecurity=False)
    with requests.get(url, stream=True, timeout=(timeout, timeout)) as response:
        response.raise_for_status()
        with part.open("wb") as handle:
            for chunk in response.iter_content(chunk_size=_CHUNK):
                handle.write(chunk)
                digest.update(chunk)
    return digest.hexdigest()


def extract_safely(archive: Path, target: Path) -> None:
    """Extract ``archive`` into ``target`` after checking every member stays inside it.

    Raises:
        FetchError: the file is not a tar archive, or a member is absolute, climbs out of
            ``target`` (``..``), or is a link or device.
    """
    root = Path(target).resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, root)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=members, filter="data")
            else:  # Python < 3.10.12 has no extraction filters; the members were checked above.
                tar.extractall(root, members=members)
    except tarfile.TarError as exc:
        raise FetchError(_one_line(f"{archive} is not a readable tar archive: {exc}")) from exc


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    """Reject members that would land outside ``root`` or are not plain files or folders."""
    if not (member.isfile() or member.isdir()):
        raise FetchError(f"archive member {member.name!r} is a link or special file; refusing to extract")
    path = (root / member.name).resolve()
    if path != root and root not in path.parents:
        raise FetchError(f"archive member {member.name!r} would be written outside {root}; refusing to extract")


def _verify_md5(path: Path, md5: str) -> None:
    """Raise if ``path`` does not have the expected MD5."""
    actual = _md5(path)
    if actual != md5:
        raise FetchError(f"checksum mismatch for {path}: expected md5 {md5}, got {actual}")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _lay_out(source: Path, dest: Path, *, labeled: int, overwrite: bool) -> DatastoreSummary:
    """Copy the labelled training cases under ``source`` into the datastore ``dest``."""
    cases = collect_cases(find_task_root(source))
    if labeled > len(cases):
        raise FetchError(f"labeled ({labeled}) exceeds the number of cases ({len(cases)})")
    check_writable(dest, [case for case, _, _ in cases], labels=MSD_HIPPOCAMPUS_LABELS, overwrite=overwrite)
    return copy_datastore(dest, cases, labels=MSD_HIPPOCAMPUS_LABELS, labeled=labeled, overwrite=overwrite)


def find_task_root(folder: Path) -> Path:
    """The folder holding ``imagesTr/``: ``folder`` itself or its one subfolder that has it.

    Raises:
        FetchError: when neither is laid out like the extracted archive.
    """
    folder = Path(folder)
    if (folder / IMAGES_DIR).is_dir():
        return folder
    candidates = sorted(p for p in folder.iterdir() if p.is_dir() and (p / IMAGES_DIR).is_dir())
    if len(candidates) != 1:
        raise FetchError(f"{folder} is not laid out like the MSD archive: no single {IMAGES_DIR}/ folder found")
    return candidates[0]


def collect_cases(root: Path) -> list[tuple[str, Path, Path]]:
    """``(case_id, image, label)`` for every image in ``imagesTr`` (sorted), skipping macOS ``._`` files.

    Raises:
        FetchError: when there are no images, or an image has no label of the same name.
    """
    images = sorted(
        p for p in (root / IMAGES_DIR).glob(f"*{NIFTI_SUFFIX}") if p.is_file() and not p.name.startswith("._")
    )
    if not images:
        raise FetchError(f"no {NIFTI_SUFFIX} images in {root / IMAGES_DIR}")
    cases = [(image.name[: -len(NIFTI_SUFFIX)], image, root / LABELS_DIR / image.name) for image in images]
    missing = [label for _, _, label in cases if not label.is_file()]
    if missing:
        raise FetchError(f"{len(missing)} image(s) in {root / IMAGES_DIR} have no label, e.g. {missing[0]} is missing")
    return cases


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists():
            break
        missing.append(candidate)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this fetch created if they are (still) empty, deepest first."""
    for folder in sorted(set(folders), key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            continue


def _one_line(message: str) -> str:
    """Collapse whitespace so a message prints as one line."""
    return " ".join(message.split())
