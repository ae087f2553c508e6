"""Small builders shared by the tests (tiny NIfTI volumes and datastores)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from activelabel.testing.datasets import REPO, SHARED_DATASETS

__all__ = ["REPO", "SHARED_DATASETS", "tiny_datastore", "write_nifti"]


def write_nifti(path: Path, array: np.ndarray, *, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` as NIfTI with ``affine`` (identity by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def tiny_datastore(root: Path, ids: list[str], *, labeled: list[str], shape: tuple[int, int, int] = (8, 8, 8)) -> Path:
    """A folder of random images, with a final label for each id in ``labeled``."""
    rng = np.random.default_rng(0)
    for image_id in ids:
        write_nifti(root / f"{image_id}.nii.gz", rng.normal(size=shape).astype(np.float32))
    for image_id in labeled:
        write_nifti(root / "labels" / "final" / f"{image_id}.nii.gz", np.ones(shape, dtype=np.uint8))
    return root
