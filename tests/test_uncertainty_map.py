"""Voxel uncertainty maps: on the image's own grid, cached per model version, served over HTTP."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from activelabel.config import KEYS
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import PublishedModel
from activelabel.ml.networks import NetworkSpec, build_network
from activelabel.ml.transforms import preset_for
from activelabel.ml.uncertainty import UncertaintyMetric
from activelabel.ml.uncertainty_map import UncertaintyMapCache, uncertainty_map
from activelabel.testing.server_process import ServerProcess
from tests.helpers import write_nifti

PRESET = preset_for("mr")
SPEC = NetworkSpec(in_channels=1, out_channels=3, channels=(8, 16, 32, 64), dropout=0.3)
LABELS = {"anterior": 1, "posterior": 2}


def _image(shape: tuple[int, int, int] = (30, 26, 22)) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    return (100 * np.exp(-4 * (grid**2).sum(0)) + np.random.default_rng(0).normal(0, 5, shape)).astype(np.float32)


def _map(path: Path, network: torch.nn.Module, metric: UncertaintyMetric) -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(0)  # the same dropout masks for both orientations
    return uncertainty_map(path, network=network, preset=PRESET, metric=metric, samples=3)


@pytest.mark.parametrize("metric", list(UncertaintyMetric))
def test_map_lies_on_the_stored_grid_whatever_the_orientation(tmp_path: Path, metric: UncertaintyMetric) -> None:
    network = build_network(SPEC).eval()
    array = _image()
    ras = write_nifti(tmp_path / "ras.nii.gz", array, affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    # The same physical volume stored with the first axis running right-to-left.
    flipped_affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped_affine[0, 3] = array.shape[0] - 1
    flipped = write_nifti(tmp_path / "flipped.nii.gz", array[::-1].copy(), affine=flipped_affine)

    ras_map, ras_affine = _map(ras, network, metric)
    flipped_map, affine = _map(flipped, network, metric)

    assert ras_map.shape == array.shape
    assert ras_map.dtype == np.float32
    np.testing.assert_allclose(ras_affine, np.eye(4), atol=1e-5)
    np.testing.assert_allclose(affine, flipped_affine, atol=1e-5)
    np.testing.assert_allclose(flipped_map, ras_map[::-1], atol=1e-5)
    assert float(ras_map.max()) > 0.0


def test_cache_reuses_a_map_and_drops_it_when_a_new_model_is_published(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "model")
    store.ensure_initial(SPEC, LABELS)
    image = write_nifti(tmp_path / "image.nii.gz", _image())
    cache = UncertaintyMapCache(tmp_path / "maps", model=PublishedModel(store), preset=PRESET)

    first, version = cache.get("case 1", image, metric=UncertaintyMetric.ENTROPY, samples=2)
    stamp = first.stat().st_mtime_ns
    again, _ = cache.get("case 1", image, metric=UncertaintyMetric.ENTROPY, samples=2)
    assert (again, again.stat().st_mtime_ns) == (first, stamp)
    assert version == 0

    store.publish(build_network(SPEC).state_dict(), spec=SPEC.to_dict(), labels=LABELS)
    newer, version = cache.get("case 1", image, metric=UncertaintyMetric.ENTROPY, samples=2)
    assert version == 1
    assert newer != first
    assert not first.exists()
    assert nib.load(str(newer)).shape == (30, 26, 22)


def test_cache_rejects_zero_samples(tmp_path: Path) -> None:
    cache = UncertaintyMapCache(tmp_path, model=PublishedModel(ModelStore(tmp_path / "model")), preset=PRESET)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        cache.get("x", tmp_path / "x.nii.gz", metric=UncertaintyMetric.ENTROPY, samples=0)


def test_server_serves_a_float_map_on_the_image_grid(server: ServerProcess, ct_studies: Path) -> None:
    image_id = sorted(ct_studies.glob("*.nii.gz"))[0].name.removesuffix(".nii.gz")
    url = f"{server.url}/activelabel/uncertainty-map"

    response = requests.get(url, params={"image": image_id, "metric": "variance"}, timeout=300)

    assert response.status_code == 200, response.text
    assert response.headers["X-Uncertainty-Metric"] == "variance"
    assert response.headers["X-Model-Version"] == "0"
    served = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    stored = nib.load(str(ct_studies / f"{image_id}.nii.gz"))
    assert served.shape == stored.shape
    np.testing.assert_allclose(served.affine, stored.affine, atol=1e-4)
    values = np.asarray(served.dataobj)
    assert values.dtype == np.float32
    assert np.isfinite(values).all()
    assert values.min() >= 0.0

    again = requests.get(url, params={"image": image_id, "metric": "variance"}, timeout=60)
    assert again.content == response.content
    default = requests.get(url, params={"image": image_id}, timeout=300)
    assert default.headers["X-Uncertainty-Metric"] == KEYS["uncertainty_metric"].default
    assert nib.Nifti1Image.from_bytes(gzip.decompress(default.content)).shape == stored.shape


@pytest.mark.parametrize(
    ("params", "status", "detail"),
    [
        ({"image": "no-such-image"}, 404, "unknown image id 'no-such-image'"),
        ({"image": "ct_000", "metric": "confidence"}, 422, "entropy"),
        ({"image": "ct_000", "samples": "0"}, 422, "greater than or equal to 1"),
        ({}, 422, "image"),
    ],
)
def test_server_rejects_bad_map_requests(
    server: ServerProcess, params: dict[str, str], status: int, detail: str
) -> None:
    response = requests.get(f"{server.url}/activelabel/uncertainty-map", params=params, timeout=60)
    assert response.status_code == status
    assert detail in response.text
