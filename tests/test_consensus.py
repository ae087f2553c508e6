"""STAPLE consensus and inter-reader Dice on known label maps."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from activelabel.ml.consensus import pairwise_dice, staple, staple_files
from tests.helpers import write_nifti

NAMES = {"liver": 1, "spleen": 2}


def _readers() -> list[np.ndarray]:
    """Three readers: a liver cube and a spleen cube, each reader off by a few voxels."""
    base = np.zeros((12, 12, 12), np.uint8)
    base[2:6, 2:6, 2:6] = 1
    base[7:10, 7:10, 7:10] = 2
    second, third = base.copy(), base.copy()
    second[2, 2, 2] = 0  # misses one liver voxel
    second[0, 0, 0] = 1  # and marks a stray one
    third[9, 9, 9] = 0  # misses one spleen voxel
    return [base, second, third]


def test_three_readers_agree_with_the_majority() -> None:
    readers = _readers()
    result = staple(readers, NAMES)
    np.testing.assert_array_equal(result.label, readers[0])  # each deviation is outvoted 2 to 1


def test_pairwise_dice_is_the_mean_over_reader_pairs() -> None:
    readers = _readers()
    # Pairs (0, 1), (0, 2), (1, 2): the liver has 64 voxels, the spleen 27.
    liver = [2 * 63 / 128, 1.0, 2 * 63 / 128]
    spleen = [1.0, 2 * 26 / 53, 2 * 26 / 53]
    dice = pairwise_dice(readers, NAMES)
    assert dice["liver"] == pytest.approx(np.mean(liver))
    assert dice["spleen"] == pytest.approx(np.mean(spleen))
    result = staple(readers, NAMES)
    assert result.dice == pytest.approx(dice)
    assert result.mean_dice == pytest.approx((dice["liver"] + dice["spleen"]) / 2)


def test_identical_readers_give_their_label_and_perfect_agreement() -> None:
    label = _readers()[0]
    result = staple([label, label.copy()], NAMES)
    np.testing.assert_array_equal(result.label, label)
    assert result.dice == {"liver": 1.0, "spleen": 1.0}


def test_two_readers_who_disagree_leave_no_undecided_voxels() -> None:
    first = np.zeros((6, 6, 6), np.uint8)
    first[1:4, 1:4, 1:4] = 1
    second = np.zeros_like(first)
    second[2:5, 2:5, 2:5] = 1
    result = staple([first, second], NAMES)
    assert set(np.unique(result.label)) <= {0, 1}
    overlap = (first == 1) & (second == 1)
    assert np.all(result.label[overlap] == 1)  # where both readers agree, the consensus does too
    assert np.all(result.label[(first == 0) & (second == 0)] == 0)


def test_sparse_label_values_are_kept() -> None:
    first = np.zeros((5, 5, 5), np.uint8)
    first[1:3, 1:3, 1:3] = 5
    result = staple([first, first.copy(), first.copy()], {"kidney": 5})
    np.testing.assert_array_equal(result.label, first)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([np.zeros((3, 3, 3))], "at least two"),
        ([np.zeros((3, 3, 3)), np.zeros((3, 3, 4))], "same shape"),
        ([np.full((3, 3, 3), 70000), np.zeros((3, 3, 3))], "0..65534"),
    ],
)
def test_bad_inputs_are_refused(labels: list[np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        staple(labels, NAMES)


def test_files_are_combined_on_the_first_files_grid(tmp_path: Path) -> None:
    affine = np.diag([2.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = [10.0, -4.0, 7.0]
    paths = [write_nifti(tmp_path / f"r{i}.nii.gz", label, affine=affine) for i, label in enumerate(_readers())]
    output = tmp_path / "consensus.nii.gz"
    result = staple_files(paths, output, NAMES)
    stored = nib.load(output)
    np.testing.assert_allclose(stored.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(stored.dataobj), _readers()[0])
    assert result.dice == pytest.approx(pairwise_dice(_readers(), NAMES))
