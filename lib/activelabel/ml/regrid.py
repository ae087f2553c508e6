"""Inverting the pre-processing geometry onto an image's own voxel grid, one slab at a time.

Pre-processing (:mod:`activelabel.ml.transforms`) re-orients an image to RAS and resamples it
to the preset spacing; results computed on that *model grid* (a label, an uncertainty map)
go back onto the grid of the stored file.  MONAI's ``Invertd`` builds a float64 sampling
grid of the whole target volume (24 bytes per voxel) and returns float64 and float32 copies
of the result: about 3.5 GiB for a 512x512x300 CT.

:func:`restore_to_image_grid` performs the same computation as ``Invertd`` — MONAI's
normalized sampling matrix, torch's ``affine_grid`` base grid and ``grid_sample`` in the
dtype recorded by ``Spacingd`` — over slabs of target slices, writing each slab into the
output in the requested dtype (uint8 for labels).  Only the output is full-size; a slab
holds :data:`SLAB_VOXELS` target voxels.  Each output voxel depends only on its own grid
coordinate, so the result equals ``Invertd``'s (tests compare them voxel for voxel).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import AFFINE_TOL
from monai.networks.utils import to_norm_affine
from monai.transforms import MapTransform, Orientation
from monai.transforms.utils import resolves_modes
from monai.utils import TraceKeys, get_torch_dtype_from_string

SLAB_VOXELS = 1 << 21
"""Target voxels sampled at once: a float64 grid slab of 64 MiB (with its homogeneous base grid)."""

RAS_LABELS: tuple[tuple[str, str], ...] = (("L", "R"), ("P", "A"), ("I", "S"))
"""Axis-code labels of the RAS re-orientation in :func:`activelabel.ml.transforms.load_transforms`."""

_RESAMPLE = "SpatialResample"
_ORIENTATION = "Orientation"


def _linspace_from_neg_one(steps: int, *, align_corners: bool, dtype: torch.dtype) -> torch.Tensor:
    """Normalized voxel-centre coordinates along one axis, as ``torch.nn.functional.affine_grid`` makes them."""
    if steps <= 1:
        return torch.zeros(1, dtype=dtype)
    values = torch.linspace(-1, 1, steps, dtype=dtype)
    return values if align_corners else values * (steps - 1) / steps


def _base_grid(size: Sequence[int], start: int, stop: int, *, align_corners: bool, dtype: torch.dtype) -> torch.Tensor:
    """Homogeneous base grid ``(1, stop - start, H, W, 4)`` of output slices ``start:stop`` (first spatial axis)."""
    depth, height, width = size
    base = torch.empty((1, stop - start, height, width, 4), dtype=dtype)
    base[..., 0] = _linspace_from_neg_one(width, align_corners=align_corners, dtype=dtype)
    base[..., 1] = _linspace_from_neg_one(height, align_corners=align_corners, dtype=dtype)[:, None]
    base[..., 2] = _linspace_from_neg_one(depth, align_corners=align_corners, dtype=dtype)[start:stop, None, None]
    base[..., 3] = 1
    return base


def _invert_resample(
    value: torch.Tensor, *, affine: torch.Tensor, operation: Mapping[str, Any], nearest: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo one ``SpatialResample`` (``Spacingd``) of a ``(C, *spatial)`` tensor whose grid has ``affine``.

    Returns the ``(C, *orig_size)`` tensor in ``dtype`` and the affine of that grid (computed
    as MONAI's metadata tracking does: ``affine @ xform``).
    """
    extra = operation[TraceKeys.EXTRA_INFO]
    target_affine = torch.as_tensor(np.asarray(extra["src_affine"]), dtype=torch.float64)
    source_affine = torch.as_tensor(np.asarray(affine), dtype=torch.float64)
    size = [int(n) for n in operation[TraceKeys.ORIG_SIZE]]
    in_size = [int(n) for n in value.shape[1:]]
    xform = torch.as_tensor(np.linalg.solve(source_affine.numpy(), target_affine.numpy()), dtype=torch.float64)
    if size == in_size and (
        torch.allclose(source_affine, target_affine, atol=AFFINE_TOL)
        or torch.allclose(xform, torch.eye(4, dtype=torch.float64), atol=AFFINE_TOL)
    ):
        return value.to(dtype), source_affine
    compute = get_torch_dtype_from_string(extra["dtype"])
    align_corners = False if extra.get("align_corners") == TraceKeys.NONE else bool(extra["align_corners"])
    _, mode, padding_mode, _ = resolves_modes("nearest" if nearest else extra["mode"], extra["padding_mode"])
    theta = to_norm_affine(xform.to(compute)[None], src_size=in_size, dst_size=size, align_corners=align_corners)
    reverse = torch.as_tensor([2, 1, 0])
    theta[:, :3] = theta[:, reverse]
    theta[:, :, :3] = theta[:, :, reverse]
    rows = theta[:, :3].transpose(1, 2)
    source = value.to(compute)[None].contiguous()
    out = torch.empty((value.shape[0], *size), dtype=dtype)
    step = max(1, SLAB_VOXELS // (size[1] * size[2]))
    for start in range(0, size[0], step):
        stop = min(start + step, size[0])
        base = _base_grid(size, start, stop, align_corners=align_corners, dtype=compute)
        grid = base.view(1, -1, 4).bmm(rows).view(1, stop - start, size[1], size[2], 3)
        sampled = F.grid_sample(source, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
        out[:, start:stop] = sampled[0].to(dtype)
    return out, source_affine @ xform


def _invert_orientation(value: torch.Tensor, *, affine: torch.Tensor, operation: Mapping[str, Any]) -> MetaTensor:
    """Undo one ``Orientation`` the way its ``inverse`` does: re-orient to the original axis codes."""
    original = np.asarray(operation[TraceKeys.EXTRA_INFO]["original_affine"])
    axcodes = nib.orientations.aff2axcodes(original, labels=RAS_LABELS)
    reorient = Orientation(axcodes="".join(axcodes), as_closest_canonical=False, labels=RAS_LABELS)
    with reorient.trace_transform(False):
        return reorient(MetaTensor(value, affine=affine))


def restore_to_image_grid(
    value: torch.Tensor, *, image: MetaTensor, nearest: bool, dtype: torch.dtype | None = None
) -> MetaTensor:
    """``Invertd`` of the pre-processing geometry, for a tensor on ``image``'s model grid.

    Args:
        value: ``(C, *model_spatial)`` tensor on the grid of the pre-processed ``image``
            (channel indices or label values for ``nearest``; a float map otherwise).
        image: the pre-processed image; its ``applied_operations`` are inverted in reverse.
        nearest: nearest-neighbour interpolation (labels) instead of the recorded mode.
        dtype: dtype of the result (default: ``value``'s); values are cast slab by slab, which
            is exact for integer labels under nearest-neighbour interpolation.

    Returns:
        ``(C, *spatial_shape)`` MetaTensor on CPU on the file's voxel grid, with ``image``'s
        metadata and the affine that ``Invertd`` would give it.

    Raises:
        ValueError: when ``value`` is not on the model grid or ``image`` went through an
            operation other than re-orientation and resampling.
    """
    if tuple(value.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(f"value shape {tuple(value.shape)} is not on the model grid {tuple(image.shape)}")
    operations = list(image.applied_operations)
    unsupported = [
        op.get(TraceKeys.CLASS_NAME)
        for op in operations
        if op.get(TraceKeys.CLASS_NAME) not in (_RESAMPLE, _ORIENTATION)
    ]
    if unsupported:
        raise ValueError(f"cannot restore after {unsupported}: only re-orientation and resampling are supported")
    dtype = value.dtype if dtype is None else dtype
    current = value.detach().cpu()
    current = current.as_tensor() if isinstance(current, MetaTensor) else current
    affine = torch.as_tensor(np.asarray(image.affine), dtype=torch.float64)
    for operation in reversed(operations):
        if operation[TraceKeys.CLASS_NAME] == _RESAMPLE:
            current, affine = _invert_resample(
                current, affine=affine, operation=operation, nearest=nearest, dtype=dtype
            )
        else:
            oriented = _invert_orientation(current, affine=affine, operation=operation)
            current, affine = oriented.as_tensor(), torch.as_tensor(oriented.affine, dtype=torch.float64)
    meta = {key: item for key, item in image.meta.items() if key != "affine"}
    return MetaTensor(current.to(dtype), affine=affine, meta=meta)


class RestoreToImageGridd(MapTransform):
    """Dictionary form of :func:`restore_to_image_grid`: ``keys`` restored with ``data[image_key]``'s geometry.

    A memory-lean replacement of ``Invertd(keys, transform=<pre-processing>, orig_keys=image_key)``
    for pre-processing that only re-orients and resamples.

    Args:
        keys: channel-first tensors on the model grid.
        image_key: the pre-processed image.
        nearest: nearest-neighbour interpolation (labels).
        dtype: dtype of the restored tensors (default: each tensor's own).
    """

    def __init__(
        self,
        keys: KeysCollection,
        *,
        image_key: str = "image",
        nearest: bool,
        dtype: torch.dtype | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.nearest = nearest
        self.dtype = dtype

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        image = d[self.image_key]
        if not isinstance(image, MetaTensor):
            raise TypeError(
                f"'{self.image_key}' must be a MetaTensor carrying its geometry, got {type(image).__name__}"
            )
        for key in self.key_iterator(d):
            d[key] = restore_to_image_grid(d[key], image=image, nearest=self.nearest, dtype=self.dtype)
        return d
