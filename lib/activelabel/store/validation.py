"""Checks on uploaded images and label maps before anything is stored.

Each check raises :class:`InputRejected` with an HTTP status and one readable sentence, so
the server can answer 4xx and the datastore stays untouched.  Geometry is read with
SimpleITK, which understands every format MONAI Label stores (NIfTI, NRRD, MHA, ...);
NIfTI voxel values are read with nibabel, as training reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from activelabel.errors import ActiveLabelError
from activelabel.labelmap import NOT_ANNOTATED, LabelMap, annotated_slices

# Geometry tolerances: spacing/direction are relative, origin is in fractions of a voxel.
_SPACING_RTOL = 1e-4
_DIRECTION_ATOL = 1e-4
_ORIGIN_VOXELS = 1e-2

ACCEPTED_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
"""File types an upload may have: single-file volume formats that MONAI Label and SimpleITK read."""

MAX_VOXELS = 2048**3
"""Largest volume accepted (a header can claim any size; the data is read only after this check)."""


class InputRejected(ActiveLabelError, ValueError):
    """An upload that cannot be stored; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of an image in LPS world coordinates, as ITK reports it."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int = 1
    pixel_type: str = ""


def read_geometry(path: str | Path, *, what: str = "image") -> Geometry:
    """Header-only read of a volume's grid.

    Raises:
        InputRejected: 415 when the file is not a readable image.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputRejected(
            f"the {what} is not a readable medical image (send NIfTI .nii/.nii.gz, NRRD or MHA)", status=415
        ) from None
    return Geometry(
        size=tuple(reader.GetSize()),
        spacing=tuple(reader.GetSpacing()),
        origin=tuple(reader.GetOrigin()),
        direction=tuple(reader.GetDirection()),
        components=int(reader.GetNumberOfComponents()),
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
    )


def check_file_type(path: str | Path, *, what: str) -> None:
    """An upload's file name must end in a volume format's suffix (it becomes the stored file's type)."""
    name = Path(path).name.lower()
    if not name.endswith(ACCEPTED_SUFFIXES):
        suffix = "".join(Path(name).suffixes) or "none"
        raise InputRejected(
            f"the {what} is not a readable medical image: file type {suffix!r} is not accepted "
            "(send NIfTI .nii/.nii.gz, NRRD or MHA)",
            status=415,
        )


def check_volume(geometry: Geometry, *, what: str) -> None:
    """A volume must be 3D, non-empty, of bounded size, one real value per voxel, with positive spacing."""
    if len(geometry.size) != 3:
        raise InputRejected(f"the {what} must be a 3D volume, got {len(geometry.size)} dimensions")
    if min(geometry.size) < 1:
        raise InputRejected(f"the {what} is empty (size {geometry.size})")
    if int(np.prod(geometry.size, dtype=np.int64)) > MAX_VOXELS:
        raise InputRejected(f"the {what} has {geometry.size} voxels, more than the {MAX_VOXELS:,} accepted")
    if "complex" in geometry.pixel_type:
        raise InputRejected(f"the {what} holds complex values; send real-valued voxels")
    if geometry.components != 1:
        raise InputRejected(f"the {what} must have a single component per voxel, got {geometry.components}")
    if not all(np.isfinite(s) and s > 0 for s in geometry.spacing):
        raise InputRejected(f"the {what} spacing {geometry.spacing} must be positive")


def check_image(path: str | Path) -> Geometry:
    """An uploaded image must be a readable 3D volume of finite values."""
    geometry = read_geometry(path, what="uploaded file")
    check_volume(geometry, what="image")
    if "float" in geometry.pixel_type and not np.all(np.isfinite(_read_values(path, what="image"))):
        raise InputRejected("the image contains NaN or infinite values")
    return geometry


def check_same_grid(label: Geometry, image: Geometry) -> None:
    """A label must lie on exactly its image's voxel grid."""
    if label.size != image.size:
        raise InputRejected(f"label shape {label.size} differs from image shape {image.size}")
    spacing_label, spacing_image = np.asarray(label.spacing), np.asarray(image.spacing)
    if not np.allclose(spacing_label, spacing_image, rtol=_SPACING_RTOL, atol=0.0):
        raise InputRejected(f"label spacing {label.spacing} differs from image spacing {image.spacing}")
    if not np.allclose(label.direction, image.direction, atol=_DIRECTION_ATOL):
        raise InputRejected("label orientation (direction cosines) differs from the image's")
    tolerance = _ORIGIN_VOXELS * float(spacing_image.min())
    if not np.allclose(label.origin, image.origin, atol=tolerance, rtol=0.0):
        raise InputRejected(f"label origin {label.origin} differs from image origin {image.origin}")


def check_label_values(values: np.ndarray, labels: LabelMap) -> None:
    """Every voxel must hold an integer among background and the app's label values."""
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise InputRejected("label contains NaN or infinite values")
        if not np.array_equal(values, np.round(values)):
            raise InputRejected("label values must be integers, got fractional values")
    elif values.dtype.kind not in "iub":
        raise InputRejected(f"label voxels must be integers, got type {values.dtype}")
    present = {int(v) for v in np.unique(values)}
    unknown = sorted(present - labels.allowed_values)
    if unknown:
        known = ", ".join(f"{v} {n}" for n, v in labels.to_dict().items())
        raise InputRejected(f"label values {unknown} are not among the app's labels (0 background, {known})")


@dataclass(frozen=True)
class LabelCoverage:
    """Which slices of a label someone annotated (see :data:`~activelabel.labelmap.NOT_ANNOTATED`).

    Attributes:
        partial: some voxels are not annotated.
        axis: the voxel axis (0, 1, 2 in the file's i, j, k order) closest to the patient's
            superior-inferior axis: slices across it are axial.
        slices: slices along ``axis``.
        annotated_slices: indices of the slices with at least one annotated voxel.
    """

    partial: bool
    axis: int
    slices: int
    annotated_slices: tuple[int, ...]

    def to_info(self) -> dict[str, Any]:
        """The fields stored with a label (its info and version details); the slice list only when partial."""
        info: dict[str, Any] = {"partial": self.partial, "slice_axis": self.axis, "slices": self.slices}
        if self.partial:
            info["annotated_slices"] = list(self.annotated_slices)
        return info


def axial_axis(geometry: Geometry) -> int:
    """The voxel axis whose direction is closest to the world's superior-inferior axis."""
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(len(geometry.size), len(geometry.size))
    return int(np.argmax(np.abs(direction[2, :3])))


def check_label(label_path: str | Path, image_path: str | Path, labels: LabelMap) -> LabelCoverage:
    """A label upload must be readable, on its image's grid, hold only known values and annotate something.

    Returns:
        Which axial slices it annotates (all of them unless it is a partial label).
    """
    label_geometry = read_geometry(label_path, what="label")
    check_volume(label_geometry, what="label")
    check_same_grid(label_geometry, read_geometry(image_path, what="stored image"))
    values = _read_values(label_path)
    if values.ndim != 3:
        raise InputRejected("the label must have a single component per voxel")
    check_label_values(values, labels)
    axis = axial_axis(label_geometry)
    annotated = annotated_slices(values, axis=axis)
    if not annotated:
        raise InputRejected(f"the label annotates no voxel: every voxel is {NOT_ANNOTATED} (not annotated)")
    return LabelCoverage(bool(np.any(values == NOT_ANNOTATED)), axis, int(values.shape[axis]), tuple(annotated))


def _read_values(path: str | Path, *, what: str = "label") -> np.ndarray:
    """Voxel values as training will see them (nibabel for NIfTI, as MONAI reads it), in (i, j, k) order."""
    name = str(path).lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            return np.asanyarray(nib.load(str(path)).dataobj)
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose()
    except (RuntimeError, OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError):
        raise InputRejected(f"the {what} file is truncated or corrupt", status=415) from None
