"""Phantoms: deterministic, anatomically placed in RAS+ world coordinates, labels as specified."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from scipy import ndimage

from activelabel.data.phantoms import AIR_HU, PHANTOM_LABELS, SPACINGS, Phantom, generate_phantom
from activelabel.ml.transforms import Modality

CT_LABELS = PHANTOM_LABELS[Modality.CT]
MR_LABELS = PHANTOM_LABELS[Modality.MR]
INDICES = (0, 1, 7)


@cache
def phantom(modality: Modality, index: int, seed: int = 0) -> Phantom:
    """Generate once per test session; the arrays are treated as read-only."""
    return generate_phantom(modality=modality, index=index, seed=seed)


def world_centroid(item: Phantom, mask: np.ndarray) -> np.ndarray:
    """Centroid of ``mask`` in world (RAS+) millimetres."""
    voxel = np.argwhere(mask).mean(axis=0)
    return (item.affine @ np.append(voxel, 1.0))[:3]


def ct_body(item: Phantom) -> np.ndarray:
    """Body mask: everything denser than -500 HU (fat is about -100 HU, air exactly -1000)."""
    return item.image > -500


@pytest.mark.parametrize("modality", list(Modality))
def test_same_modality_index_and_seed_give_identical_arrays(modality: Modality) -> None:
    first = generate_phantom(modality=modality, index=3, seed=5)
    second = generate_phantom(modality=modality, index=3, seed=5)
    np.testing.assert_array_equal(first.image, second.image)
    np.testing.assert_array_equal(first.label, second.label)
    np.testing.assert_array_equal(first.affine, second.affine)


@pytest.mark.parametrize("modality", list(Modality))
def test_different_index_or_seed_changes_shape_or_positions(modality: Modality) -> None:
    base = phantom(modality, 0)
    for other in (phantom(modality, 1), phantom(modality, 0, seed=1)):
        same_shape = other.image.shape == base.image.shape
        assert not (same_shape and np.array_equal(other.label, base.label))
        for value in PHANTOM_LABELS[modality].values():
            moved = world_centroid(other, other.label == value) - world_centroid(base, base.label == value)
            assert np.linalg.norm(moved) > 0.5, f"label {value} did not move between cases"
    shapes = {phantom(modality, index).image.shape for index in INDICES}
    assert len(shapes) > 1


@pytest.mark.parametrize("modality", list(Modality))
def test_explicit_shape_is_used_as_given(modality: Modality) -> None:
    item = generate_phantom(modality=modality, index=2, shape=(40, 44, 36))
    assert item.image.shape == (40, 44, 36)
    assert item.label.shape == (40, 44, 36)


@pytest.mark.parametrize(("modality", "spacing"), [(Modality.CT, (3.0, 3.0, 4.0)), (Modality.MR, (1.0, 1.0, 1.0))])
def test_affine_is_ras_with_the_modality_spacing(modality: Modality, spacing: tuple[float, float, float]) -> None:
    item = phantom(modality, 1)
    assert SPACINGS[modality] == spacing
    assert item.affine.shape == (4, 4)
    np.testing.assert_allclose(item.affine[:3, :3], np.diag(spacing))
    np.testing.assert_allclose(item.affine[3], [0.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize("modality", list(Modality))
@pytest.mark.parametrize("index", INDICES)
def test_every_label_is_present_and_no_other_value_occurs(modality: Modality, index: int) -> None:
    item = phantom(modality, index)
    assert item.label.dtype == np.uint8
    assert item.label.shape == item.image.shape
    assert set(np.unique(item.label).tolist()) == {0, *PHANTOM_LABELS[modality].values()}


def test_default_shapes_are_near_the_nominal_grids() -> None:
    for index in INDICES:
        ct, mr = phantom(Modality.CT, index), phantom(Modality.MR, index)
        assert ct.image.dtype == np.int16
        assert mr.image.dtype == np.uint8
        assert np.all(np.abs(np.subtract(ct.image.shape, (96, 96, 64))) <= 8)
        assert np.all(np.abs(np.subtract(mr.image.shape, (48, 56, 48))) <= 4)


@pytest.mark.parametrize("index", INDICES)
def test_ct_outside_the_body_is_exactly_air(index: int) -> None:
    item = phantom(Modality.CT, index)
    body = ct_body(item)
    assert np.all(item.image[~body] == AIR_HU)
    assert AIR_HU == -1000
    assert 0.2 < 1.0 - body.mean() < 0.8, "expected both air and body in the field of view"
    for corner in (item.image[:2, :2], item.image[-2:, -2:], item.image[:2, -2:], item.image[-2:, :2]):
        assert np.all(corner == AIR_HU)
    labelled, count = ndimage.label(body)
    assert count == 1, "the body should be one connected region"
    assert labelled.max() == 1


@pytest.mark.parametrize("index", INDICES)
def test_ct_labels_lie_inside_the_body_away_from_its_fat_rim(index: int) -> None:
    item = phantom(Modality.CT, index)
    organs = item.label > 0
    assert np.all(ct_body(item)[organs])
    assert np.all(item.image[organs] > -60), "organ voxels should not be fat or air"


@pytest.mark.parametrize("index", INDICES)
def test_ct_organ_intensities_are_in_their_hounsfield_ranges(index: int) -> None:
    item = phantom(Modality.CT, index)
    expected = {"liver": (52, 68), "spleen": (42, 58), "kidney_right": (138, 162), "kidney_left": (138, 162)}
    for name, (low, high) in expected.items():
        values = item.image[item.label == CT_LABELS[name]]
        assert low <= np.median(values) <= high, f"{name} median {np.median(values)} HU"
    soft = item.image[ct_body(item) & (item.label == 0)]
    assert 25 <= np.median(soft) <= 50
    liver = item.image[item.label == CT_LABELS["liver"]].astype(float)
    assert 12 <= liver.std() <= 22, "liver spread should be about the 15 HU noise plus texture"


@pytest.mark.parametrize("index", INDICES)
def test_ct_right_sided_organs_are_on_the_patients_right_in_ras_world(index: int) -> None:
    item = phantom(Modality.CT, index)
    body = world_centroid(item, ct_body(item))
    centroid = {name: world_centroid(item, item.label == value) for name, value in CT_LABELS.items()}
    # RAS+: world x increases towards the patient's Right, y towards Anterior.
    assert centroid["liver"][0] > body[0]
    assert centroid["kidney_right"][0] > body[0]
    assert centroid["spleen"][0] < body[0]
    assert centroid["kidney_left"][0] < body[0]
    assert centroid["kidney_right"][1] < body[1], "kidneys are posterior"
    assert centroid["kidney_left"][1] < body[1], "kidneys are posterior"


@pytest.mark.parametrize("index", INDICES)
def test_ct_organ_sizes_are_plausible(index: int) -> None:
    item = phantom(Modality.CT, index)
    voxel_ml = float(np.prod(SPACINGS[Modality.CT])) / 1000.0
    volumes = {name: (item.label == value).sum() * voxel_ml for name, value in CT_LABELS.items()}
    assert 600 < volumes["liver"] < 2500
    assert 80 < volumes["spleen"] < 500
    assert 60 < volumes["kidney_right"] < 350
    assert 60 < volumes["kidney_left"] < 350


@pytest.mark.parametrize("index", INDICES)
def test_mr_structures_are_small_adjacent_and_darker_than_surrounding_brain(index: int) -> None:
    item = phantom(Modality.MR, index)
    anterior = item.label == MR_LABELS["anterior"]
    posterior = item.label == MR_LABELS["posterior"]
    for mask in (anterior, posterior):
        assert 150 <= mask.sum() <= 1500, f"{mask.sum()} voxels"
    assert np.any(ndimage.binary_dilation(anterior) & posterior), "the two structures should touch"
    assert world_centroid(item, anterior)[1] > world_centroid(item, posterior)[1], "anterior is +y in RAS"
    structures = anterior | posterior
    shell = ndimage.binary_dilation(structures, iterations=3) & ~structures
    assert item.image[structures].mean() < item.image[shell].mean() - 5


@pytest.mark.parametrize("index", INDICES)
def test_mr_labels_lie_inside_the_head_on_a_dark_background(index: int) -> None:
    item = phantom(Modality.MR, index)
    assert np.all(item.image[item.label > 0] > 12), "labelled voxels should be tissue, not background"
    corners = np.concatenate([item.image[:3, :3].ravel(), item.image[-3:, -3:].ravel()])
    assert corners.mean() < 12, "background should be near 0 (Rician noise floor)"
    assert np.all(np.argwhere(item.label > 0).min(axis=0) > 3), "labels should be away from the border"


def test_invalid_index_or_seed_or_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="index"):
        generate_phantom(modality=Modality.CT, index=-1)
    with pytest.raises(ValueError, match="seed"):
        generate_phantom(modality=Modality.MR, index=0, seed=-2)
    with pytest.raises(ValueError, match="shape"):
        generate_phantom(modality=Modality.CT, index=0, shape=(8, 8, 8))
    with pytest.raises(ValueError, match="xray"):
        generate_phantom(modality="xray", index=0)
