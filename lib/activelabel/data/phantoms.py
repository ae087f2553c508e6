"""Deterministic CT-like and MR-like phantoms with ground-truth label maps.

The phantoms give the project a default datastore (``make serve``) and the tests and
simulator a ground truth that needs no download.  They are built from randomly deformed
ellipsoids in world millimetres so that anatomy keeps its physical size whatever the grid,
and every case is a pure function of ``(modality, index, seed)``.

Arrays are indexed ``[x, y, z]`` and the affine maps voxels to NIfTI RAS+ world
coordinates: +x towards the patient's Right, +y Anterior, +z Superior.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from activelabel.data.layout import DatastoreError, DatastoreSummary, case_id, check_writable, write_datastore
from activelabel.ml.transforms import Modality

PHANTOM_LABELS: dict[Modality, dict[str, int]] = {
    Modality.CT: {"liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4},
    Modality.MR: {"anterior": 1, "posterior": 2},
}
"""Label name -> value of each modality's phantoms (0 is background)."""

DEFAULT_SHAPES: dict[Modality, tuple[int, int, int]] = {Modality.CT: (96, 96, 64), Modality.MR: (48, 56, 48)}
"""Nominal grid of each modality; cases vary around it unless a shape is given."""

SPACINGS: dict[Modality, tuple[float, float, float]] = {Modality.CT: (3.0, 3.0, 4.0), Modality.MR: (1.0, 1.0, 1.0)}
"""Voxel spacing in mm (x, y, z) of each modality."""

AIR_HU = -1000
"""CT value of every voxel outside the body."""

_MODALITY_CODES: dict[Modality, int] = {Modality.CT: 1, Modality.MR: 2}
_SHAPE_JITTER: dict[Modality, tuple[int, int, int]] = {Modality.CT: (8, 8, 6), Modality.MR: (4, 4, 4)}
_CT_NOISE_HU = 15.0
_MR_NOISE = 4.0


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic volume.

    Attributes:
        image: intensities indexed ``[x, y, z]`` (int16 HU for CT, uint8 for MR).
        label: uint8 label map on the same grid, values from :data:`PHANTOM_LABELS`.
        affine: 4x4 voxel-to-RAS+ world matrix in mm, as NIfTI stores it.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class _Grid:
    """A voxel grid centred on the world origin with open-mesh world coordinates in mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def origin(self) -> np.ndarray:
        """World position of voxel (0, 0, 0)."""
        return -(np.asarray(self.shape, dtype=float) - 1.0) / 2.0 * np.asarray(self.spacing)

    @property
    def affine(self) -> np.ndarray:
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine

    @property
    def extent(self) -> np.ndarray:
        """Field of view in mm per axis."""
        return np.asarray(self.shape, dtype=float) * np.asarray(self.spacing)

    def axis(self, dim: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """World coordinates of voxel centres ``lo:hi`` along ``dim``, shaped to broadcast in 3D."""
        hi = self.shape[dim] if hi is None else hi
        coords = self.origin[dim] + np.arange(lo, hi) * self.spacing[dim]
        view = [1, 1, 1]
        view[dim] = coords.size
        return coords.reshape(view)

    def box(self, center: np.ndarray, reach: float) -> tuple[slice, slice, slice]:
        """Voxel slices covering a cube of half-size ``reach`` mm around ``center``, clipped to the grid."""
        lo = np.floor((center - reach - self.origin) / self.spacing).astype(int)
        hi = np.ceil((center + reach - self.origin) / self.spacing).astype(int) + 1
        lo = np.clip(lo, 0, self.shape)
        hi = np.clip(hi, 0, self.shape)
        return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


@dataclass(frozen=True)
class _Organ:
    """Placement of one labelled structure relative to its container (body or head).

    Attributes:
        name: label name.
        center: centre as fractions of the container's semi-axes (+x Right, +y Anterior, +z Superior).
        radii: nominal ellipsoid semi-axes in mm.
        intensity: mean intensity (HU for CT).
        texture: amplitude of the organ's smooth texture.
    """

    name: str
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    intensity: float
    texture: float


# Priority order: earlier organs keep contested voxels.
_CT_ORGANS: tuple[_Organ, ...] = (
    _Organ("kidney_right", (0.40, -0.50, -0.12), (24.0, 28.0, 48.0), 150.0, 6.0),
    _Organ("kidney_left", (-0.40, -0.50, -0.04), (24.0, 28.0, 48.0), 150.0, 6.0),
    _Organ("spleen", (-0.60, -0.18, 0.25), (28.0, 42.0, 45.0), 50.0, 4.0),
    _Organ("liver", (0.42, 0.05, 0.30), (65.0, 75.0, 60.0), 60.0, 4.0),
)


def generate_phantom(
    *,
    modality: Modality | str,
    index: int,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> Phantom:
    """Build case ``index`` of a phantom series; identical inputs give identical arrays.

    Args:
        modality: CT (abdomen with liver, spleen and kidneys) or MR (head with a
            hippocampus-like pair of adjacent structures).
        index: case number; shape, positions and deformations vary with it.
        seed: series seed, so that different series can be drawn.
        shape: fixed grid shape; by default it varies per case around :data:`DEFAULT_SHAPES`.
        spacing: voxel spacing in mm (x, y, z); by default the modality's :data:`SPACINGS`.
            Anatomy keeps its size in mm, so a finer spacing needs a larger ``shape``.

    Raises:
        ValueError: for a negative index or seed, a non-positive spacing, or a grid too small
            to hold the anatomy.
    """
    modality = Modality(modality)
    if index < 0:
        raise ValueError(f"phantom index must be >= 0, got {index}")
    if seed < 0:
        raise ValueError(f"phantom seed must be >= 0, got {seed}")
    spacing = SPACINGS[modality] if spacing is None else spacing
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"phantom spacing must be three positive sizes in mm, got {spacing}")
    rng = np.random.default_rng([seed, index, _MODALITY_CODES[modality]])
    sx, sy, sz = (float(s) for s in spacing)
    grid = _Grid(shape=_case_shape(rng, modality, shape), spacing=(sx, sy, sz))
    if modality is Modality.CT:
        return _generate_ct(rng, grid)
    return _generate_mr(rng, grid)


def generate_datastore(
    dest: Path,
    *,
    modality: Modality | str,
    count: int,
    seed: int = 0,
    labeled: int = 0,
    overwrite: bool = False,
) -> DatastoreSummary:
    """Write ``count`` phantoms of one modality as a datastore (ids ``<modality>_000`` ...).

    All arguments and existing files are checked before the first volume is generated, so a
    refused call leaves ``dest`` untouched.

    Raises:
        DatastoreError: ``count < 1``, ``labeled`` outside ``0..count``, a negative seed, or
            existing images / other labels in ``dest`` without ``overwrite``.
    """
    modality = Modality(modality)
    if count < 1:
        raise DatastoreError(f"count must be >= 1, got {count}")
    if not 0 <= labeled <= count:
        raise DatastoreError(f"labeled must be between 0 and count ({count}), got {labeled}")
    if seed < 0:
        raise DatastoreError(f"seed must be >= 0, got {seed}")
    labels = PHANTOM_LABELS[modality]
    ids = [case_id(modality.value, index) for index in range(count)]
    check_writable(dest, ids, labels=labels, overwrite=overwrite)
    cases = ((case, generate_phantom(modality=modality, index=index, seed=seed)) for index, case in enumerate(ids))
    return write_datastore(dest, cases, labels=labels, labeled=labeled, overwrite=overwrite)


def _case_shape(
    rng: np.random.Generator, modality: Modality, shape: tuple[int, int, int] | None
) -> tuple[int, int, int]:
    """The requested shape, or the nominal one jittered per case (drawn either way for stable streams)."""
    jitter = rng.integers(-np.asarray(_SHAPE_JITTER[modality]), np.asarray(_SHAPE_JITTER[modality]) + 1)
    if shape is None:
        nx, ny, nz = (int(n) for n in np.asarray(DEFAULT_SHAPES[modality]) + jitter)
        return (nx, ny, nz)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"phantom shape must be three sizes >= 16 voxels, got {shape}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], *, cells: int) -> np.ndarray:
    """Zero-mean, unit-std noise that varies over about ``cells`` voxels (trilinear upsampling)."""
    coarse_shape = tuple(max(2, -(-n // cells) + 1) for n in shape)
    coarse = rng.standard_normal(coarse_shape)
    factors = [n / c for n, c in zip(shape, coarse_shape, strict=True)]
    field = ndimage.zoom(coarse, factors, order=1, mode="nearest", grid_mode=True)[: shape[0], : shape[1], : shape[2]]
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _deformed_ellipsoid(
    grid: _Grid,
    rng: np.random.Generator,
    *,
    center: np.ndarray,
    radii: np.ndarray,
    angle: float,
    wobble: float,
) -> np.ndarray:
    """Boolean mask of an ellipsoid rotated about z whose surface is smoothly, randomly displaced.

    The radial scale is ``1 + sum(c_k * m_k(u))`` over monomials of degree 1 and 2 of the unit
    direction ``u``: a low-frequency deformation that keeps the shape organ-like and closed.
    """
    coefficients = rng.uniform(-wobble, wobble, size=8)
    reach = float(radii.max()) * (1.0 + float(np.abs(coefficients).sum()))
    box = grid.box(center, reach)
    dx = grid.axis(0, box[0].start, box[0].stop) - center[0]
    dy = grid.axis(1, box[1].start, box[1].stop) - center[1]
    dz = grid.axis(2, box[2].start, box[2].stop) - center[2]
    cos, sin = np.cos(angle), np.sin(angle)
    a = (cos * dx + sin * dy) / radii[0]
    b = (cos * dy - sin * dx) / radii[1]
    c = dz / radii[2]
    distance = np.sqrt(a * a + b * b + c * c) + 1e-9
    ua, ub, uc = a / distance, b / distance, c / distance
    monomials = (ua, ub, uc, ua * ub, ub * uc, ua * uc, ua * ua - ub * ub, uc * uc - 1.0 / 3.0)
    scale = 1.0 + sum(k * m for k, m in zip(coefficients, monomials, strict=True))
    mask = np.zeros(grid.shape, dtype=bool)
    mask[box] = distance <= scale
    return mask


def _place_organs(
    grid: _Grid,
    rng: np.random.Generator,
    *,
    organs: tuple[_Organ, ...],
    labels: dict[str, int],
    container_center: np.ndarray,
    container_radii: np.ndarray,
    allowed: np.ndarray,
) -> np.ndarray:
    """Label map of ``organs`` (priority to earlier ones), each clipped to ``allowed``."""
    label = np.zeros(grid.shape, dtype=np.uint8)
    for organ in organs:
        jitter = rng.uniform(-0.05, 0.05, size=3)
        center = container_center + (np.asarray(organ.center) + jitter) * container_radii
        radii = np.asarray(organ.radii) * rng.uniform(0.88, 1.12, size=3)
        mask = _deformed_ellipsoid(
            grid, rng, center=center, radii=radii, angle=float(rng.uniform(-0.25, 0.25)), wobble=0.08
        )
        label[mask & allowed & (label == 0)] = labels[organ.name]
    return label


def _ellipse(grid: _Grid, *, center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean mask of an elliptic cylinder along z (broadcast to the full grid)."""
    x = (grid.axis(0) - center[0]) / radii[0]
    y = (grid.axis(1) - center[1]) / radii[1]
    return np.broadcast_to((x * x + y * y) <= 1.0, grid.shape)


def _generate_ct(rng: np.random.Generator, grid: _Grid) -> Phantom:
    """Abdominal CT: air, a body with a fat rim, four textured organs, Gaussian noise (HU, int16)."""
    half = grid.extent / 2.0
    center = np.array([rng.uniform(-0.04, 0.04) * half[0] * 2, rng.uniform(-0.04, 0.04) * half[1] * 2, 0.0])
    radii = np.array([half[0] * rng.uniform(0.80, 0.88), half[1] * rng.uniform(0.62, 0.74), half[2]])
    fat = rng.uniform(5.0, 9.0)
    body = _ellipse(grid, center=center, radii=radii)
    inner = _ellipse(grid, center=center, radii=radii - np.array([fat, fat, 0.0]))
    label = _place_organs(
        grid,
        rng,
        organs=_CT_ORGANS,
        labels=PHANTOM_LABELS[Modality.CT],
        container_center=center,
        container_radii=radii,
        allowed=inner,
    )
    texture = _smooth_noise(rng, grid.shape, cells=6)
    image = np.full(grid.shape, float(AIR_HU))
    image[body] = -100.0
    image[inner] = 40.0 + 6.0 * texture[inner]
    for organ in _CT_ORGANS:
        mask = label == PHANTOM_LABELS[Modality.CT][organ.name]
        image[mask] = organ.intensity + organ.texture * texture[mask]
    image[body] += rng.normal(0.0, _CT_NOISE_HU, size=int(body.sum()))
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return Phantom(image=image, label=label, affine=grid.affine)


def _generate_mr(rng: np.random.Generator, grid: _Grid) -> Phantom:
    """T1-like head: scalp, skull, brain with bias field, two adjacent darker structures, Rician noise."""
    half = grid.extent / 2.0
    center = rng.uniform(-2.0, 2.0, size=3)
    radii = half * rng.uniform(0.86, 0.94, size=3)
    scalp, skull = rng.uniform(2.0, 3.0), rng.uniform(2.0, 3.0)
    head = _ellipsoid(grid, center=center, radii=radii)
    inside_scalp = _ellipsoid(grid, center=center, radii=radii - scalp)
    brain = _ellipsoid(grid, center=center, radii=radii - scalp - skull)
    label = _place_pair(grid, rng, head_center=center, head_radii=radii, brain=brain)
    bias = 1.0 + 0.12 * _smooth_noise(rng, grid.shape, cells=16)
    texture = _smooth_noise(rng, grid.shape, cells=4)
    clean = np.zeros(grid.shape)
    clean[head] = 110.0
    clean[inside_scalp] = 20.0
    clean[brain] = 80.0 + 3.0 * texture[brain]
    clean[label == PHANTOM_LABELS[Modality.MR]["anterior"]] = 62.0
    clean[label == PHANTOM_LABELS[Modality.MR]["posterior"]] = 56.0
    clean *= bias
    real = clean + rng.normal(0.0, _MR_NOISE, size=grid.shape)
    imaginary = rng.normal(0.0, _MR_NOISE, size=grid.shape)
    image = np.clip(np.rint(np.hypot(real, imaginary)), 0, 255).astype(np.uint8)
    return Phantom(image=image, label=label, affine=grid.affine)


def _ellipsoid(grid: _Grid, *, center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean mask of an axis-aligned ellipsoid."""
    x = (grid.axis(0) - center[0]) / radii[0]
    y = (grid.axis(1) - center[1]) / radii[1]
    z = (grid.axis(2) - center[2]) / radii[2]
    return (x * x + y * y + z * z) <= 1.0


def _place_pair(
    grid: _Grid, rng: np.random.Generator, *, head_center: np.ndarray, head_radii: np.ndarray, brain: np.ndarray
) -> np.ndarray:
    """Label map of the anterior and posterior structures, touching along the rotated y axis."""
    labels = PHANTOM_LABELS[Modality.MR]
    side = rng.choice([-1.0, 1.0])
    anterior_radii = np.array([4.5, 6.5, 4.0]) * rng.uniform(0.9, 1.1, size=3)
    posterior_radii = np.array([3.5, 7.5, 3.5]) * rng.uniform(0.9, 1.1, size=3)
    angle = float(rng.uniform(-0.3, 0.3))
    anterior_center = head_center + np.array(
        [side * rng.uniform(0.15, 0.3) * head_radii[0], rng.uniform(0.05, 0.2) * head_radii[1], -0.1 * head_radii[2]]
    )
    step = 0.8 * (anterior_radii[1] + posterior_radii[1])
    posterior_center = anterior_center - step * np.array([-np.sin(angle), np.cos(angle), 0.0])
    label = np.zeros(grid.shape, dtype=np.uint8)
    for name, center, radii in (
        ("anterior", anterior_center, anterior_radii),
        ("posterior", posterior_center, posterior_radii),
    ):
        mask = _deformed_ellipsoid(grid, rng, center=center, radii=radii, angle=angle, wobble=0.06)
        label[mask & brain & (label == 0)] = labels[name]
    return label
