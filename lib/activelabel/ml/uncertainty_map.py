"""Voxel uncertainty maps on the image's own grid, for viewers to overlay on the volume.

A map is one metric's per-voxel MC-dropout uncertainty (see :mod:`activelabel.ml.uncertainty`)
computed on the pre-processed grid and resampled back (linear interpolation) to the voxel
grid of the stored image, so it lines up with the image and its labels in any viewer.
Maps are cached per (image, model version, metric, samples): a new model makes them stale.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from activelabel.fsutil import atomic_write
from activelabel.ml.inference import PublishedModel, mc_dropout_samples, sliding_window
from activelabel.ml.regrid import restore_to_image_grid
from activelabel.ml.transforms import Preset, inference_transforms
from activelabel.ml.uncertainty import UncertaintyMetric
from activelabel.workers.compute import ComputePool


def uncertainty_map(
    image_path: str | Path,
    *,
    network: torch.nn.Module,
    preset: Preset,
    metric: UncertaintyMetric,
    samples: int,
    overlap: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """One metric's voxel map of an image file, on that file's grid.

    Returns:
        ``(map, affine)``: a float32 array shaped like the stored image (its own voxel order,
        not reoriented) and the 4x4 RAS affine of that grid.
    """
    pre = inference_transforms(preset)
    data = pre({"image": str(image_path)})
    image = data["image"]
    with torch.inference_mode():
        accumulator, _ = mc_dropout_samples(
            network, image, sliding_window(preset.roi_size, overlap=overlap), samples=samples
        )
    voxels = accumulator.voxel_maps()[metric].float()[None]
    del accumulator
    restored = restore_to_image_grid(voxels, image=image, nearest=False, dtype=torch.float32)
    expected = tuple(int(n) for n in image.meta["spatial_shape"])
    array = restored.as_tensor()[0].numpy()
    if array.shape != expected:
        raise RuntimeError(f"uncertainty map came back shaped {array.shape}, the image is {expected}")
    return array, np.asarray(restored.affine, dtype=np.float64)


class UncertaintyMapCache:
    """Computes maps with the published model and keeps them as NIfTI files.

    Files live under ``directory/<hash of image id>/v<model version>-<metric>-n<samples>.nii.gz``;
    writing a map for a newer model removes that image's maps from older models.  One map is
    computed at a time (a map costs ``samples`` full passes of memory and CPU).

    Args:
        directory: cache folder.
        model: the published model.
        preset: pre-processing of the app.
        overlap: sliding-window overlap.
        compute: the server's pool for interactive network passes (None: compute in the caller's thread);
            a full pool raises :class:`~activelabel.workers.compute.ComputeBusy`.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        model: PublishedModel,
        preset: Preset,
        overlap: float = 0.25,
        compute: ComputePool | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.model = model
        self.preset = preset
        self.overlap = overlap
        self.compute = compute
        self._lock = threading.Lock()

    def get(
        self, image_id: str, image_path: str | Path, *, metric: UncertaintyMetric, samples: int
    ) -> tuple[Path, int]:
        """The cached map file of an image (computed when missing) and its model version."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        with self._lock:
            network, info = self.model.get()
            folder = self.directory / hashlib.sha256(image_id.encode()).hexdigest()[:24]
            path = folder / f"v{info.version}-{metric.value}-n{samples}.nii.gz"
            if path.is_file():
                return path, info.version
            compute = functools.partial(
                uncertainty_map,
                image_path,
                network=network,
                preset=self.preset,
                metric=metric,
                samples=samples,
                overlap=self.overlap,
            )
            array, affine = compute() if self.compute is None else self.compute.run(compute)
            image = nib.Nifti1Image(array, affine)
            image.header.set_intent("estimate", name=f"{metric.value} v{info.version}")
            payload = gzip.compress(image.to_bytes(), compresslevel=1)
            atomic_write(path, lambda tmp: tmp.write_bytes(payload))
            for old in folder.glob("v*.nii.gz"):
                if not old.name.startswith(f"v{info.version}-"):
                    old.unlink(missing_ok=True)
            return path, info.version
