"""Decoder-only MC dropout: shared layers run once per window, sampled layers give K samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.nets import SegResNet
from torch import nn

from activelabel.config import ConfigError, load_settings
from activelabel.ml.decoder_dropout import (
    DecoderDropoutSampler,
    McMode,
    decoder_dropout_probabilities,
    split_samples,
    unet_levels,
)
from activelabel.ml.inference import mc_dropout_samples, predict_probabilities, sliding_window
from activelabel.ml.networks import NetworkSpec, build_network

SAMPLED_MODES = [mode for mode in McMode if mode is not McMode.FULL]
ROI = (16, 16, 16)


def _network(*, dropout: float = 0.3, num_res_units: int = 1) -> nn.Module:
    torch.manual_seed(0)
    spec = NetworkSpec(
        out_channels=3, channels=(4, 8, 16), strides=(2, 2), dropout=dropout, num_res_units=num_res_units
    )
    return build_network(spec).eval()


@pytest.fixture
def network() -> nn.Module:
    return _network()


@pytest.mark.parametrize("mode", SAMPLED_MODES)
def test_one_sample_in_eval_mode_equals_the_network_output_exactly(network: nn.Module, mode: McMode) -> None:
    window = torch.randn(1, 1, *ROI)
    with torch.no_grad():
        expected = network(window)
        stacked = DecoderDropoutSampler(network, samples=1, mode=mode)(window)
    assert torch.equal(stacked, expected)


@pytest.mark.parametrize("mode", SAMPLED_MODES)
def test_many_samples_in_eval_mode_equal_the_network_output(network: nn.Module, mode: McMode) -> None:
    windows = torch.randn(2, 1, *ROI)
    with torch.no_grad():
        expected = network(windows)
        stacked = DecoderDropoutSampler(network, samples=4, mode=mode)(windows)
    for index in range(2):
        for sample in split_samples(stacked[index], samples=4):
            # a batch of K rounds differently from a batch of one; nothing else differs
            torch.testing.assert_close(sample, expected[index], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", SAMPLED_MODES)
def test_zero_dropout_samples_equal_the_deterministic_output(mode: McMode) -> None:
    network = _network(dropout=0.0)
    window = torch.randn(1, 1, *ROI)
    sampler = DecoderDropoutSampler(network, samples=3, mode=mode)
    with torch.no_grad(), sampler.sampling():
        stacked = sampler(window)
    for sample in split_samples(stacked[0], samples=3):
        torch.testing.assert_close(sample, network(window)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", SAMPLED_MODES)
def test_samples_differ_when_dropout_samples(network: nn.Module, mode: McMode) -> None:
    sampler = DecoderDropoutSampler(network, samples=3, mode=mode)
    with torch.no_grad(), sampler.sampling():
        first, second, third = split_samples(sampler(torch.randn(1, 1, *ROI))[0], samples=3)
    assert not torch.allclose(first, second)
    assert not torch.allclose(second, third)


def test_sampling_trains_only_the_sampled_dropout_layers_and_restores_modes(network: nn.Module) -> None:
    network.train()
    sampler = DecoderDropoutSampler(network, samples=2, mode=McMode.DECODER)
    with sampler.sampling():
        training = [module for module in network.modules() if module.training]
        assert set(training) == set(sampler.sampled_dropout)
        assert not any(layer.training for layer in sampler.shared_dropout)
    assert all(module.training for module in network.modules())


def test_stacked_output_has_k_times_the_classes_sample_major(network: nn.Module) -> None:
    sampler = DecoderDropoutSampler(network, samples=5, mode=McMode.HEAD)
    with torch.no_grad():
        stacked = sampler(torch.randn(2, 1, *ROI))
    assert stacked.shape == (2, 5 * 3, *ROI)
    assert split_samples(stacked[0], samples=5).shape == (5, 3, *ROI)


def test_split_samples_rejects_channels_that_do_not_divide() -> None:
    with pytest.raises(ValueError, match="not a multiple of 4 samples"):
        split_samples(torch.zeros(6, 2, 2, 2), samples=4)


@pytest.mark.parametrize("mode", SAMPLED_MODES)
def test_encoder_runs_once_per_window_and_the_output_block_once_per_window_as_a_batch(
    network: nn.Module, mode: McMode
) -> None:
    levels = unet_levels(network)
    inferer = sliding_window(ROI, overlap=0.25)
    image = torch.randn(1, 28, 16, 16)  # two windows along x
    encoder_batches: list[int] = []
    output_batches: list[int] = []
    hooks = [
        levels.downs[0].register_forward_hook(lambda _m, _i, out: encoder_batches.append(out.shape[0])),
        levels.ups[0].register_forward_hook(lambda _m, _i, out: output_batches.append(out.shape[0])),
    ]
    try:
        with torch.no_grad():
            predict_probabilities(network, image, inferer)
            windows = len(encoder_batches)
            encoder_batches.clear()
            output_batches.clear()
            probs = decoder_dropout_probabilities(network, image[None], inferer, samples=6, mode=mode)
    finally:
        for hook in hooks:
            hook.remove()
    assert windows == 2
    # batched mode samples from the first block's dropout on, so even the first block's output is K
    assert encoder_batches == [6 if mode is McMode.BATCHED else 1] * windows
    assert output_batches == [6] * windows
    assert probs.shape == (6, 3, 28, 16, 16)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(6, 28, 16, 16))


def test_scoring_in_decoder_mode_folds_k_samples_and_keeps_the_embedding(network: nn.Module) -> None:
    inferer = sliding_window(ROI, overlap=0.25)
    accumulator, embedding = mc_dropout_samples(
        network, torch.randn(1, 16, 16, 16), inferer, samples=4, mode=McMode.DECODER
    )
    assert accumulator.count == 4
    assert embedding.shape == (16,)
    assert accumulator.result(dilation=1).mutual_information >= 0.0


def test_networks_that_cannot_be_split_sample_k_replicated_windows_in_one_batch() -> None:
    spec = NetworkSpec(out_channels=3, channels=(4, 8, 16), strides=(2, 2), dropout=0.3, architecture="dynunet")
    network = build_network(spec).eval()
    sampler = DecoderDropoutSampler(network, samples=3, mode="batched")  # a DynUNet splits only in decoder mode
    window = torch.randn(2, 1, 16, 16, 16)
    assert sampler.shared_dropout == []
    with sampler.sampling():
        stacked = sampler(window)
    assert stacked.shape == (2, 3 * 3, 16, 16, 16)
    samples = stacked.reshape(2, 3, 3, 16, 16, 16)
    assert not torch.allclose(samples[:, 0], samples[:, 1])  # each copy draws its own dropout mask
    torch.testing.assert_close(sampler(window).reshape(2, 3, 3, 16, 16, 16)[:, 0], network(window))


def test_dynunet_decoder_mode_runs_the_encoder_once_and_samples_the_up_path() -> None:
    spec = NetworkSpec(
        out_channels=3,
        channels=(4, 8, 16),
        strides=(2, 2),
        dropout=0.3,
        architecture="dynunet",
        dropout_scope="decoder",
    )
    network = build_network(spec).eval()
    calls: list[int] = []
    network.input_block.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    sampler = DecoderDropoutSampler(network, samples=4, mode="decoder")
    window = torch.randn(2, 1, 16, 16, 16)
    torch.testing.assert_close(sampler(window).reshape(2, 4, 3, 16, 16, 16)[:, 3], network(window))
    with sampler.sampling():
        samples = sampler(window).reshape(2, 4, 3, 16, 16, 16)
    assert not torch.allclose(samples[:, 0], samples[:, 1])
    assert calls == [2, 2, 2]  # the encoder saw each window once per call, never K times
    assert sampler.sampled_dropout
    assert all(layer.p == 0.0 for layer in sampler.shared_dropout)


def test_dynunet_bottleneck_mode_repeats_the_bottleneck_input_and_samples_its_dropout() -> None:
    spec = NetworkSpec(
        out_channels=3,
        channels=(4, 8, 16),
        strides=(2, 2),
        dropout=0.3,
        architecture="dynunet",
        dropout_scope="bottleneck",
    )
    network = build_network(spec).eval()
    sampler = DecoderDropoutSampler(network, samples=3, mode="bottleneck")
    window = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(sampler(window).reshape(1, 3, 3, 16, 16, 16)[:, 2], network(window))
    with sampler.sampling():
        samples = sampler(window).reshape(1, 3, 3, 16, 16, 16)
    assert not torch.allclose(samples[:, 0], samples[:, 1])
    with pytest.raises(ValueError, match="no dropout layer from where 'decoder' sampling starts"):
        DecoderDropoutSampler(network, samples=3, mode="decoder")


def test_a_network_without_dropout_has_nothing_to_sample() -> None:
    with pytest.raises(ValueError, match="no dropout layer to sample"):
        DecoderDropoutSampler(SegResNet(spatial_dims=3, init_filters=8), samples=2, mode="decoder")


def test_full_mode_is_not_a_sampler_mode(network: nn.Module) -> None:
    with pytest.raises(ValueError, match="samples the whole network"):
        DecoderDropoutSampler(network, samples=2, mode=McMode.FULL)


def test_a_head_without_dropout_is_rejected() -> None:
    network = _network(num_res_units=0)  # the output block is a plain convolution
    with pytest.raises(ValueError, match="no dropout layer from where 'head' sampling starts"):
        DecoderDropoutSampler(network, samples=2, mode=McMode.HEAD)


def test_mc_mode_setting_parses_case_insensitively(tmp_path: Path) -> None:
    settings = load_settings(
        {"labels": '{"a": 1}', "mc_mode": "Batched"}, studies=str(tmp_path), app_dir="/app", env={}
    )
    assert settings.mc_mode is McMode.BATCHED


def test_mc_mode_setting_has_a_default(tmp_path: Path) -> None:
    settings = load_settings({"labels": '{"a": 1}'}, studies=str(tmp_path), app_dir="/app", env={})
    assert isinstance(settings.mc_mode, McMode)


def test_a_bad_mc_mode_is_a_config_error_listing_the_modes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'mc_mode'.*full, batched, bottleneck, decoder, head"):
        load_settings({"labels": '{"a": 1}', "mc_mode": "encoder"}, studies=str(tmp_path), app_dir="/app", env={})
