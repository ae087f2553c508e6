"""NIfTI geometry <-> Slicer volume geometry, and label maps <-> named, coloured segments (NumPy only).

Conventions: NIfTI arrays (nibabel, the server) are indexed ``[i, j, k]`` and their affine maps
voxel indices to RAS millimetres.  Slicer's IJK-to-RAS matrix is the same matrix, but
``slicer.util.arrayFromVolume`` indexes ``[k, j, i]``.  Slicer stores the matrix as origin,
spacing and unit direction columns; :class:`VolumeGeometry` converts between the two.

One trap: Slicer reads NIfTI through ITK, which turns a left-handed grid (e.g. LAS, or any
sform-only file with a negative determinant) into a right-handed one by reversing the k axis.
Same voxels in space, different voxel order and matrix.  A label exported from Slicer must be
put back on the file's own grid (:func:`nifti_geometry`, :func:`reorient`) before upload, or
the server sees a different grid (and pre-segmentation agreement compares the wrong voxels).
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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


def nifti_geometry(path: str | Path) -> VolumeGeometry:
    """The grid a NIfTI-1 file declares, read from its header as nibabel does.

    The sform when its code is set, else the qform, else the voxel sizes alone.  Plain Python,
    because Slicer reads NIfTI through ITK, which may reorder a left-handed grid.

    Raises:
        ActiveLabelError: when the file is not a readable NIfTI-1 file.
    """
    raw = _header(Path(path))
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    if struct.unpack(f"{endian}i", raw[:4])[0] != 348 or raw[344:347] not in (b"n+1", b"ni1"):
        raise ActiveLabelError(f"{Path(path).name} is not a NIfTI-1 file")
    dims = struct.unpack(f"{endian}8h", raw[40:56])
    pixdim = struct.unpack(f"{endian}8f", raw[76:108])
    qform_code, sform_code = struct.unpack(f"{endian}2h", raw[252:256])
    affine = np.eye(4)
    if sform_code > 0:
        affine[:3] = np.asarray(struct.unpack(f"{endian}12f", raw[280:328]), dtype=float).reshape(3, 4)
    elif qform_code > 0:
        affine = _qform_affine(struct.unpack(f"{endian}6f", raw[256:280]), pixdim)
    else:
        affine[:3, :3] = np.diag(np.abs(pixdim[1:4]))
    if dims[0] < 3:
        raise ActiveLabelError(f"{Path(path).name} is not a 3D volume ({dims[0]} dimensions)")
    return VolumeGeometry.from_affine(affine, dims[1:4])


def reorient(array: np.ndarray, *, source: VolumeGeometry, target: VolumeGeometry) -> np.ndarray:
    """A Slicer-ordered ``[k, j, i]`` array on ``source`` re-indexed on ``target``, in NIfTI order.

    Both grids must hold the same voxel centres, with axes permuted or reversed (what ITK does
    to left-handed NIfTI grids); anything else would need resampling and is refused.
    """
    mapping = np.linalg.inv(source.ijk_to_ras) @ target.ijk_to_ras  # target index -> source index
    linear, offset = mapping[:3, :3], mapping[:3, 3]
    signs = np.round(linear)
    is_permutation = np.allclose(np.abs(signs).sum(axis=0), 1) and np.allclose(np.abs(signs).sum(axis=1), 1)
    if not (np.allclose(linear, signs, atol=1e-3) and is_permutation):
        raise ActiveLabelError("the segmentation's grid is not the image file's grid up to axis order; cannot export")
    axes = [int(np.argmax(np.abs(signs[:, axis]))) for axis in range(3)]
    result = np.transpose(to_nifti_order(array), axes)
    for axis, source_axis in enumerate(axes):
        reversed_axis = signs[source_axis, axis] < 0
        expected = source.shape[source_axis] - 1 if reversed_axis else 0
        if abs(offset[source_axis] - expected) > 1e-3:
            raise ActiveLabelError("the segmentation's grid is shifted from the image file's grid; cannot export")
        if reversed_axis:
            result = np.flip(result, axis=axis)
    return np.ascontiguousarray(result)


def _header(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"
        opener = gzip.open if compressed else open
        with opener(path, "rb") as handle:
            raw = handle.read(348)
    except OSError as error:
        raise ActiveLabelError(f"cannot read {path.name}: {error}") from None
    if len(raw) < 348:
        raise ActiveLabelError(f"{path.name} is not a NIfTI-1 file (header too short)")
    return raw


def _qform_affine(quatern: Sequence[float], pixdim: Sequence[float]) -> np.ndarray:
    """The qform matrix from NIfTI's quaternion (b, c, d), offsets and qfac (``pixdim[0]``)."""
    b, c, d, x, y, z = (float(value) for value in quatern)
    a = 1.0 - (b * b + c * c + d * d)
    if a < 1e-7:  # a 180-degree rotation: normalise (b, c, d), as the NIfTI reference library does
        norm = float(np.sqrt(b * b + c * c + d * d))
        a, b, c, d = 0.0, b / norm, c / norm, d / norm
    else:
        a = float(np.sqrt(a))
    rotation = np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([pixdim[1], pixdim[2], pixdim[3] * qfac])
    affine[:3, 3] = (x, y, z)
    return affine


def _transposed(array: np.ndarray) -> np.ndarray:
    if array.ndim != 3:
        raise ActiveLabelError(f"a volume must be 3D, got shape {array.shape}")
    return array.transpose(2, 1, 0)


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))
