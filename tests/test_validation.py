"""Upload checks: every bad label or image is rejected with a status and a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from activelabel.labelmap import LabelMap
from activelabel.store.validation import InputRejected, check_image, check_label
from tests.helpers import write_nifti

LABELS = LabelMap.from_mapping({"liver": 1, "spleen": 2})
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_nifti(tmp_path / "image.nii.gz", np.zeros((6, 7, 8), np.float32), affine=AFFINE)


def _label(tmp_path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    return write_nifti(tmp_path / "label.nii.gz", array, affine=affine)


def test_matching_label_is_accepted(tmp_path: Path, image: Path) -> None:
    label = np.zeros((6, 7, 8), np.uint8)
    label[1:3, 1:3, 1:3] = 2
    check_label(_label(tmp_path, label), image, LABELS)


def test_integral_float_label_is_accepted(tmp_path: Path, image: Path) -> None:
    check_label(_label(tmp_path, np.ones((6, 7, 8), np.float32)), image, LABELS)


@pytest.mark.parametrize(
    ("array", "affine", "status", "message"),
    [
        (np.zeros((6, 7, 9), np.uint8), AFFINE, 422, "shape"),
        (np.zeros((6, 7, 8), np.uint8), np.diag([2.0, 2.0, 2.5, 1.0]), 422, "spacing"),
        (np.zeros((6, 7, 8), np.uint8), np.diag([-2.0, 2.0, 3.0, 1.0]), 422, "orientation"),
        (np.zeros((6, 7, 8), np.uint8), AFFINE + np.array([[0, 0, 0, 5.0]] + [[0] * 4] * 3), 422, "origin"),
        (np.full((6, 7, 8), 0.5, np.float32), AFFINE, 422, "integers"),
        (np.full((6, 7, 8), 7, np.uint8), AFFINE, 422, r"\[7\] are not among"),
        (np.full((6, 7, 8), np.nan, np.float32), AFFINE, 422, "NaN"),
    ],
)
def test_bad_labels_are_rejected(
    tmp_path: Path, image: Path, array: np.ndarray, affine: np.ndarray, status: int, message: str
) -> None:
    with pytest.raises(InputRejected, match=message) as caught:
        check_label(_label(tmp_path, array, affine), image, LABELS)
    assert caught.value.status == status


def test_corrupt_label_file_is_rejected_as_unsupported(tmp_path: Path, image: Path) -> None:
    corrupt = tmp_path / "label.nii.gz"
    corrupt.write_bytes(b"definitely not a nifti file")
    with pytest.raises(InputRejected, match="not a readable medical image") as caught:
        check_label(corrupt, image, LABELS)
    assert caught.value.status == 415


def test_non_image_upload_is_rejected(tmp_path: Path) -> None:
    text = tmp_path / "notes.nii.gz"
    text.write_text("hello")
    with pytest.raises(InputRejected, match="not a readable medical image"):
        check_image(text)


def test_two_dimensional_image_is_rejected(tmp_path: Path) -> None:
    flat = write_nifti(tmp_path / "flat.nii.gz", np.zeros((5, 5), np.float32))
    with pytest.raises(InputRejected, match="3D volume"):
        check_image(flat)
