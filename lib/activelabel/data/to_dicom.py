"""Write NIfTI volumes as DICOM series (one study and one series per volume).

The sample phantoms are NIfTI; a PACS holds DICOM.  Each volume becomes a CT (or MR) image
series of single-frame instances with the volume's geometry (positions, orientation,
spacing in DICOM's LPS patient coordinates), 16-bit pixels and a rescale that restores the
voxel values.  UIDs derive from the volume id, so converting again yields the same
instances (a PACS stores them once).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from activelabel.ml.transforms import Modality

UID_PREFIX = "1.2.826.0.1.3680043.10.1371."
"""Root under which converted volumes' UIDs are generated (deterministically, from their ids)."""

INT16_MIN, INT16_MAX = -32768, 32767


class ImageStorage(str, Enum):
    """SOP classes of the written instances, per modality."""

    CT = "1.2.840.10008.5.1.4.1.1.2"
    MR = "1.2.840.10008.5.1.4.1.1.4"


@dataclass(frozen=True)
class ConvertedSeries:
    """One written series: its volume id, UIDs, folder and instance count."""

    image_id: str
    study_uid: str
    series_uid: str
    folder: Path
    instances: int


@dataclass(frozen=True)
class Rescale:
    """Stored value -> voxel value: ``value = stored * slope + intercept``."""

    slope: float
    intercept: float


def rescale_for(values: np.ndarray) -> Rescale:
    """Identity for integer values that fit int16; otherwise a linear map onto the int16 range."""
    low, high = float(values.min()), float(values.max())
    if np.allclose(values, np.round(values)) and low >= INT16_MIN and high <= INT16_MAX:
        return Rescale(1.0, 0.0)
    slope = (high - low) / (INT16_MAX - INT16_MIN) if high > low else 1.0
    return Rescale(slope, low - INT16_MIN * slope)


def _uid(*parts: str) -> str:
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=list(parts))


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM DS)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.8g}"


def slice_datasets(
    image: sitk.Image, *, image_id: str, modality: Modality, series_description: str = ""
) -> list[Dataset]:
    """The DICOM instances (with pixel data) of one volume, in slice order."""
    array = sitk.GetArrayFromImage(image).astype(np.float64)  # [z, y, x]
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=float)
    spacing_x, spacing_y, spacing_z = (float(s) for s in image.GetSpacing())
    rescale = rescale_for(array)
    stored = np.clip(np.round((array - rescale.intercept) / rescale.slope), INT16_MIN, INT16_MAX).astype(np.int16)
    storage = ImageStorage[modality.name]
    study_uid, series_uid, frame_uid = (_uid(image_id, kind) for kind in ("study", "series", "frame"))
    today = datetime.date.today().strftime("%Y%m%d")
    orientation = [*direction[:, 0], *direction[:, 1]]
    datasets = []
    for k in range(stored.shape[0]):
        position = origin + k * spacing_z * direction[:, 2]
        sop_uid = _uid(image_id, "instance", str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = storage.value
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.SOPClassUID, ds.SOPInstanceUID = storage.value, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientID, ds.PatientName = image_id, f"Phantom^{image_id}"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.StudyDescription = f"ActiveLabel sample {image_id}"
        ds.SeriesDescription = series_description or f"{modality.name} phantom {image_id}"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality.name, 1, k + 1
        ds.Manufacturer = "ActiveLabel"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.PixelSpacing = [_ds(spacing_y), _ds(spacing_x)]
        ds.SliceThickness = _ds(spacing_z)
        ds.SpacingBetweenSlices = _ds(spacing_z)
        ds.SliceLocation = _ds(float(position @ direction[:, 2]))
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = _ds(rescale.slope), _ds(rescale.intercept)
        if modality is Modality.CT:
            ds.RescaleType, ds.KVP = "HU", ""
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "3D"
            ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "", "", ""
        ds.PixelData = stored[k].tobytes()
        datasets.append(ds)
    return datasets


def volume_to_series(image_path: Path, dest: Path, *, image_id: str, modality: Modality) -> ConvertedSeries:
    """Write the volume at ``image_path`` as a series of files ``dest/<image_id>/NNNN.dcm``."""
    datasets = slice_datasets(sitk.ReadImage(str(image_path)), image_id=image_id, modality=modality)
    folder = dest / image_id
    folder.mkdir(parents=True, exist_ok=True)
    for index, ds in enumerate(datasets):
        ds.save_as(str(folder / f"{index:04d}.dcm"), write_like_original=False)
    first = datasets[0]
    return ConvertedSeries(image_id, first.StudyInstanceUID, first.SeriesInstanceUID, folder, len(datasets))


def datastore_to_dicom(src: Path, dest: Path, *, modality: Modality, count: int | None = None) -> list[ConvertedSeries]:
    """Convert the first ``count`` (default: every) NIfTI image of the datastore ``src`` into ``dest``."""
    images = sorted(p for p in src.iterdir() if p.is_file() and p.name.endswith((".nii.gz", ".nii")))
    if not images:
        raise FileNotFoundError(f"no NIfTI images (*.nii.gz, *.nii) in {src}")
    converted = []
    for path in images[:count]:
        image_id = path.name.removesuffix(".gz").removesuffix(".nii")
        converted.append(volume_to_series(path, dest, image_id=image_id, modality=modality))
    return converted
