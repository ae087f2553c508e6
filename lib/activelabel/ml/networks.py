"""Network factories and Monte-Carlo dropout control.

The segmentation network is a MONAI 3D UNet with dropout inside every convolution block,
so that dropout can be sampled at inference time (MC dropout) while normalization layers
stay in eval mode and keep their statistics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import UNet
from torch import nn

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@dataclass(frozen=True)
class NetworkSpec:
    """Architecture of the segmentation UNet.

    Attributes:
        out_channels: background plus one channel per label.
        channels: feature maps per resolution level (one entry per level).
        strides: down-sampling factor between levels (``len(channels) - 1`` entries).
        num_res_units: residual units per block.
        dropout: dropout probability inside each block; must be > 0 for MC dropout.
        norm: normalization layer name understood by MONAI (``"instance"``, ``"batch"``).
    """

    out_channels: int
    in_channels: int = 1
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    dropout: float = 0.2
    norm: str = "instance"

    def __post_init__(self) -> None:
        if self.out_channels < 2:
            raise ValueError(f"out_channels must be >= 2 (background + labels), got {self.out_channels}")
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides needs len(channels) - 1 = {len(self.channels) - 1} entries, got {len(self.strides)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields (sequences as lists, so a round trip through JSON is exact)."""
        data = asdict(self)
        data["channels"], data["strides"] = list(self.channels), list(self.strides)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> NetworkSpec:
        values = dict(data)
        for key in ("channels", "strides"):
            if key in values:
                values[key] = tuple(values[key])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    @property
    def size_divisor(self) -> int:
        """Input sizes must be multiples of this for the UNet's skip connections."""
        divisor = 1
        for stride in self.strides:
            divisor *= stride
        return divisor


def build_network(spec: NetworkSpec) -> nn.Module:
    """A 3D UNet with dropout in every block."""
    return UNet(
        spatial_dims=3,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        channels=spec.channels,
        strides=spec.strides,
        num_res_units=spec.num_res_units,
        norm=spec.norm,
        dropout=spec.dropout,
    )


def bottleneck(network: nn.Module) -> nn.Module:
    """The deepest block of a MONAI UNet (lowest resolution, most channels).

    MONAI nests each level in a ``SkipConnection``'s ``submodule``, so the bottleneck is the
    module whose name holds the most ``submodule`` parts.
    """
    named = [(name, module) for name, module in network.named_modules() if name.endswith("submodule")]
    if not named:
        raise ValueError("the network has no nested UNet levels")
    return max(named, key=lambda item: item[0].count("submodule"))[1]


def dropout_layers(network: nn.Module) -> list[nn.Module]:
    """Every dropout module of ``network``."""
    return [module for module in network.modules() if isinstance(module, _DROPOUT_TYPES)]


@contextmanager
def mc_dropout(network: nn.Module, *, layers: Sequence[nn.Module] | None = None) -> Iterator[nn.Module]:
    """Put ``network`` in eval mode with only its dropout layers (or only ``layers``) sampling.

    Normalization layers (batch or instance norm) stay in eval mode, so their running
    statistics are neither used from the batch nor updated.  The previous training flags
    of every module are restored on exit.
    """
    layers = dropout_layers(network) if layers is None else list(layers)
    if not layers:
        raise ValueError("the network has no dropout layers, so MC dropout would return identical samples")
    previous = {module: module.training for module in network.modules()}
    network.eval()
    for layer in layers:
        layer.train()
    try:
        yield network
    finally:
        for module, training in previous.items():
            module.training = training


def initial_state(spec: NetworkSpec, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic initial weights, so every process builds the same untrained model."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return build_network(spec).state_dict()
    finally:
        torch.random.set_rng_state(generator_state)
