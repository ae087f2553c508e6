"""Network factories and Monte-Carlo dropout control.

The segmentation network is a MONAI 3D UNet with dropout inside every convolution block,
so that dropout can be sampled at inference time (MC dropout) while normalization layers
stay in eval mode and keep their statistics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import Enum

import torch
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import DynUNet, UNet
from torch import nn

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class Architecture(str, Enum):
    """The segmentation network's family."""

    UNET = "unet"
    """MONAI ``UNet``: residual units, strided convolutions (the first recipe)."""
    DYNUNET = "dynunet"
    """MONAI ``DynUNet``, nnU-Net's plain UNet: two 3x3x3 convolutions per level, leaky ReLU,
    transposed-convolution up-sampling and optional deep supervision."""


class DropoutScope(str, Enum):
    """Where the UNet's dropout layers drop out (elsewhere their probability is 0)."""

    ALL = "all"
    DECODER = "decoder"
    BOTTLENECK = "bottleneck"
    """Only the deepest block: the least noise in training (no Dice lost on the hippocampus)."""


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
        dropout_scope: the blocks that drop out: all of them, only the up path, or only the
            bottleneck; MC-dropout scoring samples from where dropout starts, so the rest
            trains without noise that scoring would not use.
        architecture: ``unet`` or ``dynunet`` (see :class:`Architecture`).
        deep_supervision: extra lower-resolution output heads trained alongside the main one
            (``dynunet`` only; at most ``len(channels) - 2``); inference uses the main head.
    """

    out_channels: int
    in_channels: int = 1
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    dropout: float = 0.2
    norm: str = "instance"
    dropout_scope: str = "all"
    architecture: str = "unet"
    deep_supervision: int = 0

    def __post_init__(self) -> None:
        DropoutScope(self.dropout_scope)  # raises on an unknown scope
        architecture = Architecture(self.architecture)
        if self.deep_supervision < 0:
            raise ValueError(f"deep_supervision must be >= 0, got {self.deep_supervision}")
        if self.deep_supervision and architecture is not Architecture.DYNUNET:
            raise ValueError(f"deep supervision needs the dynunet architecture, got {self.architecture!r}")
        if self.deep_supervision > len(self.channels) - 2:
            raise ValueError(
                f"deep_supervision must be at most len(channels) - 2 = {len(self.channels) - 2}, "
                f"got {self.deep_supervision}"
            )
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


@dataclass(frozen=True)
class UNetLevels:
    """A MONAI UNet unrolled into its stages.

    Attributes:
        downs: down-sampling blocks, shallowest (input resolution) first.
        bottom: the bottleneck block.
        ups: up-sampling blocks, shallowest (output block) first; ``ups[i]`` takes the
            concatenation of ``downs[i]``'s output and the next deeper stage's output.
    """

    downs: tuple[nn.Module, ...]
    bottom: nn.Module
    ups: tuple[nn.Module, ...]

    def stages(self) -> list[nn.Module]:
        """Every stage in data-flow order: downs, bottom, then ups from deepest to the output."""
        return [*self.downs, self.bottom, *reversed(self.ups)]


def _is_level(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and len(module) == 3 and isinstance(module[1], SkipConnection)


def unet_levels(network: nn.Module) -> UNetLevels:
    """Unroll a MONAI ``UNet`` into down blocks, bottleneck and up blocks.

    Raises:
        TypeError: when ``network`` is not a MONAI ``UNet`` with concatenating skip connections.
    """
    if not isinstance(network, UNet):
        raise TypeError(f"decoder-only MC dropout needs a MONAI UNet, got {type(network).__name__}")
    downs: list[nn.Module] = []
    ups: list[nn.Module] = []
    level: nn.Module = network.model
    while _is_level(level):
        skip = level[1]
        if skip.mode != "cat" or skip.dim != 1:
            raise TypeError(f"decoder-only MC dropout needs channel-concatenating skips, got mode {skip.mode!r}")
        downs.append(level[0])
        ups.append(level[2])
        level = skip.submodule
    if not downs:
        raise TypeError("the UNet has no Sequential(down, SkipConnection, up) levels to split")
    return UNetLevels(downs=tuple(downs), bottom=level, ups=tuple(ups))


def _build_dynunet(spec: NetworkSpec) -> DynUNet:
    levels = len(spec.channels)
    network = DynUNet(
        spatial_dims=3,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        kernel_size=[3] * levels,
        strides=[1, *spec.strides],
        upsample_kernel_size=list(spec.strides),
        filters=list(spec.channels),
        dropout=spec.dropout or None,
        norm_name=("INSTANCE", {"affine": True}) if spec.norm == "instance" else spec.norm,
        deep_supervision=spec.deep_supervision > 0,
        deep_supr_num=max(1, spec.deep_supervision),
    )
    scope = DropoutScope(spec.dropout_scope)
    silent: list[nn.Module] = []
    if scope is not DropoutScope.ALL:
        silent = [network.input_block, network.downsamples]
        if spec.deep_supervision:
            silent.append(network.deep_supervision_heads)  # training-only heads
        silent.append(network.bottleneck if scope is DropoutScope.DECODER else network.upsamples)
        if scope is DropoutScope.BOTTLENECK:
            silent.append(network.output_block)
    _silence(silent)
    return network


def _silence(parts: Sequence[nn.Module]) -> None:
    """Set every dropout layer in ``parts`` to probability 0 (they stay in the network)."""
    for part in parts:
        for layer in dropout_layers(part):
            layer.p = 0.0


def network_outputs(output: torch.Tensor | Sequence[torch.Tensor], *, inputs: torch.Tensor) -> list[torch.Tensor]:
    """A training forward pass's outputs as a list, the main head first.

    A deep-supervised ``DynUNet`` in training mode stacks its heads (each interpolated to the
    input size) along dimension 1; every other network returns one tensor.
    """
    if isinstance(output, torch.Tensor) and output.ndim == inputs.ndim + 1:
        return list(torch.unbind(output, dim=1))
    if isinstance(output, torch.Tensor):
        return [output]
    return list(output)


def build_network(spec: NetworkSpec) -> nn.Module:
    """The spec's network, with dropout in every block or only in the up path (``dropout_scope``)."""
    if Architecture(spec.architecture) is Architecture.DYNUNET:
        return _build_dynunet(spec)
    network = UNet(
        spatial_dims=3,
        in_channels=spec.in_channels,
        out_channels=spec.out_channels,
        channels=spec.channels,
        strides=spec.strides,
        num_res_units=spec.num_res_units,
        norm=spec.norm,
        dropout=spec.dropout,
    )
    scope = DropoutScope(spec.dropout_scope)
    if scope is DropoutScope.DECODER:
        levels = unet_levels(network)
        _silence([*levels.downs, levels.bottom])
    elif scope is DropoutScope.BOTTLENECK:
        levels = unet_levels(network)
        _silence([*levels.downs, *levels.ups])
    return network


def bottleneck(network: nn.Module) -> nn.Module:
    """The deepest block of a MONAI UNet or DynUNet (lowest resolution, most channels).

    ``DynUNet`` names it; MONAI's ``UNet`` nests each level in a ``SkipConnection``'s
    ``submodule``, so there it is the module whose name holds the most ``submodule`` parts.
    """
    if isinstance(network, DynUNet):
        return network.bottleneck
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
