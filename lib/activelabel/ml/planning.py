"""Patch size and voxel spacing planned from the dataset's own fingerprint (as nnU-Net does).

The fingerprint is read from image headers only (no voxel data): each image's shape and
spacing, reordered to the RAS axes the network sees.  From the medians:

- the target spacing is the median spacing, never finer than the modality preset's spacing,
  which is the CPU budget's floor (3 mm CT, 1 mm MR);
- the patch covers the median volume on that grid, rounded up to the network's size divisor,
  and is shrunk along its longest axis in mm until it fits the modality preset's voxel budget.

Small structures (the hippocampus: median 36 x 50 x 35 voxels at 1 mm) get a patch of the
volume's own shape (40 x 56 x 40) rather than a cube, and abdominal CT gets the largest patch
the budget allows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from activelabel.errors import ActiveLabelError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
"""File names read as images when a folder is fingerprinted."""

FINGERPRINT_LIMIT = 64
"""Headers read at most (evenly spaced over the sorted file names), so large datastores start fast."""


class PlanningError(ActiveLabelError):
    """The dataset's images could not be fingerprinted."""


@dataclass(frozen=True)
class Fingerprint:
    """Median geometry of a dataset's images, in RAS axis order.

    Attributes:
        count: images read.
        median_shape: median number of voxels along the R, A and S axes.
        median_spacing: median voxel size in mm along the same axes.
    """

    count: int
    median_shape: tuple[float, float, float]
    median_spacing: tuple[float, float, float]


def _ras_geometry(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Shape and spacing of one image's header, with voxel axes reordered to R, A, S."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise PlanningError(f"cannot read the header of {path}: {str(error).strip().splitlines()[-1]}") from None
    dimension = reader.GetDimension()
    if dimension < 3:
        raise PlanningError(f"{path} is a {dimension}D image, expected 3D")
    size = np.asarray(reader.GetSize()[:3], float)
    spacing = np.asarray(reader.GetSpacing()[:3], float)
    direction = np.asarray(reader.GetDirection(), float).reshape(dimension, dimension)[:3, :3]
    # Column i is voxel axis i's direction in world (LPS) axes; RAS has the same axis order.
    world_axis = np.argmax(np.abs(direction), axis=0)
    if len(set(world_axis.tolist())) != 3:
        world_axis = np.arange(3)  # oblique beyond 45 degrees: keep the voxel order
    shape, mm = np.empty(3), np.empty(3)
    shape[world_axis], mm[world_axis] = size, spacing
    return shape, mm


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (hidden files excluded), sorted by name."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.endswith(IMAGE_SUFFIXES)
    )


def read_fingerprint(paths: Sequence[Path], *, limit: int = FINGERPRINT_LIMIT) -> Fingerprint:
    """Fingerprint of up to ``limit`` of ``paths`` (evenly spaced, so the choice is deterministic).

    Raises:
        PlanningError: when ``paths`` is empty or a header cannot be read.
    """
    if not paths:
        raise PlanningError("no images to fingerprint")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    chosen = [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, min(limit, len(paths))).round().astype(int))]
    shapes, spacings = zip(*(_ras_geometry(p) for p in chosen), strict=True)
    return Fingerprint(
        count=len(chosen),
        median_shape=tuple(float(v) for v in np.median(shapes, axis=0)),  # type: ignore[arg-type]
        median_spacing=tuple(float(v) for v in np.median(spacings, axis=0)),  # type: ignore[arg-type]
    )


def plan_spacing(fingerprint: Fingerprint, *, floor: Sequence[float]) -> tuple[float, float, float]:
    """The median spacing, coarsened per axis to ``floor`` where it is finer (mm, RAS order)."""
    if len(floor) != 3 or min(floor) <= 0:
        raise ValueError(f"floor must be 3 positive spacings, got {tuple(floor)}")
    return tuple(round(max(s, f), 4) for s, f in zip(fingerprint.median_spacing, floor, strict=True))  # type: ignore[return-value]


def plan_roi_size(
    fingerprint: Fingerprint,
    *,
    spacing: Sequence[float] | None,
    divisor: int,
    voxel_budget: int,
) -> tuple[int, int, int]:
    """Patch covering the median volume on the ``spacing`` grid, within ``voxel_budget`` voxels.

    Args:
        fingerprint: the dataset's median geometry.
        spacing: target spacing in mm (``None``: each image keeps its own, the median is used).
        divisor: every patch edge is a multiple of this (the network's total down-sampling).
        voxel_budget: voxels per patch at most (at least ``divisor ** 3`` is always allowed).

    Returns:
        The patch edge lengths in voxels, RAS order.
    """
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    median_mm = np.asarray(fingerprint.median_shape) * np.asarray(fingerprint.median_spacing)
    grid = np.asarray(spacing if spacing is not None else fingerprint.median_spacing, float)
    patch = np.maximum(np.ceil(median_mm / grid / divisor), 1) * divisor
    while np.prod(patch) > voxel_budget and patch.max() > divisor:
        longest = int(np.argmax(np.where(patch > divisor, patch * grid, -1)))
        patch[longest] -= divisor
    return tuple(int(v) for v in patch)  # type: ignore[return-value]
