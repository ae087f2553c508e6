"""MC dropout: only dropout varies between passes; normalization stays in eval mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from activelabel.ml.networks import NetworkSpec, build_network, initial_state, mc_dropout


@pytest.fixture
def batchnorm_network() -> nn.Module:
    torch.manual_seed(0)
    spec = NetworkSpec(out_channels=3, channels=(4, 8), strides=(2,), norm="batch", dropout=0.3)
    network = build_network(spec)
    network.train()
    with torch.no_grad():  # give the BatchNorm layers non-trivial running statistics
        for _ in range(3):
            network(torch.randn(2, 1, 16, 16, 16))
    return network


def _norm_state(network: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in network.state_dict().items() if "running" in k or "num_batches" in k}


def test_mc_dropout_samples_differ_and_eval_mode_does_not(batchnorm_network: nn.Module) -> None:
    x = torch.randn(1, 1, 16, 16, 16)
    batchnorm_network.eval()
    with torch.no_grad():
        torch.testing.assert_close(batchnorm_network(x), batchnorm_network(x))
        with mc_dropout(batchnorm_network):
            first, second = batchnorm_network(x), batchnorm_network(x)
    assert not torch.allclose(first, second)


def test_mc_dropout_leaves_norm_statistics_unchanged(batchnorm_network: nn.Module) -> None:
    before = _norm_state(batchnorm_network)
    with torch.no_grad(), mc_dropout(batchnorm_network):
        for _ in range(4):
            batchnorm_network(torch.randn(1, 1, 16, 16, 16) * 10 + 5)
    after = _norm_state(batchnorm_network)
    assert before.keys() == after.keys()
    assert before
    for key in before:
        torch.testing.assert_close(before[key], after[key])


def test_mc_dropout_samples_only_dropout_layers(batchnorm_network: nn.Module) -> None:
    with mc_dropout(batchnorm_network):
        training = {type(m).__name__ for m in batchnorm_network.modules() if m.training}
        norms_training = [m for m in batchnorm_network.modules() if isinstance(m, nn.BatchNorm3d) and m.training]
    assert training == {"Dropout"}
    assert not norms_training


def test_mc_dropout_restores_previous_modes(batchnorm_network: nn.Module) -> None:
    batchnorm_network.train()
    with mc_dropout(batchnorm_network):
        pass
    assert all(m.training for m in batchnorm_network.modules())


def test_network_without_dropout_layers_is_refused() -> None:
    with pytest.raises(ValueError, match="no dropout layers"), mc_dropout(nn.Sequential(nn.Conv3d(1, 2, 3))):
        pass


def test_zero_dropout_gives_identical_samples() -> None:
    net = build_network(NetworkSpec(out_channels=2, channels=(4, 8), strides=(2,), dropout=0.0))
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad(), mc_dropout(net):
        torch.testing.assert_close(net(x), net(x))


def test_initial_state_is_deterministic_and_keeps_global_rng() -> None:
    spec = NetworkSpec(out_channels=3, channels=(4, 8), strides=(2,))
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = initial_state(spec, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    second = initial_state(spec, seed=7)
    for key in first:
        torch.testing.assert_close(first[key], second[key])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"out_channels": 1}, "out_channels"),
        ({"out_channels": 3, "channels": (4, 8, 16), "strides": (2,)}, "strides"),
        ({"out_channels": 3, "dropout": 1.0}, "dropout"),
    ],
)
def test_invalid_network_specs_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NetworkSpec(**kwargs)
