"""Combining several readers' label maps of one volume into a consensus, and how far they agree.

The consensus is SimpleITK's multi-label STAPLE (Warfield et al.): each reader's reliability is
estimated per label and every voxel takes the label with the highest posterior.  Voxels STAPLE
leaves undecided (an exact tie) take the majority vote, and background where even the vote
ties (two readers who disagree).  Agreement is the Dice of every pair of readers, averaged per
label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from activelabel.ml.metrics import dice

_UNDECIDED = 65535
"""STAPLE's and the vote's marker for undecided voxels: above every storable label value."""


@dataclass(frozen=True)
class Consensus:
    """A consensus label map and the readers' agreement.

    Attributes:
        label: the combined label map (values among the inputs' values and 0).
        dice: label name -> mean pairwise Dice between readers (1.0 where no reader drew it).
        mean_dice: mean of ``dice`` over the labels.
    """

    label: np.ndarray
    dice: dict[str, float]
    mean_dice: float


def pairwise_dice(labels: Sequence[np.ndarray], names: Mapping[str, int]) -> dict[str, float]:
    """Mean Dice over every pair of readers, per label name."""
    pairs = list(combinations(range(len(labels)), 2))
    if not pairs:
        raise ValueError("inter-reader Dice needs at least two label maps")
    return {
        name: float(np.mean([dice(labels[i], labels[j], value) for i, j in pairs])) for name, value in names.items()
    }


def staple(labels: Sequence[np.ndarray], names: Mapping[str, int]) -> Consensus:
    """Multi-label STAPLE consensus of two or more label maps of the same shape.

    Args:
        labels: one integer label map per reader, all the same shape.
        names: label name -> value; values must be below 65535.

    Raises:
        ValueError: fewer than two maps, shapes that differ, or values outside 0..65534.
    """
    if len(labels) < 2:
        raise ValueError(f"a consensus needs at least two label maps, got {len(labels)}")
    shapes = {np.shape(label) for label in labels}
    if len(shapes) != 1:
        raise ValueError(f"label maps must have the same shape, got {sorted(shapes)}")
    arrays = [np.rint(np.asarray(label)).astype(np.int64) for label in labels]
    if any(array.min() < 0 or array.max() >= _UNDECIDED for array in arrays):
        raise ValueError(f"label values must lie in 0..{_UNDECIDED - 1}")
    images = [sitk.GetImageFromArray(array.astype(np.uint16)) for array in arrays]
    combined = sitk.GetArrayFromImage(sitk.MultiLabelSTAPLE(images, _UNDECIDED)).astype(np.int64)
    undecided = combined == _UNDECIDED
    if undecided.any():
        vote = sitk.GetArrayFromImage(sitk.LabelVoting(images, _UNDECIDED)).astype(np.int64)
        combined[undecided] = np.where(vote[undecided] == _UNDECIDED, 0, vote[undecided])
    agreement = pairwise_dice(arrays, names)
    mean = float(np.mean(list(agreement.values()))) if agreement else float("nan")
    return Consensus(label=combined, dice=agreement, mean_dice=mean)


def staple_files(paths: Sequence[str | Path], output: str | Path, names: Mapping[str, int]) -> Consensus:
    """STAPLE of label files on one grid, written to ``output`` on the first file's grid.

    Files are read with SimpleITK so any format the datastore stores works; the result is
    stored as unsigned 8-bit where the values fit, 16-bit otherwise.
    """
    images = [sitk.ReadImage(str(path)) for path in paths]
    result = staple([sitk.GetArrayFromImage(image) for image in images], names)
    pixel = sitk.sitkUInt8 if result.label.max(initial=0) < 256 else sitk.sitkUInt16
    out = sitk.Cast(sitk.GetImageFromArray(result.label.astype(np.uint16)), pixel)
    out.CopyInformation(images[0])
    sitk.WriteImage(out, str(output), useCompression=True)
    return result
