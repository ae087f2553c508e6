"""Click-based correction and login of the Slicer module, without a server.

Clicks: RAS millimetres to the image file's voxel indices on known grids (axis-aligned,
flipped, oblique and left-handed), the refine task's DeepEdit parameters, and the click nodes
and segment replacement with real MRML nodes from the ``slicer-core`` wheel.  Login: the
``Authorization`` header a login sends, and what it refuses.  Nothing is mocked.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import slicer
from nibabel.affines import apply_affine

EXTENSION = Path(__file__).resolve().parents[1] / "slicer_extension" / "ActiveLabel"
sys.path.insert(0, str(EXTENSION))

from ActiveLabelLib import nodes  # noqa: E402
from ActiveLabelLib.clicks import BACKGROUND, ClickSet, ras_points_to_ijk, voxel_indices  # noqa: E402
from ActiveLabelLib.conversions import nifti_geometry, to_slicer_order  # noqa: E402
from ActiveLabelLib.errors import ActiveLabelError  # noqa: E402
from ActiveLabelLib.login import Login  # noqa: E402

LABELS = {"liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4}
SHAPE = (12, 10, 8)


def _oblique_affine() -> np.ndarray:
    """Voxels of 0.8 x 1.1 x 2.5 mm, rotated 30 degrees about S and flipped in R (left-handed), shifted."""
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, 1.0, 1.0]) @ rotation @ np.diag([0.8, 1.1, 2.5])
    affine[:3, 3] = [12.5, -40.0, 7.25]
    return affine


AFFINES = {
    "axis-aligned": np.array([[0.8, 0, 0, -20.0], [0, 0.8, 0, 15.0], [0, 0, 2.5, -100.0], [0, 0, 0, 1]]),
    "flipped (LPS-stored)": np.array([[-0.8, 0, 0, 30.0], [0, -0.8, 0, 25.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]]),
    "oblique left-handed": _oblique_affine(),
}
VOXELS = [(0, 0, 0), (11, 9, 7), (3, 4, 5), (6, 0, 7)]


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


# ---------------------------------------------------------------- RAS -> voxel indices


@pytest.mark.parametrize("grid", list(AFFINES))
def test_a_click_maps_to_the_voxel_whose_centre_is_nearest_on_a_known_affine(grid: str) -> None:
    affine = AFFINES[grid]
    jitter = np.array([0.4, -0.4, 0.3])  # within half a voxel of the centre, along each voxel axis
    ras = [apply_affine(affine, np.array(voxel) + jitter) for voxel in VOXELS]

    indices = voxel_indices(ras, ras_to_ijk=np.linalg.inv(affine), shape=SHAPE)

    assert indices == [list(voxel) for voxel in VOXELS]
    assert all(type(value) is int for index in indices for value in index)  # JSON integers, not NumPy
    np.testing.assert_allclose(
        ras_points_to_ijk(ras, np.linalg.inv(affine)), apply_affine(np.linalg.inv(affine), ras), atol=1e-9
    )


def test_a_click_outside_the_image_is_refused_with_where_it_fell() -> None:
    affine = AFFINES["axis-aligned"]
    outside = apply_affine(affine, [12.0, 2.0, 2.0])  # one voxel past the last i
    with pytest.raises(ActiveLabelError) as refused:
        voxel_indices([outside], ras_to_ijk=np.linalg.inv(affine), shape=SHAPE)
    assert str(refused.value) == (
        "a click at RAS (-10.4, 16.6, -95.0) mm lies outside the image: voxel (12, 2, 2), image shape (12, 10, 8); "
        "delete it and click inside the image."
    )


def test_a_matrix_that_is_not_an_invertible_4x4_is_refused() -> None:
    with pytest.raises(ActiveLabelError, match=r"4x4, got shape \(3, 3\)"):
        voxel_indices([(0, 0, 0)], ras_to_ijk=np.eye(3), shape=SHAPE)
    with pytest.raises(ActiveLabelError, match="not invertible"):
        voxel_indices([(0, 0, 0)], ras_to_ijk=np.zeros((4, 4)), shape=SHAPE)


# ---------------------------------------------------------------- the refine task's parameters


def test_the_params_follow_deepedits_click_convention() -> None:
    affine = AFFINES["flipped (LPS-stored)"]
    at = {voxel: tuple(apply_affine(affine, voxel)) for voxel in VOXELS}
    clicks = ClickSet.of(
        positive={"liver": [at[(3, 4, 5)], at[(6, 0, 7)]], "spleen": [at[(0, 0, 0)]]},
        negative={"spleen": [at[(11, 9, 7)]], "liver": [at[(0, 0, 0)]]},
    )

    params = clicks.params(ras_to_ijk=np.linalg.inv(affine), shape=SHAPE, label_names=LABELS)

    assert params == {
        "liver": [[3, 4, 5], [6, 0, 7]],
        "spleen": [[0, 0, 0]],
        "kidney_right": [],
        "kidney_left": [],
        BACKGROUND: [[0, 0, 0], [11, 9, 7]],  # every segment's negative clicks, segments in name order
    }
    assert json.loads(json.dumps(params)) == params
    assert clicks.labels == ("liver", "spleen")  # the segments a refinement replaces


def test_negative_clicks_alone_still_name_their_segment_and_fill_background() -> None:
    affine = AFFINES["axis-aligned"]
    clicks = ClickSet.of(negative={"kidney_left": [apply_affine(affine, (1, 2, 3))]})
    params = clicks.params(ras_to_ijk=np.linalg.inv(affine), shape=SHAPE, label_names=LABELS)
    assert params["kidney_left"] == []
    assert params[BACKGROUND] == [[1, 2, 3]]
    assert clicks.labels == ("kidney_left",)
    assert clicks.count("kidney_left") == (0, 1)


def test_clicks_on_a_segment_the_server_does_not_know_are_refused() -> None:
    clicks = ClickSet.of(positive={"tumour": [(0, 0, 0)]})
    with pytest.raises(ActiveLabelError, match="clicks on segment 'tumour', which is not one of the server's labels"):
        clicks.params(ras_to_ijk=np.eye(4), shape=SHAPE, label_names=LABELS)


@pytest.mark.parametrize(
    ("positive", "message"),
    [
        ({BACKGROUND: [(0, 0, 0)]}, "may not be named 'background'"),
        ({"liver": [(0, 0)]}, "three numbers"),
        ({"liver": [(0, float("nan"), 0)]}, "three finite numbers"),
    ],
)
def test_malformed_clicks_are_refused(positive: dict[str, list[tuple[float, ...]]], message: str) -> None:
    with pytest.raises(ActiveLabelError, match=message):
        ClickSet.of(positive=positive)


# ---------------------------------------------------------------- click nodes and segments in MRML


def test_clicks_placed_on_a_left_handed_image_reach_the_voxel_of_the_file(scene: Any, tmp_path: Path) -> None:
    """ITK reverses k of a left-handed NIfTI grid, so the file's own affine, not the node's matrix, gives its index."""
    path = tmp_path / "las.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), _oblique_affine()), str(path))
    volume = nodes.read_volume(scene, path, name="las")
    voxel = (3, 4, 5)
    ras = apply_affine(_oblique_affine(), voxel)
    positive = nodes.click_node(scene, "liver", positive=True)
    positive.AddControlPoint(*ras)
    nodes.click_node(scene, "liver", positive=False).AddControlPoint(*apply_affine(_oblique_affine(), (0, 0, 0)))
    assert nodes.click_node(scene, "liver", positive=True) is positive  # one node per segment and sign

    clicks = nodes.clicks_from_nodes(scene)
    grid = nifti_geometry(path)
    params = clicks.params(ras_to_ijk=np.linalg.inv(grid.ijk_to_ras), shape=grid.shape, label_names=LABELS)

    assert params["liver"] == [list(voxel)]
    assert params[BACKGROUND] == [[0, 0, 0]]
    node_matrix = np.linalg.inv(nodes.volume_geometry(volume).ijk_to_ras)
    in_slicer = voxel_indices([ras], ras_to_ijk=node_matrix, shape=SHAPE)[0]
    assert in_slicer == [3, 4, SHAPE[2] - 1 - 5]  # Slicer's own IJK: the same voxel with k reversed


def test_only_the_selected_segments_clicks_show_and_clearing_removes_them(scene: Any) -> None:
    nodes.click_node(scene, "liver", positive=True).AddControlPoint(1.0, 2.0, 3.0)
    nodes.click_node(scene, "spleen", positive=False).AddControlPoint(4.0, 5.0, 6.0)
    nodes.show_clicks_of(scene, "spleen")
    markups = scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode")
    shown = [markups.GetItemAsObject(index) for index in range(markups.GetNumberOfItems())]
    visible = {node.GetName(): bool(node.GetDisplayNode().GetVisibility()) for node in shown}
    assert visible == {"liver + clicks": False, "spleen - clicks": True}
    assert nodes.clicks_from_nodes(scene) == ClickSet.of(
        positive={"liver": [(1.0, 2.0, 3.0)]}, negative={"spleen": [(4.0, 5.0, 6.0)]}
    )
    nodes.remove_clicks(scene)
    assert nodes.clicks_from_nodes(scene).empty
    assert scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode").GetNumberOfItems() == 0


def test_a_refinement_replaces_the_clicked_segments_and_keeps_the_others(scene: Any, tmp_path: Path) -> None:
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    image, before, after = tmp_path / "image.nii.gz", tmp_path / "before.nii.gz", tmp_path / "refined.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), affine), str(image))
    current = np.zeros(SHAPE, np.uint8)
    current[0:4, 0:4, 0:4] = LABELS["liver"]
    current[6:9, 6:9, 4:7] = LABELS["spleen"]  # the clinician's spleen edit
    nib.save(nib.Nifti1Image(current, affine), str(before))
    refined = np.zeros(SHAPE, np.uint8)
    refined[0:6, 0:6, 0:6] = LABELS["liver"]  # the refine task grew the liver ...
    refined[1:2, 1:2, 1:2] = LABELS["kidney_left"]  # ... and answers for every label
    nib.save(nib.Nifti1Image(refined, affine), str(after))
    volume = nodes.read_volume(scene, image, name="image")
    segmentation = nodes.load_segmentation(scene, before, reference=volume, label_names=LABELS, name="seg")

    nodes.replace_segments(scene, segmentation, after, reference=volume, label_names=LABELS, names=("liver",))

    masks = nodes.segment_masks(scene, segmentation, reference=volume)
    np.testing.assert_array_equal(masks["liver"], to_slicer_order(refined == LABELS["liver"]))
    np.testing.assert_array_equal(masks["spleen"], to_slicer_order(current == LABELS["spleen"]))
    assert not masks["kidney_left"].any()


# ---------------------------------------------------------------- login


def test_a_token_login_sends_bearer_and_a_password_login_sends_basic() -> None:
    assert Login.from_form(user="ann", token=" tok-123 ").authorization() == "Bearer tok-123"
    basic = Login.from_form(user=" rev ", password="correct horse").authorization()
    assert basic == "Basic " + base64.b64encode(b"rev:correct horse").decode()
    assert Login.from_form(user="anyone").authorization() is None
    assert [Login(token="t").kind, Login(user="u", password="p").kind, Login().kind] == ["token", "password", "none"]


def test_a_login_never_shows_its_secrets() -> None:
    login = Login.from_form(user="rev", password="correct horse")
    assert "correct horse" not in repr(login)
    assert "correct horse" not in login.text
    assert "tok-123" not in repr(Login.from_form(user="ann", token="tok-123"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user": "", "password": "secret-pw"}, "a password needs the user name"),
        ({"user": "rev", "token": "tok", "password": "secret-pw"}, "enter a token or a password, not both"),
    ],
)
def test_an_inconsistent_login_is_refused_before_any_request(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ActiveLabelError, match=message):
        Login.from_form(**fields)
