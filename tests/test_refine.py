"""Click-based correction: click simulation, the refinement input, and the ``refine`` task on a real server."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient

from activelabel.data.layout import truth_path
from activelabel.labelmap import NOT_ANNOTATED, LabelMap
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import sliding_window
from activelabel.ml.interaction import (
    BACKGROUND,
    FOCUS_RADIUS,
    Click,
    Clicks,
    SimulatedInteraction,
    error_regions,
    largest_error_click,
    points_to_model_grid,
    refine_inputs,
    refine_spec,
    refine_state_from_segmentation,
    train_refine_network,
    with_model_masks,
)
from activelabel.ml.networks import NetworkSpec, build_network
from activelabel.ml.training import TrainOptions
from activelabel.ml.transforms import Modality, Preset
from activelabel.store.validation import InputRejected
from activelabel.tasks.refine import parse_clicks
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory

LABELS = LabelMap.from_mapping({"anterior": 1, "posterior": 2})


def _cube(shape: tuple[int, int, int], low: int, high: int) -> np.ndarray:
    cube = np.zeros(shape, dtype=bool)
    cube[low:high, low:high, low:high] = True
    return cube


def test_largest_error_click_is_the_deepest_voxel_of_the_largest_wrong_region() -> None:
    truth = np.zeros((20, 20, 20), dtype=np.int64)
    truth[_cube(truth.shape, 4, 13)] = 1  # 9^3 voxels of label 1, all missed by the mask
    mask = np.zeros_like(truth)
    mask[16:18, 16:18, 16:18] = 2  # a small false positive elsewhere
    assert error_regions(mask, truth)[1] == 2
    click = largest_error_click(mask, truth)
    assert click == Click(point=(8, 8, 8), channel=1)


def test_a_false_positive_region_gets_a_background_click_and_a_right_mask_none() -> None:
    truth = np.zeros((16, 16, 16), dtype=np.int64)
    mask = np.zeros_like(truth)
    mask[_cube(truth.shape, 3, 10)] = 2
    click = largest_error_click(mask, truth)
    assert click is not None
    assert click.channel == 0
    assert click.point == (6, 6, 6)
    assert largest_error_click(truth, truth) is None


def test_refine_input_holds_image_mask_one_hot_and_a_guidance_channel_per_label_and_background() -> None:
    image = torch.randn(1, 12, 12, 12)
    mask = np.zeros((12, 12, 12), dtype=np.int64)
    mask[2:5, 2:5, 2:5] = 2
    clicks = Clicks()
    clicks.add(Click(point=(6, 6, 6), channel=1))
    clicks.add(Click(point=(3, 3, 3), channel=0))
    inputs = refine_inputs(image, mask, clicks, num_labels=2)
    assert inputs.shape == (1 + 2 + 2 + 1, 12, 12, 12)
    assert torch.equal(inputs[0], image[0])
    assert torch.equal(inputs[1], torch.zeros(12, 12, 12))
    assert inputs[2].sum() == 27
    positive_1, positive_2, negative = inputs[3], inputs[4], inputs[5]
    assert positive_1[6, 6, 6] == positive_1.max() == 1.0
    assert positive_2.max() == 0.0
    assert negative[3, 3, 3] == negative.max() == 1.0
    assert list(clicks.guidance(2)) == ["label_1", "label_2", BACKGROUND]


def test_refine_network_reads_the_guidance_channels_and_never_drops_out() -> None:
    spec = NetworkSpec(out_channels=3, channels=(8, 16, 32), strides=(2, 2), dropout=0.2)
    refine = refine_spec(spec)
    assert (refine.in_channels, refine.out_channels, refine.dropout) == (6, 3, 0.0)


def test_a_refinement_network_started_from_the_segmentation_weights_answers_as_the_segmentation_network() -> None:
    spec = NetworkSpec(out_channels=3, channels=(8, 16, 32), strides=(2, 2), dropout=0.2)
    torch.manual_seed(0)
    segmentation = build_network(spec).eval()
    refinement = build_network(refine_spec(spec)).eval()
    refinement.load_state_dict(refine_state_from_segmentation(segmentation.state_dict(), spec=refine_spec(spec)))
    image = torch.randn(1, 1, 16, 16, 16)
    # Whatever the mask and the clicks say, the untrained guidance weights are zero.
    inputs = torch.cat([image, torch.rand(1, 5, 16, 16, 16)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(refinement(inputs), segmentation(image))
    other = NetworkSpec(out_channels=3, channels=(8, 16), strides=(2,), dropout=0.2)
    with pytest.raises(ValueError, match="lack"):
        refine_state_from_segmentation(build_network(other).state_dict(), spec=refine_spec(spec))


def test_the_first_refine_training_starts_from_the_segmentation_network_and_later_ones_from_its_own(
    tmp_path: Path,
) -> None:
    spec = NetworkSpec(out_channels=3, channels=(8, 16, 32), strides=(2, 2), dropout=0.2)
    labels = LabelMap.from_mapping({"anterior": 1, "posterior": 2})
    torch.manual_seed(1)
    segmentation = build_network(spec)
    truth = np.zeros((1, 16, 16, 16), dtype=np.int64)
    truth[0][_cube((16, 16, 16), 4, 10)] = 1
    volume = {"image": torch.randn(1, 16, 16, 16), "label": torch.as_tensor(truth)}
    store = ModelStore(tmp_path, name="refine")
    store.ensure_initial(refine_spec(spec), labels.to_dict(), seed=0)
    # A learning rate of 0: what is published is exactly where training started.
    frozen = TrainOptions(max_epochs=1, steps_per_epoch=1, learning_rate=0.0)
    preset = Preset(modality=Modality.MR, spacing=None, roi_size=(16, 16, 16))

    def train() -> dict[str, torch.Tensor]:
        train_refine_network(
            store,
            [volume],
            preset=preset,
            labels=labels,
            options=frozen,
            segmentation=segmentation,
            inferer=sliding_window((16, 16, 16), overlap=0.25),
        )
        return store.load()[0]

    expected = refine_state_from_segmentation(segmentation.state_dict(), spec=refine_spec(spec))
    first = train()
    assert all(torch.equal(first[key], expected[key]) for key in expected)
    torch.manual_seed(2)
    segmentation = build_network(spec)  # a new segmentation model: the trained refine network keeps its weights
    second = train()
    assert all(torch.equal(second[key], first[key]) for key in first)


def test_clicks_move_to_the_model_grid_through_world_coordinates() -> None:
    # The file: 2 mm voxels with the first axis flipped; the model grid: 1 mm, RAS, other origin.
    source = np.array([[-2.0, 0, 0, 40], [0, 2.0, 0, -10], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    model = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, -10], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    assert points_to_model_grid([[0, 0, 0], [5, 3, 1]], source_affine=source, model_affine=model) == [
        (40, 0, 0),
        (30, 6, 2),
    ]
    assert points_to_model_grid([], source_affine=source, model_affine=model) == []


def test_simulated_interaction_gives_the_refinement_input_and_clicks_of_the_truths_classes() -> None:
    truth = np.zeros((1, 24, 24, 24), dtype=np.int64)
    truth[0][_cube((24, 24, 24), 6, 14)] = 1
    truth[0][_cube((24, 24, 24), 14, 20)] = 2
    interaction = SimulatedInteraction(num_labels=2, max_clicks=5, seed=3)
    clicked = 0
    for _ in range(20):
        patch = interaction({"image": torch.randn(1, 24, 24, 24), "label": torch.as_tensor(truth)})
        assert patch["image"].shape == (6, 24, 24, 24)
        peaks = []
        for channel, guidance in zip((1, 2, 0), patch["image"][3:], strict=True):
            found = np.argwhere(guidance.numpy() == 1.0)
            # A click of channel c sits on a voxel whose truth is c.
            assert all(truth[0][tuple(p)] == channel for p in found)
            peaks += [tuple(p) for p in found]
        clicked += len(peaks)
        target = torch.as_tensor(patch["label"]).numpy()[0]
        counted = target != NOT_ANNOTATED
        assert np.array_equal(target[counted], truth[0][counted])
        if not peaks:
            assert counted.all(), "a patch without clicks keeps its whole truth"
            continue
        # With clicks the loss counts only within FOCUS_RADIUS of them.
        grid = np.indices(target.shape).reshape(3, -1).T
        distance = np.min([np.linalg.norm(grid - np.asarray(p), axis=1) for p in peaks], axis=0).reshape(target.shape)
        assert np.array_equal(counted, distance <= FOCUS_RADIUS)
    assert clicked > 0


def test_training_masks_are_the_segmentation_models_own_answers_and_the_label_returns_to_the_truth() -> None:
    truth = np.zeros((1, 24, 24, 24), dtype=np.int64)
    truth[0][_cube((24, 24, 24), 6, 14)] = 1
    network = build_network(NetworkSpec(out_channels=3, channels=(8, 16, 32), strides=(2, 2), dropout=0.5))
    volume = {"image": torch.randn(1, 24, 24, 24), "label": torch.as_tensor(truth)}
    inferer = sliding_window((16, 16, 16), overlap=0.25)
    (stacked,) = with_model_masks([volume], network, inferer=inferer, samples=2)
    label = torch.as_tensor(stacked["label"])
    assert label.shape == (3, 24, 24, 24)
    assert torch.equal(label[0], torch.as_tensor(truth[0]))
    assert not torch.equal(label[1], label[2]), "MC-dropout samples should differ"
    interaction = SimulatedInteraction(num_labels=2, max_clicks=0, model_mask_share=1.0, seed=0)
    patch = interaction(stacked)
    assert torch.equal(torch.as_tensor(patch["label"]), torch.as_tensor(truth))
    one_hot = patch["image"][1:3].numpy()
    masks = [(label[k].numpy() == c) for k in (1, 2) for c in (1, 2)]
    # No clicks asked for: the mask channels are exactly one of the model's two answers.
    assert np.array_equal(one_hot, np.stack(masks[:2])) or np.array_equal(one_hot, np.stack(masks[2:]))


def test_a_model_mask_share_outside_0_to_1_or_a_focus_radius_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match=r"model_mask_share must be in \[0, 1\], got 1.5"):
        SimulatedInteraction(num_labels=2, model_mask_share=1.5)
    with pytest.raises(ValueError, match="focus_radius must be positive or None, got 0"):
        SimulatedInteraction(num_labels=2, focus_radius=0)


@pytest.mark.parametrize(
    ("request_clicks", "message"),
    [
        ({"anterior": [[1, 2]]}, "list of [i, j, k]"),
        ({"background": "3,4,5"}, "list of [i, j, k]"),
        ({"posterior": [[1, 2, True]]}, "list of [i, j, k]"),
        ({"anterior": [], "device": "cpu"}, "at least one click"),
    ],
)
def test_malformed_clicks_are_refused_with_the_reason(request_clicks: dict, message: str) -> None:
    with pytest.raises(InputRejected, match=message.replace("[", r"\[")):
        parse_clicks(request_clicks, LABELS)


def test_click_keys_that_are_not_labels_are_other_parameters() -> None:
    clicks = parse_clicks({"anterior": [[1, 2, 3]], "client_id": "ann", "background": []}, LABELS)
    assert clicks == {"anterior": [[1.0, 2.0, 3.0]], "background": []}


# The server: training publishes the refinement network beside the segmentation network.

CONF = {"refine_steps": "2"}


@pytest.fixture(scope="module")
def refine_studies(server_factory: ServerFactory) -> Path:
    return server_factory.phantoms("refine", count=4, seed=5, labeled=2)


@pytest.fixture(scope="module")
def refine_server(refine_studies: Path, server_factory: ServerFactory) -> ServerProcess:
    return server_factory.start(refine_studies, conf=CONF)


def _click_params(studies: Path, image_id: str) -> tuple[dict[str, list[list[int]]], np.ndarray]:
    """One positive click inside the liver of the truth and one background click in the corner."""
    truth = np.asarray(nib.load(truth_path(studies, image_id)).dataobj)
    inside = np.argwhere(truth == 1)
    centre = inside[len(inside) // 2]
    return {"liver": [[int(v) for v in centre]], "background": [[0, 0, 0]]}, truth


def test_refine_before_any_training_answers_409_with_the_reason(refine_server: ServerProcess) -> None:
    response = requests.post(
        f"{refine_server.url}/infer/refine",
        params={"image": "ct_002"},
        data={"params": json.dumps({"liver": [[10, 10, 10]]})},
        timeout=60,
    )
    assert response.status_code == 409, response.text
    assert "not trained yet" in response.json()["detail"]


def test_training_publishes_the_refine_network_and_refine_returns_a_label_on_the_image_grid(
    refine_server: ServerProcess, refine_studies: Path, tmp_path: Path
) -> None:
    response = requests.post(f"{refine_server.url}/train/segmentation", json={}, timeout=60)
    assert response.status_code == 200, response.text
    task = refine_server.wait_for_task("train")
    assert task["status"] == "DONE", refine_server.log_tail()
    info = requests.get(f"{refine_server.url}/info/", timeout=30).json()
    assert "refine" in info["models"]
    assert info["activelabel"]["refine_model"]["version"] == 1

    params, truth = _click_params(refine_studies, "ct_002")
    mask = truth.copy()
    mask[mask == 2] = 0  # the clinician's current mask misses the spleen
    image = nib.load(refine_studies / "ct_002.nii.gz")
    mask_file = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), image.affine), mask_file)
    client = MONAILabelClient(refine_server.url, tmpdir=str(tmp_path), client_id="ann")
    label_file, result = client.infer("refine", "ct_002", params, label_in=str(mask_file))
    refined = nib.load(label_file)
    assert refined.shape == image.shape
    np.testing.assert_allclose(refined.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(refined.dataobj))) <= {0, 1, 2, 3, 4}
    assert json.loads(result)["model_version"] == 1 if isinstance(result, str) else result["model_version"] == 1

    # Without a mask the task refines the segmentation task's answer.
    response = requests.post(
        f"{refine_server.url}/infer/refine",
        params={"image": "ct_002", "output": "image"},
        data={"params": json.dumps(params)},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    out = tmp_path / "no-mask.nii.gz"
    out.write_bytes(response.content)
    assert nib.load(out).shape == image.shape


@pytest.mark.parametrize(
    ("params", "status", "reason"),
    [
        ({"liver": [[1, 2]]}, 422, "list of [i, j, k]"),
        ({"liver": []}, 422, "at least one click"),
        ({"liver": [[10_000, 0, 0]]}, 422, "outside the image"),
    ],
)
def test_refine_refuses_bad_clicks_with_4xx(
    refine_server: ServerProcess, params: dict, status: int, reason: str
) -> None:
    if requests.get(f"{refine_server.url}/info/", timeout=30).json()["activelabel"]["refine_model"]["version"] < 1:
        pytest.fail("the training test above must run first (it publishes the refine network)")
    response = requests.post(
        f"{refine_server.url}/infer/refine",
        params={"image": "ct_002"},
        data={"params": json.dumps(params)},
        timeout=120,
    )
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
