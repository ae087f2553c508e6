"""Label maps to DICOM SEG (made with highdicom) and DICOM SEG back to label maps.

A SEG holds one segment per label of the app, named after the label, with a coded category
and type (SNOMED CT where the label names a known structure, a private code otherwise),
the algorithm that made it when a model did, and per-frame references to the source
instances.  Reading accepts any binary or fractional SEG whose frames lie on its series'
slices (frames are placed by their plane positions, not by reference order), so SEGs made
elsewhere (dcmqi, Slicer, OHIF) read back too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from enum import Enum

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import UID

import activelabel
from activelabel.errors import ActiveLabelError
from activelabel.labelmap import LabelMap
from activelabel.pacs.geometry import GeometryMismatch, SeriesGeometry

logger = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
PRIVATE_SCHEME = "99ACTIVELABEL"
"""Coding scheme of label names that no standard code describes."""

ALGORITHM_NAME = "ActiveLabel segmentation"
MANUFACTURER = "ActiveLabel"


class SegError(ActiveLabelError, ValueError):
    """A DICOM SEG that cannot be read as a label map of this app; the message says why."""


class SegmentOrigin(str, Enum):
    """How a label came about: it decides the segments' algorithm type and identification."""

    MANUAL = "MANUAL"
    """Drawn by a person without a model's pre-segmentation."""
    SEMIAUTOMATIC = "SEMIAUTOMATIC"
    """A person corrected the model's pre-segmentation."""
    AUTOMATIC = "AUTOMATIC"
    """The model's output as it is."""


class Category(Enum):
    """Segmented property categories (SNOMED CT, DICOM CID 7150)."""

    ANATOMICAL_STRUCTURE = ("123037004", "Anatomical Structure")
    TISSUE = ("85756007", "Tissue")

    @property
    def code(self) -> Code:
        return Code(self.value[0], "SCT", self.value[1])


class Structure(Enum):
    """Segmented property types of known label names (SNOMED CT, DICOM CID 7166)."""

    LIVER = ("10200004", "Liver")
    SPLEEN = ("78961009", "Spleen")
    KIDNEY = ("64033007", "Kidney")
    KIDNEY_RIGHT = ("9846003", "Right kidney")
    KIDNEY_LEFT = ("18639004", "Left kidney")
    STOMACH = ("69695003", "Stomach")
    PANCREAS = ("15776009", "Pancreas")
    AORTA = ("15825003", "Aorta")
    HIPPOCAMPUS = ("5366008", "Hippocampus")

    @property
    def code(self) -> Code:
        return Code(self.value[0], "SCT", self.value[1])


STRUCTURE_NAMES: dict[str, Structure] = {
    **{s.name.lower(): s for s in Structure},
    "right_kidney": Structure.KIDNEY_RIGHT,
    "left_kidney": Structure.KIDNEY_LEFT,
}
"""Normalized label names -> known structures."""


def normalize_name(name: str) -> str:
    """Lower case, runs of other characters than letters and digits as one ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def segment_codes(name: str, value: int) -> tuple[Code, Code]:
    """(category, type) codes of the label ``name`` with ``value``."""
    structure = STRUCTURE_NAMES.get(normalize_name(name))
    if structure is not None:
        return Category.ANATOMICAL_STRUCTURE.code, structure.code
    return Category.TISSUE.code, Code(str(value), PRIVATE_SCHEME, name)


def segment_descriptions(
    labels: LabelMap, *, origin: SegmentOrigin, model_version: int | None = None
) -> list[hd.seg.SegmentDescription]:
    """One description per app label, numbered 1..n in label-value order."""
    algorithm = None
    if origin is not SegmentOrigin.MANUAL:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME,
            family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"),
            version=f"model {model_version}" if model_version is not None else activelabel.__version__,
        )
    descriptions = []
    for number, (name, value) in enumerate(zip(labels.names, labels.values, strict=True), start=1):
        category, kind = segment_codes(name, value)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues[origin.value],
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=f"{name} ({value})",
            )
        )
    return descriptions


def build_seg(
    label: sitk.Image,
    sources: Sequence[Dataset],
    *,
    labels: LabelMap,
    origin: SegmentOrigin,
    model_version: int | None = None,
    series_number: int = 300,
) -> hd.seg.Segmentation:
    """A binary DICOM SEG of the label map ``label`` over the source series ``sources``.

    Raises:
        GeometryMismatch: when ``label`` does not lie on the series' grid.
        SegError: when ``label`` holds values that are not the app's labels.
    """
    geometry = SeriesGeometry.from_datasets(sources)
    geometry.check_image(label)
    values = sitk.GetArrayFromImage(label)
    if not np.all(np.isin(values, sorted(labels.allowed_values))):
        unknown = sorted(set(np.unique(values).tolist()) - labels.allowed_values)
        raise SegError(f"the label holds values {unknown[:5]} that are not the app's labels")
    numbers = np.zeros(values.shape, dtype=np.uint8)
    for number, value in enumerate(labels.values, start=1):
        numbers[values == value] = number
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    ordered = [by_uid[uid] for uid in geometry.sop_uids]
    version = f"model {model_version}" if model_version is not None else "manual"
    seg = hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=numbers,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(labels, origin=origin, model_version=model_version),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=activelabel.__version__,
        device_serial_number="0",
        series_description=f"ActiveLabel {origin.value.lower()} ({version})",
        content_label="ACTIVELABEL",
        omit_empty_frames=bool(numbers.any()),
    )
    seg.SeriesDate, seg.SeriesTime = seg.ContentDate, seg.ContentTime  # the newest SEG of a series wins
    return seg


def referenced_series(seg: Dataset) -> list[str]:
    """The SeriesInstanceUIDs a SEG's ReferencedSeriesSequence names."""
    return [str(item.SeriesInstanceUID) for item in getattr(seg, "ReferencedSeriesSequence", [])]


def segment_values(seg: Dataset, labels: LabelMap) -> dict[int, int]:
    """Segment number -> app label value, matching segment labels (or type meanings) to label names.

    Raises:
        SegError: when no segment names one of the app's labels.
    """
    by_name = {normalize_name(name): value for name, value in labels.to_dict().items()}
    mapping: dict[int, int] = {}
    seen = []
    for segment in seg.SegmentSequence:
        names = [str(segment.SegmentLabel)]
        for item in getattr(segment, "SegmentedPropertyTypeCodeSequence", []):
            names.append(str(item.CodeMeaning))
        seen.append(names[0])
        value = next((by_name[normalize_name(n)] for n in names if normalize_name(n) in by_name), None)
        if value is None:
            logger.warning("SEG segment %r names no label of this app: ignored", names[0])
            continue
        mapping[int(segment.SegmentNumber)] = value
    if not mapping:
        raise SegError(f"none of the SEG's segments {seen} names one of the app's labels {list(labels.names)}")
    return mapping


def _plane(group: Dataset | None, shared: Dataset, keyword: str) -> Dataset:
    """A functional group macro item from the frame's group, else from the shared groups."""
    if group is not None and keyword in group:
        return group[keyword].value[0]
    if keyword in shared:
        return shared[keyword].value[0]
    raise SegError(f"the SEG has no {keyword}")


def seg_to_labelmap(seg: Dataset, geometry: SeriesGeometry, labels: LabelMap) -> np.ndarray:
    """The SEG as a label map (``[slice, row, column]``, uint16 label values) on the series' grid.

    Overlapping segments: the later segment wins.

    Raises:
        SegError: when the dataset is not a SEG of this series or names none of the app's labels.
        GeometryMismatch: when a frame does not lie on a slice of the series.
    """
    if str(getattr(seg, "SOPClassUID", "")) != SEG_SOP_CLASS:
        raise SegError("the file is not a DICOM Segmentation Storage instance")
    series = referenced_series(seg)
    if series and geometry.series_uid not in series:
        raise SegError(f"the SEG references series {series}, not {geometry.series_uid}")
    frame_of_reference = str(getattr(seg, "FrameOfReferenceUID", "") or "")
    if frame_of_reference and geometry.frame_of_reference_uid and frame_of_reference != geometry.frame_of_reference_uid:
        raise GeometryMismatch("the SEG's frame of reference differs from the series'")
    if (int(seg.Columns), int(seg.Rows)) != geometry.size[:2]:
        raise GeometryMismatch(
            f"the SEG's frames are {seg.Columns}x{seg.Rows}, the series' {geometry.size[0]}x{geometry.size[1]}"
        )
    values = segment_values(seg, labels)
    pixels = np.asarray(seg.pixel_array)
    frames = int(getattr(seg, "NumberOfFrames", 1) or 1)
    pixels = pixels.reshape(frames, int(seg.Rows), int(seg.Columns))
    if str(seg.SegmentationType) == "FRACTIONAL":
        pixels = pixels >= (float(seg.MaximumFractionalValue) / 2.0)
    shared = seg.SharedFunctionalGroupsSequence[0]
    per_frame = list(getattr(seg, "PerFrameFunctionalGroupsSequence", [])) or [None] * frames
    out = np.zeros((geometry.size[2], geometry.size[1], geometry.size[0]), dtype=np.uint16)
    placed = []
    for index, group in enumerate(per_frame):
        number = int(_plane(group, shared, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        position = _plane(group, shared, "PlanePositionSequence").ImagePositionPatient
        orientation = _plane(group, shared, "PlaneOrientationSequence").ImageOrientationPatient
        spacing = _plane(group, shared, "PixelMeasuresSequence").PixelSpacing
        slice_index = geometry.slice_index(position=position, orientation=orientation, pixel_spacing=spacing)
        placed.append((number, slice_index, index))
    for number, slice_index, index in sorted(placed):
        if number in values:
            out[slice_index][pixels[index] > 0] = values[number]
    return out


def seg_series_uid(seg: hd.seg.Segmentation | Dataset) -> UID:
    """The SEG's own SeriesInstanceUID."""
    return UID(str(seg.SeriesInstanceUID))
