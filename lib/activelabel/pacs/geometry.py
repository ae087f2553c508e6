"""The voxel grid of a DICOM image series, from its headers, and checks against it.

A series' grid is what a label (NIfTI) or a DICOM SEG must match before it is stored: the
same orientation, pixel spacing, rows and columns, and frames that fall on the series'
slice positions.  Coordinates are DICOM's LPS patient coordinates in mm, as SimpleITK uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from activelabel.errors import ActiveLabelError

DIRECTION_TOLERANCE = 1e-4
"""Largest difference of direction cosines that still counts as the same orientation."""

SPACING_TOLERANCE = 1e-3
"""Largest relative difference of spacings that still counts as the same spacing."""

POSITION_TOLERANCE = 0.1
"""Largest distance between positions, as a fraction of the voxel spacing, that still matches."""


class GeometryMismatch(ActiveLabelError, ValueError):
    """A label or SEG does not lie on its series' voxel grid; the message says how."""


@dataclass(frozen=True)
class SeriesGeometry:
    """A series' grid: slices sorted along the slice normal, as SimpleITK reads them.

    Attributes:
        series_uid: the SeriesInstanceUID.
        frame_of_reference_uid: the series' FrameOfReferenceUID ("" when absent).
        sop_uids: SOPInstanceUIDs in slice order (ascending along the normal).
        origin: position of the first voxel of the first slice.
        direction: 3x3, columns are the row direction (x), column direction (y) and normal (z).
        spacing: (x, y, z) voxel spacing in mm.
        size: (columns, rows, slices).
    """

    series_uid: str
    frame_of_reference_uid: str
    sop_uids: tuple[str, ...]
    origin: np.ndarray
    direction: np.ndarray
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]

    @classmethod
    def from_datasets(cls, datasets: Sequence[Dataset]) -> SeriesGeometry:
        """The grid of single-frame instances of one series (pixel data not needed).

        Raises:
            GeometryMismatch: for an empty list, mixed series, sizes or orientations, or uneven slices.
        """
        if not datasets:
            raise GeometryMismatch("the series has no instances")
        first = datasets[0]
        for ds in datasets:
            if ds.SeriesInstanceUID != first.SeriesInstanceUID:
                raise GeometryMismatch("the instances belong to more than one series")
            if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
                raise GeometryMismatch("the series' instances differ in rows or columns")
        orientation = _orientation(first.ImageOrientationPatient)
        for ds in datasets:
            if not np.allclose(_orientation(ds.ImageOrientationPatient), orientation, atol=DIRECTION_TOLERANCE):
                raise GeometryMismatch("the series' instances differ in orientation")
        row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
        normal = orientation[:, 2]
        ordered = sorted(datasets, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal))
        positions = np.asarray([ds.ImagePositionPatient for ds in ordered], dtype=float)
        if len(ordered) > 1:
            steps = np.diff(positions @ normal)
            slice_spacing = float(np.mean(steps))
            if slice_spacing <= 0 or np.max(np.abs(steps - slice_spacing)) > POSITION_TOLERANCE * slice_spacing:
                raise GeometryMismatch("the series' slices are not evenly spaced along their normal")
        else:
            slice_spacing = float(getattr(first, "SliceThickness", None) or 1.0)
        return cls(
            series_uid=str(first.SeriesInstanceUID),
            frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "") or ""),
            sop_uids=tuple(str(ds.SOPInstanceUID) for ds in ordered),
            origin=positions[0],
            direction=orientation,
            spacing=(column_spacing, row_spacing, slice_spacing),
            size=(int(first.Columns), int(first.Rows), len(ordered)),
        )

    def check_image(self, image: sitk.Image, *, what: str = "the label") -> None:
        """``image`` must have exactly this grid (size, spacing, orientation, origin).

        Raises:
            GeometryMismatch: naming the first property that differs.
        """
        if tuple(image.GetSize()) != self.size:
            raise GeometryMismatch(f"{what} has size {tuple(image.GetSize())}, the series {self.size}")
        spacing = np.asarray(image.GetSpacing(), dtype=float)
        if not np.allclose(spacing, self.spacing, rtol=SPACING_TOLERANCE, atol=0):
            raise GeometryMismatch(f"{what} has spacing {tuple(spacing)}, the series {self.spacing}")
        direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
        if not np.allclose(direction, self.direction, atol=DIRECTION_TOLERANCE):
            raise GeometryMismatch(f"{what}'s orientation differs from the series'")
        origin = np.asarray(image.GetOrigin(), dtype=float)
        if np.linalg.norm(origin - self.origin) > POSITION_TOLERANCE * min(self.spacing):
            raise GeometryMismatch(f"{what} has origin {tuple(origin)}, the series {tuple(self.origin)}")

    def slice_index(
        self, *, position: Sequence[float], orientation: Sequence[float], pixel_spacing: Sequence[float]
    ) -> int:
        """The index of the series slice a frame with this plane position lies on.

        Raises:
            GeometryMismatch: when the frame's orientation, spacing or in-plane offset differ,
                or it lies between or beyond the series' slices.
        """
        if not np.allclose(_orientation(orientation), self.direction, atol=DIRECTION_TOLERANCE):
            raise GeometryMismatch("a frame's orientation differs from the series'")
        row_spacing, column_spacing = (float(v) for v in pixel_spacing)
        if not np.allclose((column_spacing, row_spacing), self.spacing[:2], rtol=SPACING_TOLERANCE, atol=0):
            raise GeometryMismatch(
                f"a frame's pixel spacing ({row_spacing}, {column_spacing}) differs from the series' "
                f"({self.spacing[1]}, {self.spacing[0]})"
            )
        offset = np.linalg.inv(self.direction) @ (np.asarray(position, dtype=float) - self.origin)
        voxel = offset / np.asarray(self.spacing)
        index = round(float(voxel[2]))
        if np.max(np.abs(voxel[:2])) > POSITION_TOLERANCE or abs(voxel[2] - index) > POSITION_TOLERANCE:
            raise GeometryMismatch(f"a frame at {tuple(position)} does not lie on a slice of the series")
        if not 0 <= index < self.size[2]:
            raise GeometryMismatch(f"a frame at {tuple(position)} lies outside the series' slices")
        return index

    def to_image(self, array: np.ndarray) -> sitk.Image:
        """``array`` (``[slice, row, column]``) as a SimpleITK image on this grid."""
        image = sitk.GetImageFromArray(array)
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing(self.spacing)
        image.SetDirection(tuple(float(v) for v in self.direction.reshape(-1)))
        return image


def _orientation(values: Sequence[float]) -> np.ndarray:
    """3x3 direction matrix (row, column, normal as columns) from ImageOrientationPatient."""
    cosines = np.asarray(values, dtype=float)
    row, column = cosines[:3], cosines[3:]
    return np.stack([row, column, np.cross(row, column)], axis=1)
