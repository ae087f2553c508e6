"""Geometry and label conversions of the Slicer module, with NumPy and with real MRML nodes.

The MRML tests use the ``slicer-core`` wheel: Slicer's MRML library without the application,
the same C++ classes the module drives inside Slicer.  Nothing is mocked.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import slicer

from activelabel.data.phantoms import generate_datastore
from activelabel.labelmap import NOT_ANNOTATED as SERVER_NOT_ANNOTATED

EXTENSION = Path(__file__).resolve().parents[1] / "slicer_extension" / "ActiveLabel"
sys.path.insert(0, str(EXTENSION))

from ActiveLabelLib import nodes  # noqa: E402
from ActiveLabelLib.conversions import (  # noqa: E402
    PALETTE,
    VolumeGeometry,
    compose_label_map,
    nifti_geometry,
    reorient,
    segment_specs,
    split_label_map,
    to_nifti_order,
    to_slicer_order,
)
from ActiveLabelLib.errors import ActiveLabelError  # noqa: E402
from ActiveLabelLib.slices import NOT_ANNOTATED, SliceQueue, keep_slices  # noqa: E402

LABELS = {"liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4}


def _oblique_affine() -> np.ndarray:
    """Voxels of 0.8 x 1.1 x 2.5 mm, rotated 30 degrees about S and flipped in R, shifted."""
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, 1.0, 1.0]) @ rotation @ np.diag([0.8, 1.1, 2.5])
    affine[:3, 3] = [12.5, -40.0, 7.25]
    return affine


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CT phantom with its label."""
    root = tmp_path_factory.mktemp("conversions") / "studies"
    generate_datastore(root, modality="ct", count=1, seed=0, labeled=1)
    return root


@pytest.fixture
def scene() -> Any:
    """An MRML scene with Slicer's default colour tables, as the application starts with."""
    mrml = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(mrml)
    colors.AddDefaultColorNodes()
    yield mrml
    colors.SetMRMLScene(None)
    mrml.Clear(True)


def _nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def test_geometry_of_an_oblique_affine_rebuilds_the_same_matrix() -> None:
    affine = _oblique_affine()
    geometry = VolumeGeometry.from_affine(affine, (12, 10, 8))
    assert geometry.spacing == pytest.approx((0.8, 1.1, 2.5))
    assert geometry.origin == pytest.approx((12.5, -40.0, 7.25))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(geometry.directions), axis=0), 1.0)
    np.testing.assert_allclose(geometry.ijk_to_ras, affine, atol=1e-12)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda a, s: (a, (s[0] + 1, s[1], s[2])), "shape (13, 10, 8) differs"),
        (lambda a, s: (a @ np.diag([1.5, 1, 1, 1]), s), "spacing"),
        (lambda a, s: (np.diag([1, -1, 1, 1]) @ a, s), "orientation differs"),
        (lambda a, s: (a + np.pad(np.ones((3, 1)) * 5, ((0, 1), (3, 0))), s), "origin"),
    ],
)
def test_a_geometry_mismatch_names_what_differs(change: Any, reason: str) -> None:
    affine, shape = _oblique_affine(), (12, 10, 8)
    image = VolumeGeometry.from_affine(affine, shape)
    other = VolumeGeometry.from_affine(*change(affine, shape))
    assert reason in image.mismatch(other)


def test_geometries_equal_within_tolerance_do_not_mismatch() -> None:
    affine = _oblique_affine()
    nudged = affine.copy()
    nudged[:3, 3] += 1e-5
    assert VolumeGeometry.from_affine(affine, (4, 4, 4)).mismatch(VolumeGeometry.from_affine(nudged, (4, 4, 4))) is None


def test_a_degenerate_affine_is_refused() -> None:
    flat = np.eye(4)
    flat[2, 2] = 0.0
    with pytest.raises(ActiveLabelError, match="zero-length voxel axis"):
        VolumeGeometry.from_affine(flat, (4, 4, 4))


def test_slicer_order_is_the_transpose_of_nifti_order() -> None:
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert to_slicer_order(array).shape == (4, 3, 2)
    assert to_slicer_order(array)[3, 2, 1] == array[1, 2, 3]
    np.testing.assert_array_equal(to_nifti_order(to_slicer_order(array)), array)
    with pytest.raises(ActiveLabelError, match="must be 3D"):
        to_slicer_order(np.zeros((2, 2)))


def test_segments_follow_label_values_and_keep_their_colour() -> None:
    specs = segment_specs({"spleen": 2, "liver": 1, "lesion": 12})
    assert [(s.value, s.name) for s in specs] == [(1, "liver"), (2, "spleen"), (12, "lesion")]
    assert specs[0].color == PALETTE[0]
    assert specs[2].color == PALETTE[11 % len(PALETTE)]
    with pytest.raises(ActiveLabelError, match="label 'bad' has value 0"):
        segment_specs({"bad": 0})


def test_overlapping_segments_compose_with_the_higher_value_on_top() -> None:
    liver = np.zeros((4, 4, 4), bool)
    spleen = np.zeros((4, 4, 4), bool)
    liver[:2] = True
    spleen[1:3] = True
    label_map = compose_label_map({"spleen": spleen, "liver": liver}, LABELS, shape=(4, 4, 4))
    assert label_map.dtype == np.uint8
    assert label_map[0].max() == 1
    assert np.all(label_map[1:3] == 2)
    assert np.all(label_map[3] == 0)


def test_a_segment_that_names_no_label_is_refused_with_the_labels_to_choose_from() -> None:
    with pytest.raises(ActiveLabelError) as unknown:
        compose_label_map({"tumour": np.ones((2, 2, 2))}, LABELS, shape=(2, 2, 2))
    assert str(unknown.value) == (
        "segment 'tumour' is not one of the server's labels (liver, spleen, kidney_right, kidney_left); rename it"
    )
    with pytest.raises(ActiveLabelError, match="has shape"):
        compose_label_map({"liver": np.ones((3, 2, 2))}, LABELS, shape=(2, 2, 2))


def test_a_label_map_splits_into_one_mask_per_label() -> None:
    label_map = np.array([[[0, 1], [2, 2]]], dtype=np.uint8)
    masks = split_label_map(label_map, LABELS)
    assert list(masks) == ["liver", "spleen", "kidney_right", "kidney_left"]
    assert masks["spleen"].sum() == 2
    assert not masks["kidney_left"].any()
    with pytest.raises(ActiveLabelError, match=r"values \[9\] that name no label"):
        split_label_map(np.full((1, 1, 1), 9), LABELS)


def _right_handed(affine: np.ndarray) -> np.ndarray:
    return np.diag([-1.0, 1.0, 1.0, 1.0]) @ affine  # undo the R flip of the oblique affine


@pytest.mark.parametrize("form", ["sform", "qform", "both", "uncompressed"])
def test_the_nifti_header_gives_the_grid_nibabel_reads(form: str, tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((12, 10, 8), np.uint8), None)
    if form in ("sform", "both", "uncompressed"):
        image.set_sform(_oblique_affine(), code=2)
    if form in ("qform", "both"):
        image.set_qform(_oblique_affine(), code=1)
    path = tmp_path / ("x.nii" if form == "uncompressed" else "x.nii.gz")
    nib.save(image, str(path))
    geometry = nifti_geometry(path)
    assert geometry.shape == (12, 10, 8)
    np.testing.assert_allclose(geometry.ijk_to_ras, nib.load(str(path)).affine, atol=1e-5)


def test_a_file_that_is_not_nifti_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.nii.gz").write_bytes(b"\x1f\x8b not really")
    (tmp_path / "y.nii").write_bytes(b"0" * 400)
    with pytest.raises(ActiveLabelError, match=r"cannot read x\.nii\.gz"):
        nifti_geometry(tmp_path / "x.nii.gz")
    with pytest.raises(ActiveLabelError, match=r"y\.nii is not a NIfTI-1 file"):
        nifti_geometry(tmp_path / "y.nii")


def test_reorienting_undoes_a_reversed_and_permuted_grid() -> None:
    data = np.arange(4 * 3 * 2).reshape(4, 3, 2)
    target = VolumeGeometry.from_affine(_oblique_affine(), data.shape)
    # the same voxels indexed with k reversed, as ITK reads a left-handed grid
    flipped = target.ijk_to_ras @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 1], [0, 0, 0, 1]])
    source = VolumeGeometry.from_affine(flipped, data.shape)
    on_source = to_slicer_order(data[:, :, ::-1])
    np.testing.assert_array_equal(reorient(on_source, source=source, target=target), data)
    shifted = VolumeGeometry.from_affine(
        flipped @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]), data.shape
    )
    with pytest.raises(ActiveLabelError, match="shifted"):
        reorient(on_source, source=shifted, target=target)


def test_a_right_handed_nifti_volume_loads_with_its_affine_as_ijk_to_ras(scene: Any, tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(12, 10, 8)).astype(np.float32)
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, _right_handed(_oblique_affine())), str(path))
    volume = nodes.read_volume(scene, path, name="oblique")
    geometry = nodes.volume_geometry(volume)
    assert geometry.shape == (12, 10, 8)
    np.testing.assert_allclose(geometry.ijk_to_ras, _right_handed(_oblique_affine()), atol=1e-4)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), to_slicer_order(data))


def test_an_uncertainty_map_loads_as_a_coloured_overlay_spanning_its_range(scene: Any, tmp_path: Path) -> None:
    data = np.linspace(0.0, 0.7, 12 * 10 * 8, dtype=np.float32).reshape(12, 10, 8)
    path = tmp_path / "uncertainty.nii.gz"
    nib.save(nib.Nifti1Image(data, _right_handed(_oblique_affine())), str(path))
    overlay = nodes.read_overlay(scene, path, name="uncertainty")
    display = overlay.GetDisplayNode()
    assert display.GetColorNodeID() == nodes.OVERLAY_COLORS
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, 0.7), abs=1e-4)
    np.testing.assert_allclose(nodes.volume_geometry(overlay).ijk_to_ras, _right_handed(_oblique_affine()), atol=1e-4)


def test_a_left_handed_image_gets_its_label_back_on_its_own_grid(scene: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image_path, label_path = tmp_path / "las.nii.gz", tmp_path / "las_label.nii.gz"
    truth = rng.integers(0, 3, size=(12, 10, 8)).astype(np.uint8)
    nib.save(nib.Nifti1Image(rng.normal(size=truth.shape).astype(np.float32), _oblique_affine()), str(image_path))
    nib.save(nib.Nifti1Image(truth, _oblique_affine()), str(label_path))
    volume = nodes.read_volume(scene, image_path, name="las")
    assert nodes.volume_geometry(volume).mismatch(nifti_geometry(image_path)) == "orientation differs from the image's"
    segmentation = nodes.load_segmentation(scene, label_path, reference=volume, label_names=LABELS, name="seg")

    written = nodes.write_label_file(
        scene,
        segmentation,
        reference=volume,
        label_names=LABELS,
        path=tmp_path / "out.nii.gz",
        target=nifti_geometry(image_path),
    )

    exported = nib.load(str(written))
    np.testing.assert_allclose(exported.affine, _oblique_affine(), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(exported.dataobj), truth)


def test_a_label_map_loads_as_one_named_coloured_segment_per_label(scene: Any, studies: Path) -> None:
    image_path, label_path = studies / "ct_000.nii.gz", studies / "labels" / "final" / "ct_000.nii.gz"
    labels = {**LABELS, "lesion": 5}  # a label the map does not use still gets its (empty) segment
    volume = nodes.read_volume(scene, image_path, name="ct_000")
    segmentation = nodes.load_segmentation(scene, label_path, reference=volume, label_names=labels, name="seg")
    content = segmentation.GetSegmentation()
    segments = [content.GetSegment(content.GetNthSegmentID(i)) for i in range(content.GetNumberOfSegments())]
    assert [segment.GetName() for segment in segments] == [*LABELS, "lesion"]
    colors = [segment.GetColor() for segment in segments]
    np.testing.assert_allclose(colors, [spec.color for spec in segment_specs(labels)], atol=1e-6)
    truth, _ = _nifti(label_path)
    masks = nodes.segment_masks(scene, segmentation, reference=volume)
    for name, value in labels.items():
        np.testing.assert_array_equal(masks[name], to_slicer_order(truth == value), err_msg=name)


def test_an_edited_segmentation_exports_as_a_label_map_on_the_image_grid(
    scene: Any, studies: Path, tmp_path: Path
) -> None:
    image_path, label_path = studies / "ct_000.nii.gz", studies / "labels" / "final" / "ct_000.nii.gz"
    volume = nodes.read_volume(scene, image_path, name="ct_000")
    segmentation = nodes.load_segmentation(scene, label_path, reference=volume, label_names=LABELS, name="seg")
    truth, _ = _nifti(label_path)
    expected = truth.copy()
    expected[expected == LABELS["spleen"]] = 0  # the clinician erases the spleen ...
    expected[5:15, 5:15, 5:10] = LABELS["kidney_left"]  # ... and paints a block of kidney
    nodes.set_segment_mask(scene, segmentation, "spleen", np.zeros(to_slicer_order(truth).shape), reference=volume)
    kidney = to_slicer_order(expected == LABELS["kidney_left"])
    nodes.set_segment_mask(scene, segmentation, "kidney_left", kidney, reference=volume)

    written = nodes.write_label_file(
        scene, segmentation, reference=volume, label_names=LABELS, path=tmp_path / "l.nii.gz"
    )

    exported, exported_affine = _nifti(written)
    image, image_affine = _nifti(image_path)
    assert exported.shape == image.shape
    np.testing.assert_allclose(exported_affine, image_affine, atol=1e-4)
    np.testing.assert_array_equal(exported, expected)
    assert exported.dtype == np.uint8


def test_a_new_segmentation_offers_every_label_empty(scene: Any, studies: Path) -> None:
    volume = nodes.read_volume(scene, studies / "ct_000.nii.gz", name="ct_000")
    segmentation = nodes.new_segmentation(scene, reference=volume, label_names=LABELS, name="empty")
    masks = nodes.segment_masks(scene, segmentation, reference=volume)
    assert list(masks) == list(LABELS)
    assert not any(mask.any() for mask in masks.values())


def test_a_segment_with_an_unknown_name_blocks_the_export(scene: Any, studies: Path, tmp_path: Path) -> None:
    volume = nodes.read_volume(scene, studies / "ct_000.nii.gz", name="ct_000")
    segmentation = nodes.new_segmentation(scene, reference=volume, label_names=LABELS, name="seg")
    segmentation.GetSegmentation().AddEmptySegment("tumour", "tumour", (1.0, 0.0, 0.0))
    with pytest.raises(ActiveLabelError, match="segment 'tumour' is not one of the server's labels"):
        nodes.write_label_file(scene, segmentation, reference=volume, label_names=LABELS, path=tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()


def test_a_label_on_another_grid_is_refused_when_loaded(scene: Any, studies: Path, tmp_path: Path) -> None:
    volume = nodes.read_volume(scene, studies / "ct_000.nii.gz", name="ct_000")
    truth, affine = _nifti(studies / "labels" / "final" / "ct_000.nii.gz")
    shifted = affine.copy()
    shifted[:3, 3] += 30.0
    path = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(truth, shifted), str(path))
    with pytest.raises(ActiveLabelError, match="the segmentation does not fit the image: origin"):
        nodes.load_segmentation(scene, path, reference=volume, label_names=LABELS, name="seg")


def test_loading_and_exporting_leave_no_temporary_nodes_behind(scene: Any, studies: Path, tmp_path: Path) -> None:
    volume = nodes.read_volume(scene, studies / "ct_000.nii.gz", name="ct_000")
    before = scene.GetNumberOfNodes()
    label_path = studies / "labels" / "final" / "ct_000.nii.gz"
    segmentation = nodes.load_segmentation(scene, label_path, reference=volume, label_names=LABELS, name="seg")
    nodes.write_label_file(scene, segmentation, reference=volume, label_names=LABELS, path=tmp_path / "l.nii.gz")
    added = {scene.GetNthNode(i).GetClassName() for i in range(before, scene.GetNumberOfNodes())}
    assert added <= {"vtkMRMLSegmentationNode", "vtkMRMLSegmentationDisplayNode", "vtkMRMLSubjectHierarchyNode"}
    nodes.remove_nodes(scene, segmentation, volume)
    assert not scene.GetNodesByClass("vtkMRMLVolumeNode").GetNumberOfItems()


@pytest.mark.parametrize("grid", ["ras", "left-handed"])
def test_a_slice_sample_exports_only_its_slices_and_the_rest_as_not_annotated(
    scene: Any, tmp_path: Path, grid: str
) -> None:
    rng = np.random.default_rng(2)
    affine = _oblique_affine() if grid == "left-handed" else np.diag([1.5, 1.5, 3.0, 1.0])
    image_path, label_path = tmp_path / "img.nii.gz", tmp_path / "label.nii.gz"
    truth = rng.integers(0, 3, size=(12, 10, 8)).astype(np.uint8)
    nib.save(nib.Nifti1Image(rng.normal(size=truth.shape).astype(np.float32), affine), str(image_path))
    nib.save(nib.Nifti1Image(truth, affine), str(label_path))
    volume = nodes.read_volume(scene, image_path, name="img")
    segmentation = nodes.load_segmentation(scene, label_path, reference=volume, label_names=LABELS, name="seg")
    queue = SliceQueue(axis=2, slices=(5, 1))

    written = nodes.write_label_file(
        scene,
        segmentation,
        reference=volume,
        label_names=LABELS,
        path=tmp_path / "out.nii.gz",
        target=nifti_geometry(image_path),
        slices=queue,
    )

    exported = np.asarray(nib.load(str(written)).dataobj)
    np.testing.assert_array_equal(exported[:, :, [1, 5]], truth[:, :, [1, 5]])
    outside = np.delete(exported, [1, 5], axis=2)
    assert (outside == NOT_ANNOTATED).all()


def test_slice_queue_steps_through_the_slices_and_says_which_to_draw() -> None:
    queue = SliceQueue(axis=2, slices=(40, 12, 27))
    assert (queue.current, queue.previous(), queue.next(), queue.next(), queue.next()) == (12, 12, 27, 40, 40)
    assert queue.text == "slice 3 of 3 (index 40); draw only slices 12, 27, 40"
    with pytest.raises(ActiveLabelError, match="no slices"):
        SliceQueue(axis=2, slices=())
    with pytest.raises(ActiveLabelError, match="slice axis 3"):
        SliceQueue(axis=3, slices=(1,))


def test_keeping_slices_refuses_indices_outside_the_image_and_the_reserved_value() -> None:
    label = np.zeros((4, 4, 4), np.uint8)
    assert (keep_slices(label, axis=0, slices=[2])[[0, 1, 3]] == NOT_ANNOTATED).all()
    with pytest.raises(ActiveLabelError, match=r"slices \[4\] lie outside"):
        keep_slices(label, axis=0, slices=[4])
    label[0, 0, 0] = NOT_ANNOTATED
    with pytest.raises(ActiveLabelError, match="means 'not annotated'"):
        keep_slices(label, axis=0, slices=[0])


def test_the_extension_marks_unannotated_voxels_like_the_server() -> None:
    assert NOT_ANNOTATED == SERVER_NOT_ANNOTATED
