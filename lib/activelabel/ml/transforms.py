"""Pre-processing per modality, shared by inference, scoring, training and the simulator.

Every pipeline takes dictionaries with an ``image`` path (and a ``label`` path where there
is one) and yields channel-first MetaTensors in RAS orientation on the preset's voxel
spacing.  Label maps are turned into channel indices (see :class:`LabelMap`) so that the
network's output channel ``i`` always means the ``i``-th label.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    SpatialPadd,
)

from activelabel.labelmap import NOT_ANNOTATED, LabelMap


class Modality(str, Enum):
    """Imaging modality; selects the intensity normalization and default spacing."""

    CT = "ct"
    MR = "mr"


class Normalization(str, Enum):
    """How image intensities are normalized before the network sees them."""

    WINDOW = "window"
    """A fixed intensity window mapped to [0, 1] (CT: Hounsfield units mean the same everywhere)."""
    PERCENTILE = "percentile"
    """Each volume's lower/upper percentiles mapped to [0, 1], clipped."""
    ZSCORE = "zscore"
    """Each volume to mean 0 and standard deviation 1 (nnU-Net's choice for MR)."""


@dataclass(frozen=True)
class Preset:
    """Intensity and geometry settings of one modality.

    Attributes:
        modality: CT or MR.
        spacing: target voxel spacing in mm, RAS order; ``None`` keeps each image's own.
        roi_size: patch size of training crops and sliding-window inference (voxels).
        window: CT intensity window in HU mapped to [0, 1].
        percentiles: lower/upper percentiles mapped to [0, 1] (percentile normalization).
        normalization: ``None`` is the modality's own: the window for CT, z-score for MR.
    """

    modality: Modality
    spacing: tuple[float, float, float] | None
    roi_size: tuple[int, int, int]
    window: tuple[float, float] = (-250.0, 350.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    normalization: Normalization | None = None

    @property
    def intensity(self) -> Normalization:
        """The normalization in force (the modality's own when none is set)."""
        if self.normalization is not None:
            return Normalization(self.normalization)
        return Normalization.WINDOW if self.modality is Modality.CT else Normalization.ZSCORE


PRESETS: dict[Modality, Preset] = {
    Modality.CT: Preset(modality=Modality.CT, spacing=(3.0, 3.0, 3.0), roi_size=(96, 96, 96)),
    Modality.MR: Preset(modality=Modality.MR, spacing=(1.0, 1.0, 1.0), roi_size=(48, 48, 48)),
}


def preset_for(modality: Modality | str) -> Preset:
    """The preset of a modality given by enum or name (``"ct"``, ``"mr"``)."""
    if isinstance(modality, Modality):
        return PRESETS[modality]
    try:
        return PRESETS[Modality(modality.lower())]
    except ValueError:
        choices = ", ".join(m.value for m in Modality)
        raise ValueError(f"unknown modality {modality!r}; choose one of: {choices}") from None


class MapArrayd(MapTransform):
    """Apply a NumPy function voxel-wise to tensors, keeping their metadata."""

    def __init__(
        self,
        keys: KeysCollection,
        *,
        func: Callable[[np.ndarray], np.ndarray],
        dtype: torch.dtype,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.func = func
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            mapped = torch.as_tensor(self.func(np.rint(array)), dtype=self.dtype)
            d[key] = MetaTensor(mapped, meta=value.meta) if isinstance(value, MetaTensor) else mapped
        return d


def label_values_to_channels(keys: KeysCollection, labels: LabelMap) -> MapArrayd:
    """Label values -> network channel indices (for training targets)."""
    return MapArrayd(keys, func=labels.to_channels, dtype=torch.uint8)


def channels_to_label_values(keys: KeysCollection, labels: LabelMap) -> MapArrayd:
    """Network channel indices (an argmax map) -> label values (for written labels)."""
    dtype = torch.uint8 if max(labels.values) < 256 else torch.int32
    return MapArrayd(keys, func=labels.to_values, dtype=dtype)


def _intensity(preset: Preset) -> MapTransform:
    if preset.intensity is Normalization.WINDOW:
        low, high = preset.window
        return ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    if preset.intensity is Normalization.ZSCORE:
        return NormalizeIntensityd(keys="image", channel_wise=True)
    low, high = preset.percentiles
    return ScaleIntensityRangePercentilesd(keys="image", lower=low, upper=high, b_min=0.0, b_max=1.0, clip=True)


def load_transforms(preset: Preset, *, labels: LabelMap | None = None) -> list[MapTransform]:
    """Deterministic loading: read, channel-first, RAS, resample, normalize.

    With ``labels`` the ``label`` key is loaded alongside and resampled with nearest
    neighbour, then mapped to channel indices.
    """
    keys: Sequence[str] = ("image", "label") if labels is not None else ("image",)
    transforms: list[MapTransform] = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if preset.spacing is not None:
        modes = ("bilinear", "nearest") if labels is not None else ("bilinear",)
        transforms.append(Spacingd(keys=keys, pixdim=preset.spacing, mode=modes))
    transforms.append(_intensity(preset))
    transforms.append(EnsureTyped(keys="image", dtype=torch.float32))
    if labels is not None:
        transforms.append(label_values_to_channels("label", labels))
    return transforms


def inference_transforms(preset: Preset) -> Compose:
    """Image-only pre-processing for inference and scoring (invertible)."""
    return Compose(load_transforms(preset))


def evaluation_transforms(preset: Preset, labels: LabelMap) -> Compose:
    """Image and label pre-processing for validation and the simulator's test split."""
    return Compose(load_transforms(preset, labels=labels))


class AnnotatedIndicesd(MapTransform):
    """Flat indices of annotated foreground and annotated background voxels, for patch centres.

    Patches are centred only on voxels someone annotated: a label voxel (foreground) or a
    background voxel (0).  Voxels a partial label leaves :data:`NOT_ANNOTATED` centre no
    patch; a fully annotated label gives MONAI's own foreground/background split.
    """

    FOREGROUND = "label_fg_indices"
    BACKGROUND = "label_bg_indices"

    def __init__(self, *, label_key: str = "label") -> None:
        super().__init__(keys=label_key)
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        label = d[self.label_key]
        flat = (label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label))[0].ravel()
        d[self.FOREGROUND] = np.flatnonzero((flat > 0) & (flat != NOT_ANNOTATED))
        d[self.BACKGROUND] = np.flatnonzero(flat == 0)
        return d


def augmentation_transforms(
    preset: Preset,
    *,
    samples_per_volume: int = 2,
    mirror_axes: Sequence[int] = (),
    foreground_share: float = 2.0 / 3.0,
    affine: bool = False,
) -> Compose:
    """Random patch sampling and augmentation after :func:`evaluation_transforms`.

    Args:
        preset: its ``roi_size`` is the patch size.
        samples_per_volume: patches per call (a list of that many dicts).
        mirror_axes: spatial axes flipped with probability 1/2 each.  None by default: flips
            confuse labels that differ by side (left and right organs).
        foreground_share: share of patches centred on a labeled voxel.
        affine: small random rotations (up to 15 degrees) and scalings (0.85-1.25), each patch
            with probability 0.2, as nnU-Net does (applied to the patch, so cheap).
    """
    keys = ("image", "label")
    transforms: list[MapTransform] = [
        SpatialPadd(keys=keys, spatial_size=preset.roi_size),
        AnnotatedIndicesd(label_key="label"),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=preset.roi_size,
            pos=foreground_share,
            neg=1.0 - foreground_share,
            num_samples=samples_per_volume,
            fg_indices_key=AnnotatedIndicesd.FOREGROUND,
            bg_indices_key=AnnotatedIndicesd.BACKGROUND,
            allow_smaller=True,
        ),
        DeleteItemsd(keys=(AnnotatedIndicesd.FOREGROUND, AnnotatedIndicesd.BACKGROUND)),
    ]
    if affine:
        angle = np.deg2rad(15.0)
        transforms.append(
            RandAffined(
                keys=keys,
                prob=0.2,
                rotate_range=(angle, angle, angle),
                scale_range=(0.15, 0.15, 0.15),
                mode=("bilinear", "nearest"),
                padding_mode="border",
            )
        )
    transforms += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in mirror_axes]
    # Intensity augmentation in nnU-Net's proportions; the noise is scaled to the normalized
    # range (z-scored MR has unit standard deviation, windowed CT spans [0, 1]).
    noise = 0.1 if preset.intensity is Normalization.ZSCORE else 0.03
    transforms += [
        RandGaussianNoised(keys="image", prob=0.1, std=noise),
        RandGaussianSmoothd(keys="image", prob=0.1, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),
        RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
        RandAdjustContrastd(keys="image", prob=0.15, gamma=(0.7, 1.5)),
    ]
    return Compose(transforms)
