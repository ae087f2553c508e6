"""Write a MONAI Label local datastore folder, with a hidden ground truth beside it.

Layout (``dest`` is what ``monailabel start_server --studies`` is given)::

    dest/<case_id>.nii.gz               images; LocalDatastore lists the folder itself
    dest/labels/final/<case_id>.nii.gz  labels of the cases that start out labeled ("final" tag)
    dest/truth/<case_id>.nii.gz         ground truth of every case, for the simulator and tests
    dest/labels.json                    label name -> value

Every file is written atomically, so a server watching the folder never reads a torn volume.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import nibabel as nib
import numpy as np

from activelabel.errors import ActiveLabelError
from activelabel.fsutil import atomic_write
from activelabel.labelmap import LABELS_FILE, LabelMap

IMAGE_SUFFIX = ".nii.gz"
TRUTH_DIR = "truth"
FINAL_LABELS_DIR = Path("labels") / "final"


class DatastoreError(ActiveLabelError, RuntimeError):
    """A datastore cannot be written as asked (bad arguments or conflicting content)."""


class DatastoreExistsError(DatastoreError, FileExistsError):
    """Writing would replace files that already exist and overwriting was not allowed."""


class VolumeLike(Protocol):
    """Anything with an image, a label map on the same grid and a voxel-to-RAS affine."""

    @property
    def image(self) -> np.ndarray: ...

    @property
    def label(self) -> np.ndarray: ...

    @property
    def affine(self) -> np.ndarray: ...


@dataclass(frozen=True)
class DatastoreSummary:
    """What one write put into a datastore.

    Attributes:
        dest: the datastore folder.
        images: images written by this call.
        labeled: of those, how many also got a ``final`` label.
        labels: label name -> value written to ``labels.json``.
    """

    dest: Path
    images: int
    labeled: int
    labels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the folder as a string)."""
        return {"dest": str(self.dest), "images": self.images, "labeled": self.labeled, "labels": dict(self.labels)}


def case_id(prefix: str, index: int) -> str:
    """Zero-padded case id such as ``ct_000``; ids sort in case order."""
    return f"{prefix}_{index:03d}"


def image_path(dest: Path, case: str) -> Path:
    """Where the image of ``case`` lives."""
    return Path(dest) / f"{case}{IMAGE_SUFFIX}"


def truth_path(dest: Path, case: str) -> Path:
    """Where the ground truth of ``case`` lives (invisible to MONAI Label)."""
    return Path(dest) / TRUTH_DIR / f"{case}{IMAGE_SUFFIX}"


def final_label_path(dest: Path, case: str) -> Path:
    """Where MONAI Label looks for the submitted ("final") label of ``case``."""
    return Path(dest) / FINAL_LABELS_DIR / f"{case}{IMAGE_SUFFIX}"


def check_writable(dest: Path, case_ids: Iterable[str], *, labels: Mapping[str, int], overwrite: bool = False) -> None:
    """Fail before anything is written if the datastore would be clobbered or mixed up.

    Raises:
        DatastoreExistsError: an image of one of ``case_ids`` exists and ``overwrite`` is false.
        DatastoreError: ``dest`` is not a folder, or holds a ``labels.json`` with other labels
            and ``overwrite`` is false.
    """
    _check_labels_file(Path(dest), LabelMap.from_mapping(labels), overwrite=overwrite)
    _check_images_absent(Path(dest), case_ids, overwrite=overwrite)


def _check_labels_file(dest: Path, label_map: LabelMap, *, overwrite: bool) -> None:
    """``dest`` must be a folder (or absent) whose ``labels.json``, if any, names the same labels."""
    if dest.exists() and not dest.is_dir():
        raise DatastoreError(f"datastore path {dest} exists and is not a folder")
    labels_file = dest / LABELS_FILE
    if overwrite or not labels_file.exists():
        return
    current = LabelMap.from_json(labels_file).to_dict()
    if current != label_map.to_dict():
        raise DatastoreError(
            f"{labels_file} names labels {current}, not {label_map.to_dict()}; use another folder or overwrite"
        )


def _check_images_absent(dest: Path, case_ids: Iterable[str], *, overwrite: bool) -> None:
    """No image of ``case_ids`` may exist unless overwriting."""
    if overwrite:
        return
    existing = [case for case in case_ids if image_path(dest, case).exists()]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise DatastoreExistsError(
            f"{image_path(dest, existing[0])}{more} already exist; pass overwrite (--overwrite) to replace them"
        )


def write_datastore(
    dest: Path,
    cases: Iterable[tuple[str, VolumeLike]],
    *,
    labels: Mapping[str, int],
    labeled: int,
    overwrite: bool = False,
) -> DatastoreSummary:
    """Encode in-memory volumes as NIfTI and lay them out as a datastore.

    Args:
        dest: datastore folder (created if missing).
        cases: ``(case_id, volume)`` pairs in case order; consumed lazily, one volume at a time.
        labels: label name -> value, written to ``labels.json``.
        labeled: the first this many cases also get their truth as a ``final`` label.
        overwrite: replace existing images of the same ids instead of refusing.

    Raises:
        DatastoreError: bad ``labeled``, or a conflict found before writing (see :func:`check_writable`).
    """

    def writers(case: str, volume: VolumeLike) -> tuple[Callable[[Path], None], Callable[[Path], None]]:
        image = _nifti_bytes(np.asarray(volume.image), volume.affine)
        truth = _nifti_bytes(np.asarray(volume.label).astype(np.uint8), volume.affine)
        return (lambda tmp: tmp.write_bytes(image)), (lambda tmp: tmp.write_bytes(truth))

    _check_labeled(cases, labeled)
    return _lay_out(dest, ((case, *writers(case, volume)) for case, volume in cases), labels, labeled, overwrite)


def copy_datastore(
    dest: Path,
    cases: Iterable[tuple[str, Path, Path]],
    *,
    labels: Mapping[str, int],
    labeled: int,
    overwrite: bool = False,
) -> DatastoreSummary:
    """Lay out existing NIfTI files as a datastore by copying them byte for byte.

    Args:
        dest: datastore folder (created if missing).
        cases: ``(case_id, image_file, label_file)`` triples in case order.
        labels: label name -> value, written to ``labels.json``.
        labeled: the first this many cases also get their label as a ``final`` label.
        overwrite: replace existing images of the same ids instead of refusing.

    Raises:
        DatastoreError: bad ``labeled``, or a conflict found before writing (see :func:`check_writable`).
    """

    def copier(source: Path) -> Callable[[Path], None]:
        return lambda tmp: shutil.copyfile(source, tmp)

    _check_labeled(cases, labeled)
    return _lay_out(
        dest, ((case, copier(image), copier(label)) for case, image, label in cases), labels, labeled, overwrite
    )


def _lay_out(
    dest: Path,
    items: Iterable[tuple[str, Callable[[Path], None], Callable[[Path], None]]],
    labels: Mapping[str, int],
    labeled: int,
    overwrite: bool,
) -> DatastoreSummary:
    """Write each case's image, truth and (for the first ``labeled``) final label, then ``labels.json``."""
    dest = Path(dest)
    label_map = LabelMap.from_mapping(labels)
    _check_labels_file(dest, label_map, overwrite=overwrite)
    images = 0
    for case, write_image, write_truth in items:
        _check_case_id(case)
        _check_images_absent(dest, [case], overwrite=overwrite)
        atomic_write(truth_path(dest, case), write_truth)
        if images < labeled:
            atomic_write(final_label_path(dest, case), write_truth)
        else:
            final_label_path(dest, case).unlink(missing_ok=True)
        atomic_write(image_path(dest, case), write_image)
        images += 1
    if labeled > images:
        raise DatastoreError(f"labeled ({labeled}) exceeds the number of cases ({images})")
    atomic_write(dest / LABELS_FILE, label_map.write)
    return DatastoreSummary(dest=dest, images=images, labeled=labeled, labels=label_map.to_dict())


def _check_labeled(cases: Iterable[Any], labeled: int) -> None:
    """``labeled`` must be >= 0 and, when the number of cases is known up front, not exceed it."""
    if labeled < 0:
        raise DatastoreError(f"labeled must be >= 0, got {labeled}")
    if isinstance(cases, Sized) and labeled > len(cases):
        raise DatastoreError(f"labeled ({labeled}) exceeds the number of cases ({len(cases)})")


def _check_case_id(case: str) -> None:
    """Case ids become file names: no separators, no hidden or empty names."""
    if not case or case.startswith(".") or "/" in case or "\\" in case:
        raise DatastoreError(f"invalid case id {case!r}")


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 bytes with qform and sform set to ``affine`` (scanner space, mm)."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise DatastoreError(f"affine must be 4x4, got shape {affine.shape}")
    if array.ndim != 3:
        raise DatastoreError(f"volumes must be 3D, got shape {array.shape}")
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units(xyz="mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)
