"""Patch size and spacing planned from the images' fingerprint, and the settings that use them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from activelabel.config import load_settings
from activelabel.ml.planning import (
    Fingerprint,
    PlanningError,
    image_files,
    plan_roi_size,
    plan_spacing,
    read_fingerprint,
)
from tests.helpers import write_nifti

HIPPOCAMPUS = Fingerprint(count=200, median_shape=(36.0, 50.0, 35.0), median_spacing=(1.0, 1.0, 1.0))


def _studies(root: Path, shapes: list[tuple[int, int, int]], affine: np.ndarray) -> Path:
    for index, shape in enumerate(shapes):
        write_nifti(root / f"case_{index:03d}.nii.gz", np.zeros(shape, np.float32), affine=affine)
    (root / "labels.json").write_text(json.dumps({"anterior": 1, "posterior": 2}))
    return root


def test_fingerprint_reorders_voxel_axes_to_ras_and_takes_medians(tmp_path: Path) -> None:
    # Voxel axes (i, j, k) run along (S, R, A) with spacings 3, 1, 2 mm.
    affine = np.array([[0, 1.0, 0, 0], [0, 0, -2.0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    _studies(tmp_path, [(10, 20, 30), (12, 22, 32), (14, 24, 34)], affine)
    fingerprint = read_fingerprint(image_files(tmp_path))
    assert fingerprint.count == 3
    assert fingerprint.median_shape == (22.0, 32.0, 12.0)
    assert fingerprint.median_spacing == pytest.approx((1.0, 2.0, 3.0))


def test_fingerprint_reads_at_most_the_limit_evenly_spaced(tmp_path: Path) -> None:
    _studies(tmp_path, [(8, 8, 8)] * 5 + [(40, 40, 40)] * 5, np.eye(4))
    assert read_fingerprint(image_files(tmp_path), limit=4).count == 4
    with pytest.raises(PlanningError, match="no images"):
        read_fingerprint([])


def test_an_unreadable_header_is_named_in_the_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    with pytest.raises(PlanningError, match=r"broken\.nii\.gz"):
        read_fingerprint([broken])


def test_hippocampus_patch_is_its_median_extent_rounded_up_to_the_divisor() -> None:
    assert plan_roi_size(HIPPOCAMPUS, spacing=(1.0, 1.0, 1.0), divisor=8, voxel_budget=48**3) == (40, 56, 40)


def test_a_large_volume_shrinks_along_its_longest_axis_in_mm_until_it_fits_the_budget() -> None:
    abdomen = Fingerprint(count=10, median_shape=(512.0, 512.0, 300.0), median_spacing=(0.8, 0.8, 1.5))
    roi = plan_roi_size(abdomen, spacing=(3.0, 3.0, 3.0), divisor=8, voxel_budget=96**3)
    assert all(edge % 8 == 0 for edge in roi)
    assert np.prod(roi) <= 96**3
    # 144 x 144 x 152 voxels on the 3 mm grid, cut one step at a time along the longest axis: a cube.
    assert roi == (96, 96, 96)
    flat = Fingerprint(count=10, median_shape=(512.0, 512.0, 40.0), median_spacing=(0.8, 0.8, 3.0))
    assert plan_roi_size(flat, spacing=(3.0, 3.0, 3.0), divisor=8, voxel_budget=96**3) == (144, 144, 40)


def test_spacing_is_the_median_but_never_finer_than_the_floor() -> None:
    thick = Fingerprint(count=3, median_shape=(256.0, 256.0, 30.0), median_spacing=(0.9, 0.9, 5.0))
    assert plan_spacing(thick, floor=(1.0, 1.0, 1.0)) == (1.0, 1.0, 5.0)
    with pytest.raises(ValueError, match="floor must be 3 positive spacings"):
        plan_spacing(thick, floor=(1.0, 1.0))


def test_settings_plan_spacing_and_roi_from_the_studies_unless_given(tmp_path: Path) -> None:
    _studies(tmp_path, [(36, 50, 35), (34, 52, 36), (38, 48, 33)], np.diag([1.0, 1.0, 1.0, 1.0]))
    planned = load_settings({"modality": "mr"}, studies=str(tmp_path), app_dir="/app", env={})
    assert (planned.preset.spacing, planned.preset.roi_size) == ((1.0, 1.0, 1.0), (40, 56, 40))
    given = load_settings({"modality": "mr", "roi_size": "48,48,48"}, studies=str(tmp_path), app_dir="/app", env={})
    assert given.preset.roi_size == (48, 48, 48)


def test_settings_fall_back_to_the_modality_preset_when_headers_cannot_be_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _studies(tmp_path, [], np.eye(4))
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING, logger="activelabel.config"):
        settings = load_settings({"modality": "mr"}, studies=str(tmp_path), app_dir="/app", env={})
    assert (settings.preset.spacing, settings.preset.roi_size) == ((1.0, 1.0, 1.0), (48, 48, 48))
    assert "broken.nii.gz" in caplog.text
