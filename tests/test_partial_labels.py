"""Partial labels: voxels marked not annotated (255) are stored, validated and ignored by training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from activelabel.labelmap import NOT_ANNOTATED, LabelMap, annotated_slices, is_partial
from activelabel.ml.losses import PartialDiceCELoss
from activelabel.ml.metrics import dice
from activelabel.ml.networks import NetworkSpec, build_network
from activelabel.ml.training import TrainOptions, train_network, validate
from activelabel.ml.transforms import AnnotatedIndicesd, Modality, Preset, augmentation_transforms
from activelabel.store.validation import InputRejected, check_label_values
from activelabel.strategies.uncertain_slices import spread_slices

LABELS = LabelMap.from_mapping({"blob": 1})
PRESET = Preset(modality=Modality.MR, spacing=None, roi_size=(16, 16, 16))
SPEC = NetworkSpec(out_channels=2, channels=(4, 8), strides=(2,), dropout=0.1)


def _blob(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    label = torch.zeros(1, 16, 16, 16, dtype=torch.uint8)
    label[:, 4:12, 5:11, 3:13] = 1
    image = label * 0.8 + 0.1 * torch.rand(1, 16, 16, 16, generator=generator)
    return {"image": image, "label": label}


def _partial(volume: dict[str, torch.Tensor], *, annotated: slice) -> dict[str, torch.Tensor]:
    """The volume with only the axial slices ``annotated`` labeled, the rest 255."""
    label = torch.full_like(volume["label"], NOT_ANNOTATED)
    label[..., annotated] = volume["label"][..., annotated]
    return {"image": volume["image"], "label": label}


def test_the_reserved_value_is_allowed_in_labels_but_never_a_label_of_its_own() -> None:
    assert NOT_ANNOTATED in LABELS.allowed_values
    check_label_values(np.array([0, 1, NOT_ANNOTATED], np.uint8), LABELS)
    with pytest.raises(InputRejected, match=r"\[7\]"):
        check_label_values(np.array([0, 7], np.uint8), LABELS)
    with pytest.raises(ValueError, match="255 is reserved"):
        LabelMap.from_mapping({"blob": 1, "other": NOT_ANNOTATED})
    assert LABELS.to_channels(np.array([0, 1, NOT_ANNOTATED])).tolist() == [0, 1, NOT_ANNOTATED]


def test_annotated_slices_are_those_with_any_annotated_voxel() -> None:
    label = np.full((4, 5, 6), NOT_ANNOTATED, np.uint8)
    label[:, :, 1] = 0
    label[2, 3, 4] = 1
    assert annotated_slices(label, axis=2) == [1, 4]
    assert annotated_slices(label, axis=0) == [0, 1, 2, 3]
    assert is_partial(label)
    assert not is_partial(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="axis must be one of"):
        annotated_slices(label, axis=3)


def test_dice_leaves_out_the_voxels_the_truth_does_not_annotate() -> None:
    truth = np.array([1, 1, 0, NOT_ANNOTATED, NOT_ANNOTATED])
    prediction = np.array([1, 1, 0, 1, 0])
    assert dice(prediction, truth, 1) == 1.0


def test_the_loss_equals_monai_dice_ce_when_everything_is_annotated() -> None:
    logits = torch.randn(2, 3, 6, 6, 6, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 3, (2, 1, 6, 6, 6), generator=torch.Generator().manual_seed(1))
    reference = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    torch.testing.assert_close(PartialDiceCELoss()(logits, target), reference(logits, target))


def test_unannotated_voxels_change_neither_the_loss_nor_its_gradient() -> None:
    target = torch.randint(0, 3, (1, 1, 6, 6, 6), generator=torch.Generator().manual_seed(2))
    target[..., 3:] = NOT_ANNOTATED
    logits = torch.randn(1, 3, 6, 6, 6, generator=torch.Generator().manual_seed(3), requires_grad=True)
    loss = PartialDiceCELoss()(logits, target)
    loss.backward()
    assert float(logits.grad[..., 3:].abs().max()) == 0.0
    assert float(logits.grad[..., :3].abs().max()) > 0.0
    other = logits.detach().clone()
    other[..., 3:] = 100.0 * torch.randn_like(other[..., 3:])  # anything where nobody annotated
    torch.testing.assert_close(PartialDiceCELoss()(other, target), loss.detach())
    nothing = torch.full_like(target, NOT_ANNOTATED)
    assert float(PartialDiceCELoss()(logits, nothing)) == 0.0


def test_patches_are_centred_only_on_annotated_voxels() -> None:
    volume = _partial(_blob(0), annotated=slice(0, 4))
    indices = AnnotatedIndicesd()(volume)
    flat = volume["label"][0].numpy().ravel()
    assert set(flat[indices[AnnotatedIndicesd.FOREGROUND]].tolist()) <= {1}
    assert set(flat[indices[AnnotatedIndicesd.BACKGROUND]].tolist()) == {0}
    small = Preset(modality=Modality.MR, spacing=None, roi_size=(4, 4, 4))
    augment = augmentation_transforms(small, samples_per_volume=8, foreground_share=0.5)
    augment.set_random_state(seed=0)
    for patch in augment(dict(volume)):
        centre = np.asarray(patch["label"][0])[2, 2, 2]
        assert centre != NOT_ANNOTATED
        assert AnnotatedIndicesd.FOREGROUND not in patch


def test_unannotated_slices_are_not_learned_as_background() -> None:
    """Half the slices unannotated (255) vs the same half wrongly labeled background (0).

    The blob shows in the image on every slice; judged on the slices neither run saw labeled,
    the partial label's model finds it and the wrongly labeled one learned to miss it.
    """

    def trained(labels: list[dict[str, torch.Tensor]]) -> float:
        network = build_network(SPEC)
        torch.manual_seed(0)
        options = TrainOptions(max_epochs=3, steps_per_epoch=20, learning_rate=3e-3, samples_per_volume=2)
        train_network(network, labels, [], preset=PRESET, labels=LABELS, options=options)
        unseen = [_partial(_blob(seed), annotated=slice(8, 16)) for seed in range(3, 5)]
        return validate(network, unseen, preset=PRESET, labels=LABELS)["blob"]

    partial = [_partial(_blob(seed), annotated=slice(0, 8)) for seed in range(3)]
    background = [
        {"image": v["image"], "label": torch.where(v["label"] == NOT_ANNOTATED, 0, v["label"])} for v in partial
    ]
    ignored, wrong = trained(partial), trained(background)
    assert wrong < 0.2
    assert ignored > wrong + 0.25


def test_slice_picks_are_the_most_uncertain_spread_apart_and_never_annotated() -> None:
    scores = [0.1, 0.9, 0.85, 0.8, 0.2, 0.7, 0.3, 0.6]
    assert spread_slices(scores, count=3, min_gap=2) == [1, 3, 5]  # 2 is next to 1
    assert spread_slices(scores, count=3, min_gap=2, exclude=[1]) == [2, 5, 7]
    assert spread_slices(scores, count=3, min_gap=1) == [1, 2, 3]
    assert spread_slices(scores, count=6, min_gap=4) == [1, 2, 3, 5, 6, 7]  # the gap shrinks when it must
    assert spread_slices(scores, count=10, exclude=range(6)) == [6, 7]  # all that is left
    with pytest.raises(ValueError, match="count must be >= 1"):
        spread_slices(scores, count=0)
