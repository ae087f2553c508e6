"""NIfTI geometry <-> Slicer volume geometry, and label maps <-> named, coloured segments (NumPy only).

Conventions: NIfTI arrays (nibabel, the server) are indexed ``[i, j, k]`` and their affine maps
voxel indices to RAS millimetres.  Slicer's IJK-to-RAS matrix is the same matrix, but
``slicer.util.arrayFromVolume`` indexes ``[k, j, i]``.  Slicer stores the matrix as origin,
spacing and unit direction columns; :class:`VolumeGeometry` converts between the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ActiveLabelError

PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.87, 0.47, 0.36),
    (0.36, 0.62, 0.85),
    (0.95, 0.80, 0.26),
    (0.50, 0.78, 0.42),
    (0.70, 0.50, 0.85),
    (0.30, 0.80, 0.80),
    (0.95, 0.55, 0.75),
    (0.65, 0.45, 0.30),
    (0.60, 0.60, 0.60),
    (0.85, 0.85, 0.45),
)
"""Segment colours (RGB in 0..1), picked by label value so a label keeps its colour across samples."""


@dataclass(frozen=True)
class VolumeGeometry:
    """A voxel grid in RAS millimetres, as Slicer's volume nodes describe it.

    Attributes:
        shape: voxels along i, j, k.
        origin: RAS position of voxel (0, 0, 0).
        spacing: voxel size along i, j, k in mm.
        directions: 3x3 matrix whose columns are the unit RAS directions of i, j, k.
    """

    shape: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    directions: tuple[tuple[float, float, float], ...]

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: Sequence[int]) -> VolumeGeometry:
        """The geometry of a NIfTI image (its 4x4 affine and array shape)."""
        matrix = np.asarray(affine, dtype=float)
        if matrix.shape != (4, 4):
            raise ActiveLabelError(f"an affine must be 4x4, got shape {matrix.shape}")
        if len(shape) != 3:
            raise ActiveLabelError(f"a volume must be 3D, got shape {tuple(shape)}")
        columns = matrix[:3, :3]
        spacing = np.linalg.norm(columns, axis=0)
        if np.any(spacing <= 0):
            raise ActiveLabelError(f"the affine has a zero-length voxel axis: spacing {spacing.tolist()}")
        directions = columns / spacing
        return cls(
            shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            origin=_triple(matrix[:3, 3]),
            spacing=_triple(spacing),
            directions=tuple(_triple(row) for row in directions),
        )

    @property
    def ijk_to_ras(self) -> np.ndarray:
        """The 4x4 IJK-to-RAS matrix (equal to the NIfTI affine)."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(self.directions) * np.asarray(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def mismatch(self, other: VolumeGeometry, *, tolerance: float = 1e-3) -> str | None:
        """Why ``other`` is not on this grid (the first difference found), or ``None`` when it is."""
        if self.shape != other.shape:
            return f"shape {other.shape} differs from the image's {self.shape}"
        if not np.allclose(self.spacing, other.spacing, atol=tolerance):
            return f"spacing {other.spacing} differs from the image's {self.spacing}"
        if not np.allclose(self.directions, other.directions, atol=tolerance):
            return "orientation differs from the image's"
        if not np.allclose(self.origin, other.origin, atol=tolerance * max(self.spacing)):
            return f"origin {other.origin} differs from the image's {self.origin}"
        return None


@dataclass(frozen=True)
class SegmentSpec:
    """One label as a Slicer segment: its value in label maps, name and colour."""

    value: int
    name: str
    color: tuple[float, float, float]


def segment_specs(label_names: Mapping[str, int]) -> list[SegmentSpec]:
    """The segments of a label map with these ``name -> value`` labels, in value order."""
    specs = []
    for name, value in sorted(label_names.items(), key=lambda item: item[1]):
        if not isinstance(value, int) or value < 1:
            raise ActiveLabelError(f"label {name!r} has value {value!r}; label values are integers >= 1")
        specs.append(SegmentSpec(value, name, PALETTE[(value - 1) % len(PALETTE)]))
    return specs


def to_slicer_order(array: np.ndarray) -> np.ndarray:
    """A NIfTI-ordered ``[i, j, k]`` array as Slicer's ``[k, j, i]`` (a view)."""
    return _transposed(array)


def to_nifti_order(array: np.ndarray) -> np.ndarray:
    """A Slicer-ordered ``[k, j, i]`` array as NIfTI's ``[i, j, k]`` (a view)."""
    return _transposed(array)


def compose_label_map(
    masks: Mapping[str, np.ndarray], label_names: Mapping[str, int], *, shape: Sequence[int]
) -> np.ndarray:
    """One uint8/uint16 label map from binary masks named like the labels.

    Masks are painted in ascending label value, so where two overlap the higher value wins
    (the same rule every time, whatever order the segments have in Slicer).

    Raises:
        ActiveLabelError: for a mask whose name is not a label or whose shape differs.
    """
    unknown = sorted(set(masks) - set(label_names))
    if unknown:
        known = ", ".join(sorted(label_names, key=label_names.__getitem__))
        raise ActiveLabelError(f"segment {unknown[0]!r} is not one of the server's labels ({known}); rename it")
    dtype = np.uint8 if max(label_names.values(), default=0) < 256 else np.uint16
    label_map = np.zeros(tuple(shape), dtype=dtype)
    for spec in segment_specs({name: label_names[name] for name in masks}):
        mask = np.asarray(masks[spec.name])
        if mask.shape != label_map.shape:
            raise ActiveLabelError(f"segment {spec.name!r} has shape {mask.shape}, the image {label_map.shape}")
        label_map[mask > 0] = spec.value
    return label_map


def split_label_map(label_map: np.ndarray, label_names: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The binary mask of every label (empty for labels absent from the map)."""
    unexpected = sorted(set(np.unique(label_map).tolist()) - {0, *label_names.values()})
    if unexpected:
        raise ActiveLabelError(f"the label map holds values {unexpected} that name no label")
    return {spec.name: label_map == spec.value for spec in segment_specs(label_names)}


def _transposed(array: np.ndarray) -> np.ndarray:
    if array.ndim != 3:
        raise ActiveLabelError(f"a volume must be 3D, got shape {array.shape}")
    return array.transpose(2, 1, 0)


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))
