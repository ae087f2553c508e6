"""Slab-wise restoration onto the image grid equals MONAI's Invertd, voxel for voxel."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from activelabel.ml import regrid
from activelabel.ml.regrid import RestoreToImageGridd, restore_to_image_grid
from activelabel.ml.transforms import inference_transforms, preset_for
from tests.helpers import write_nifti

# (voxel sizes with signs, shape, preset spacing): flipped and swapped axes, anisotropic
# voxels, and spacings whose nearest-neighbour inversion has exact ties (1.5 mm -> 3 mm).
CASES = [
    ((-0.8, 1.1, 2.5), (40, 30, 20), (3.0, 3.0, 3.0)),
    ((0.7, -0.7, 1.0), (33, 27, 41), (1.5, 2.0, 1.0)),
    ((1.5, 1.5, 1.5), (40, 30, 20), (3.0, 3.0, 3.0)),
    ((0.9, 0.9, 3.0), (33, 27, 41), (3.0, 3.0, 3.0)),
]


def _affine(voxel: tuple[float, float, float], *, rotate: bool, swap: bool) -> np.ndarray:
    affine = np.diag([*voxel, 1.0])
    affine[:3, 3] = (12.5, -7.25, 3.0)
    if rotate:
        angle = 0.3
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        affine[:3, :3] = rotation @ affine[:3, :3]
    return affine[:, [1, 0, 2, 3]] if swap else affine


def _preprocessed(path: Path, spacing: tuple[float, float, float]) -> tuple[dict, object]:
    pre = inference_transforms(replace(preset_for("ct"), spacing=spacing))
    return pre({"image": str(path)}), pre


def _invertd(data: dict, pre: object, value: torch.Tensor, *, nearest: bool) -> MetaTensor:
    image = data["image"]
    data = {**data, "pred": MetaTensor(value, meta=dict(image.meta), applied_operations=list(image.applied_operations))}
    return Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=nearest)(data)["pred"]


@pytest.mark.parametrize(("voxel", "shape", "spacing"), CASES)
@pytest.mark.parametrize(("rotate", "swap"), [(False, False), (True, True)])
def test_restore_equals_invertd(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    voxel: tuple[float, float, float],
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    rotate: bool,
    swap: bool,
) -> None:
    monkeypatch.setattr(regrid, "SLAB_VOXELS", 500)  # slabs of one or a few slices
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, shape).astype(np.int16)
    path = write_nifti(tmp_path / "image.nii.gz", array, affine=_affine(voxel, rotate=rotate, swap=swap))
    data, pre = _preprocessed(path, spacing)
    image = data["image"]
    label = torch.as_tensor(rng.integers(0, 5, image.shape), dtype=torch.float32)
    prob = torch.as_tensor(rng.random(image.shape), dtype=torch.float32)

    expected_label = _invertd(data, pre, label, nearest=True)
    restored_label = restore_to_image_grid(label.to(torch.uint8), image=image, nearest=True)
    expected_map = _invertd(data, pre, prob, nearest=False)
    restored_map = restore_to_image_grid(prob, image=image, nearest=False, dtype=torch.float32)

    assert restored_label.dtype == torch.uint8
    assert tuple(restored_label.shape) == (1, *shape)
    np.testing.assert_array_equal(restored_label.numpy(), expected_label.numpy().astype(np.uint8))
    np.testing.assert_array_equal(restored_map.numpy(), expected_map.numpy())
    for restored, expected in ((restored_label, expected_label), (restored_map, expected_map)):
        np.testing.assert_array_equal(np.asarray(restored.affine), np.asarray(expected.affine))


def test_label_values_commute_with_the_restore(tmp_path: Path) -> None:
    """Mapping channels to label values before the (nearest) restore gives the old order's label."""
    rng = np.random.default_rng(1)
    path = write_nifti(
        tmp_path / "image.nii.gz",
        rng.normal(size=(30, 26, 22)).astype(np.float32),
        affine=_affine((0.8, -1.2, 2.0), rotate=False, swap=False),
    )
    data, pre = _preprocessed(path, (1.5, 1.5, 1.5))
    channels = torch.as_tensor(rng.integers(0, 3, data["image"].shape), dtype=torch.float32)
    values = torch.tensor([0, 7, 200], dtype=torch.uint8)

    late = values[_invertd(data, pre, channels, nearest=True).as_tensor().long()]
    early = restore_to_image_grid(values[channels.long()], image=data["image"], nearest=True)

    np.testing.assert_array_equal(early.numpy(), late.numpy())


def test_restore_allocates_no_full_size_float_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory property: every sampling grid is one slab; the full-size output is the label's dtype."""
    target = (64, 48, 40)
    path = write_nifti(tmp_path / "image.nii.gz", np.zeros(target, dtype=np.int16), affine=np.diag([0.7, 0.7, 1.0, 1]))
    data, _ = _preprocessed(path, (3.0, 3.0, 3.0))
    monkeypatch.setattr(regrid, "SLAB_VOXELS", 4 * target[1] * target[2])
    largest: list[int] = []
    sample = torch.nn.functional.grid_sample

    def recording(source: torch.Tensor, grid: torch.Tensor, **kwargs: object) -> torch.Tensor:
        largest.append(grid.numel() // 3)
        return sample(source, grid, **kwargs)

    monkeypatch.setattr(regrid.F, "grid_sample", recording)
    label = torch.zeros((1, *data["image"].shape[1:]), dtype=torch.uint8)
    restored = RestoreToImageGridd(keys="pred", nearest=True)({**data, "pred": label})["pred"]

    assert restored.dtype == torch.uint8
    assert tuple(restored.shape) == (1, *target)
    assert max(largest) <= regrid.SLAB_VOXELS
    assert len(largest) == -(-target[0] // 4)


def test_restore_refuses_operations_it_cannot_invert(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "image.nii.gz", np.zeros((20, 20, 20), dtype=np.int16))
    data, _ = _preprocessed(path, (3.0, 3.0, 3.0))
    image = data["image"]
    image.applied_operations.append({"class": "SpatialCrop", "id": 0})

    with pytest.raises(ValueError, match="SpatialCrop"):
        restore_to_image_grid(torch.zeros(image.shape), image=image, nearest=True)
