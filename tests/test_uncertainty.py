"""Uncertainty maps and their aggregation on inputs with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from activelabel.ml.uncertainty import (
    SampleAccumulator,
    UncertaintyMetric,
    aggregate,
    expected_entropy,
    foreground_mask,
    max_entropy,
    mutual_information,
    predictive_entropy,
    predictive_variance,
    volume_uncertainty,
)


def _random_probs(n: int = 6, c: int = 3, shape: tuple[int, ...] = (5, 6, 7), *, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, c, *shape, generator=generator) * 2.0, dim=1)


def test_uniform_probabilities_give_entropy_log_c() -> None:
    probs = torch.full((4, 5, 3, 3, 3), 1.0 / 5)
    torch.testing.assert_close(predictive_entropy(probs), torch.full((3, 3, 3), math.log(5)))
    assert max_entropy(5) == pytest.approx(math.log(5))


def test_identical_samples_give_zero_mutual_information_and_variance() -> None:
    one = _random_probs(n=1)
    probs = one.expand(8, *one.shape[1:]).clone()
    torch.testing.assert_close(mutual_information(probs), torch.zeros(probs.shape[2:]), atol=1e-6, rtol=0)
    torch.testing.assert_close(predictive_variance(probs), torch.zeros(probs.shape[2:]), atol=1e-7, rtol=0)


def test_disagreeing_samples_give_more_mutual_information() -> None:
    agree = torch.tensor([[0.9, 0.1], [0.9, 0.1]]).reshape(2, 2, 1)
    disagree = torch.tensor([[0.9, 0.1], [0.1, 0.9]]).reshape(2, 2, 1)
    assert float(mutual_information(disagree)) > float(mutual_information(agree)) + 0.3
    assert float(predictive_variance(disagree)) > float(predictive_variance(agree))


def test_mutual_information_is_total_minus_expected_entropy() -> None:
    probs = _random_probs()
    torch.testing.assert_close(mutual_information(probs), predictive_entropy(probs) - expected_entropy(probs))
    assert bool((mutual_information(probs) >= 0).all())


def test_foreground_aggregation_ignores_pure_background() -> None:
    voxel_map = torch.full((10, 10, 10), 5.0)
    voxel_map[2:4, 2:4, 2:4] = 1.0
    mask = torch.zeros(10, 10, 10, dtype=torch.bool)
    mask[2:4, 2:4, 2:4] = True
    assert aggregate(voxel_map, mask) == pytest.approx(1.0)


def test_empty_foreground_falls_back_to_whole_volume() -> None:
    voxel_map = torch.arange(8, dtype=torch.float32).reshape(2, 2, 2)
    assert aggregate(voxel_map, torch.zeros(2, 2, 2, dtype=torch.bool)) == pytest.approx(3.5)


def test_foreground_mask_dilates_by_the_given_radius() -> None:
    mean = torch.zeros(2, 9, 9, 9)
    mean[0] = 1.0
    mean[:, 4, 4, 4] = torch.tensor([0.0, 1.0])
    assert int(foreground_mask(mean, dilation=0).sum()) == 1
    assert int(foreground_mask(mean, dilation=1).sum()) == 27
    assert int(foreground_mask(mean, dilation=2).sum()) == 125


def test_volume_uncertainty_is_restricted_to_predicted_foreground() -> None:
    probs = torch.zeros(4, 2, 8, 8, 8)
    probs[:, 0] = 1.0  # confident background everywhere
    probs[:2, :, 3, 3, 3] = torch.tensor([0.2, 0.8])  # foreground, two samples disagree
    probs[2:, :, 3, 3, 3] = torch.tensor([0.4, 0.6])
    result = volume_uncertainty(probs, dilation=0)
    assert result.foreground_fraction == pytest.approx(1 / 512)
    assert result.entropy == pytest.approx(float(predictive_entropy(probs)[3, 3, 3]), rel=1e-5)
    assert result.mutual_information > 0


def test_accumulator_matches_stacked_samples() -> None:
    probs = _random_probs(n=5, c=4)
    accumulator = SampleAccumulator()
    for sample in probs:
        accumulator.add(sample)
    streamed = accumulator.result(dilation=1)
    stacked = volume_uncertainty(probs, dilation=1)
    for metric in UncertaintyMetric:
        assert streamed.score(metric) == pytest.approx(stacked.score(metric), rel=1e-5, abs=1e-8)
    assert streamed.samples == 5


def test_accumulator_without_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        SampleAccumulator().result()


def test_probabilities_without_sample_axis_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(N, C, \*spatial\)"):
        predictive_entropy(torch.ones(3, 4))
