"""The training recipe: schedules, early stopping, mirroring and where dropout acts."""

from __future__ import annotations

import math

import pytest
import torch

from activelabel.config import ConfigError, load_settings
from activelabel.labelmap import LabelMap
from activelabel.ml.inference import mirror_flips, predict_probabilities, sliding_window
from activelabel.ml.networks import NetworkSpec, build_network, dropout_layers, network_outputs, unet_levels
from activelabel.ml.training import Optimizer, Schedule, TrainOptions, learning_rate_at, train_network
from activelabel.ml.transforms import Modality, Preset

PRESET = Preset(modality=Modality.MR, spacing=None, roi_size=(16, 16, 16))
LABELS = LabelMap.from_mapping({"blob": 1})
SPEC = NetworkSpec(out_channels=2, channels=(4, 8), strides=(2,), dropout=0.1)


def _volume(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    label = torch.zeros(1, 16, 16, 16)
    label[:, 4:10, 5:11, 6:12] = 1
    image = label * 0.8 + 0.1 * torch.rand(1, 16, 16, 16, generator=generator)
    return {"image": image, "label": label.to(torch.uint8)}


@pytest.mark.parametrize(
    ("schedule", "middle"), [(Schedule.CONSTANT, 1.0), (Schedule.POLY, 0.5**0.9), (Schedule.COSINE, 0.5)]
)
def test_learning_rate_schedules_start_at_the_rate_and_decay_to_zero_at_the_cap(
    schedule: Schedule, middle: float
) -> None:
    options = TrainOptions(max_epochs=10, learning_rate=0.01, schedule=schedule)
    assert learning_rate_at(0, options=options, total_steps=100) == pytest.approx(0.01)
    assert learning_rate_at(50, options=options, total_steps=100) == pytest.approx(0.01 * middle)
    end = learning_rate_at(100, options=options, total_steps=100)
    assert end == pytest.approx(0.01 if schedule is Schedule.CONSTANT else 0.0, abs=1e-12)


def test_training_stops_after_patience_epochs_without_a_better_validation_dice() -> None:
    network = build_network(SPEC)
    # A learning rate of 0 cannot improve validation Dice after the first epoch.
    options = TrainOptions(max_epochs=10, steps_per_epoch=2, learning_rate=0.0, patience=2, samples_per_volume=1)
    result = train_network(network, [_volume(0)], [_volume(1)], preset=PRESET, labels=LABELS, options=options)
    assert (result.best_epoch, result.epochs, result.steps) == (1, 3, 6)
    assert [record["steps"] for record in result.history] == [2, 4, 6]


DYNUNET = NetworkSpec(out_channels=2, channels=(4, 8, 16), strides=(2, 2), architecture="dynunet", deep_supervision=1)


@pytest.mark.parametrize("spec", [SPEC, DYNUNET], ids=["unet", "dynunet-deep-supervision"])
def test_training_without_patience_runs_to_the_step_cap_with_each_optimizer(spec: NetworkSpec) -> None:
    for optimizer in Optimizer:
        options = TrainOptions(
            max_epochs=2, steps_per_epoch=2, optimizer=optimizer, schedule=Schedule.POLY, mirror_axes=(0, 1, 2)
        )
        result = train_network(build_network(spec), [_volume(0)], [], preset=PRESET, labels=LABELS, options=options)
        assert (result.epochs, result.steps, result.best_epoch) == (2, 4, 2)
        assert all(math.isfinite(record["loss"]) for record in result.history)


def test_deep_supervision_heads_train_and_inference_uses_the_main_head() -> None:
    network = build_network(DYNUNET)
    image = _volume(0)["image"][None]
    network.train()
    heads = network_outputs(network(image), inputs=image)
    assert [tuple(h.shape) for h in heads] == [(1, 2, 16, 16, 16)] * 2
    network.eval()
    assert network_outputs(network(image), inputs=image)[0].shape == (1, 2, 16, 16, 16)
    with pytest.raises(ValueError, match="deep supervision needs the dynunet"):
        NetworkSpec(out_channels=2, deep_supervision=1)
    with pytest.raises(ValueError, match="at most len"):
        NetworkSpec(out_channels=2, channels=(4, 8), strides=(2,), architecture="dynunet", deep_supervision=1)


def test_test_time_mirroring_is_the_mean_over_every_flip() -> None:
    network = build_network(SPEC).eval()
    image = _volume(3)["image"]
    inferer = sliding_window(PRESET.roi_size)
    mirrored = predict_probabilities(network, image, inferer, mirror_axes=(0, 2))
    manual = torch.zeros_like(mirrored)
    for dims in [(), (2,), (4,), (2, 4)]:
        flipped = torch.flip(image, [d - 1 for d in dims]) if dims else image
        probabilities = predict_probabilities(network, flipped, inferer)
        manual += torch.flip(probabilities, [d - 1 for d in dims]) if dims else probabilities
    torch.testing.assert_close(mirrored, manual / 4)
    assert mirror_flips((0, 2)) == [(), (2,), (4,), (2, 4)]


def test_decoder_scope_drops_out_only_in_the_up_path() -> None:
    network = build_network(NetworkSpec(out_channels=3, dropout=0.3, dropout_scope="decoder"))
    levels = unet_levels(network)
    encoder = [layer for stage in (*levels.downs, levels.bottom) for layer in dropout_layers(stage)]
    decoder = [layer for stage in levels.ups for layer in dropout_layers(stage)]
    assert encoder
    assert all(layer.p == 0.0 for layer in encoder)
    assert decoder
    assert all(layer.p == 0.3 for layer in decoder)
    everywhere = build_network(NetworkSpec(out_channels=3, dropout=0.3))
    assert all(layer.p == 0.3 for layer in dropout_layers(everywhere))
    with pytest.raises(ValueError, match="middle"):
        NetworkSpec(out_channels=3, dropout_scope="middle")


@pytest.mark.parametrize(
    ("labels", "setting", "axes"),
    [
        ('{"anterior": 1, "posterior": 2}', "auto", (0, 1, 2)),
        ('{"liver": 1, "kidney_left": 2}', "auto", (1, 2)),
        ('{"liver": 1, "spleen_r": 2}', "auto", (1, 2)),
        ('{"liver": 1}', "none", ()),
        ('{"liver": 1}', "2,1", (1, 2)),
    ],
)
def test_mirror_axes_leave_out_left_right_when_labels_name_a_side(labels: str, setting: str, axes: tuple) -> None:
    settings = load_settings({"labels": labels, "mirror_axes": setting}, studies="/nonexistent", app_dir="/tmp")
    assert settings.mirror_axes == axes
    assert settings.train_options(seed=0).mirror_axes == axes


def test_bad_mirror_axes_name_the_key() -> None:
    with pytest.raises(ConfigError, match="'mirror_axes'"):
        load_settings({"labels": '{"a": 1}', "mirror_axes": "3"}, studies="/nonexistent", app_dir="/tmp")


def test_settings_train_options_carry_the_recipe_and_take_overrides() -> None:
    settings = load_settings({"labels": '{"a": 1}', "optimizer": "sgd", "patience": "0"}, studies="/x", app_dir="/x")
    options = settings.train_options(seed=7, max_epochs=3)
    assert (options.optimizer, options.patience, options.seed, options.max_epochs) == (Optimizer.SGD, None, 7, 3)
    assert options.steps_per_epoch == settings.steps_per_epoch


@pytest.mark.parametrize("architecture", ["unet", "dynunet"])
def test_bottleneck_scope_drops_out_only_in_the_deepest_block(architecture: str) -> None:
    spec = NetworkSpec(out_channels=3, dropout=0.3, dropout_scope="bottleneck", architecture=architecture)
    network = build_network(spec)
    deepest = network.bottleneck if architecture == "dynunet" else unet_levels(network).bottom
    inside = {id(layer) for layer in dropout_layers(deepest)}
    assert inside
    assert all(layer.p == 0.3 for layer in dropout_layers(deepest))
    assert all(layer.p == 0.0 for layer in dropout_layers(network) if id(layer) not in inside)


def test_a_scoring_mode_after_the_only_dropout_is_refused() -> None:
    conf = {"labels": '{"a": 1}', "dropout_scope": "bottleneck", "mc_mode": "decoder"}
    with pytest.raises(ConfigError, match="samples no dropout layer"):
        load_settings(conf, studies="/x", app_dir="/x")


def test_bf16_windows_blend_in_float32_and_match_the_float32_prediction() -> None:
    network = build_network(SPEC).eval()
    image = torch.cat([_volume(4)["image"], _volume(5)["image"]], dim=1)  # 32 voxels deep: two windows
    exact = predict_probabilities(network, image, sliding_window(PRESET.roi_size))
    fast = predict_probabilities(network, image, sliding_window(PRESET.roi_size, bf16=True))
    assert fast.dtype == torch.float32
    assert fast.shape == exact.shape
    assert float((fast - exact).abs().max()) < 0.05  # bfloat16 keeps about 3 significant digits
    assert float((fast.argmax(0) == exact.argmax(0)).float().mean()) > 0.99
