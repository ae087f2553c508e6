"""Cheaper Monte-Carlo dropout: the encoder runs once, only the later layers sample.

Full MC dropout runs the whole network once per sample.  In a UNet everything upstream of
the first sampled dropout layer is the same for every sample, so :class:`DecoderDropoutSampler`
runs that part once per sliding window and only the rest ``K`` times, as one batch of ``K``.
Its output stacks the ``K`` samples' logits along the channel axis, so one sliding-window
pass blends every sample at once; :func:`split_samples` turns that back into
``(K, C, *spatial)``.

Where sampling starts is the :class:`McMode`: the deeper it starts, the more is shared and
the cheaper each extra sample is, but the less of the network's uncertainty is sampled.
The split follows MONAI's ``UNet`` nesting
``Sequential(down, SkipConnection(Sequential(down, SkipConnection(...), up)), up)``;
other networks are rejected with a :class:`TypeError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import UNet
from torch import nn

from activelabel.ml.networks import dropout_layers, mc_dropout


class McMode(str, Enum):
    """Which dropout layers sample when scoring, and so what is computed once per window.

    ``FULL`` samples every dropout layer (one whole network pass per sample).  The others
    run the network up to the first dropout layer of the named stage once and sample every
    dropout layer from there on (``K`` samples as one batch):

    * ``BATCHED``: sampling starts at the network's first dropout layer, so the samples
      follow the same distribution as ``FULL``; only their computation is batched.
    * ``BOTTLENECK``: the encoder runs once; the bottleneck and the up path sample.
    * ``DECODER``: the encoder and the bottleneck run once; the up path samples.
    * ``HEAD``: everything up to the dropout layer of the output block runs once; only the
      output block (full resolution) samples.
    """

    FULL = "full"
    BATCHED = "batched"
    BOTTLENECK = "bottleneck"
    DECODER = "decoder"
    HEAD = "head"

    @classmethod
    def parse(cls, text: str) -> McMode:
        """The mode named by ``text`` (case-insensitive).

        Raises:
            ValueError: naming the valid modes, when ``text`` is none of them.
        """
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ValueError(f"expected one of: {', '.join(mode.value for mode in cls)}") from None


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


def _first_stage(levels: UNetLevels, mode: McMode) -> int:
    """Index in :meth:`UNetLevels.stages` of the stage where sampling starts."""
    deepest_up = len(levels.downs) + 1
    starts = {
        McMode.BATCHED: 0,
        McMode.BOTTLENECK: len(levels.downs),
        McMode.DECODER: deepest_up,
        McMode.HEAD: len(levels.stages()) - 1,
    }
    if mode not in starts:
        raise ValueError(f"mode {mode.value!r} samples the whole network; use full MC dropout for it")
    return starts[mode]


class DecoderDropoutSampler(nn.Module):
    """``K`` MC-dropout samples of a UNet per forward pass, sharing the deterministic part.

    Calls the wrapped network's own blocks, so weights and hooks (e.g. on the bottleneck)
    are the network's.  Outside :meth:`sampling` every dropout layer keeps its current mode;
    with the network in eval mode the ``K`` samples all equal the network's own output.

    Args:
        network: a MONAI ``UNet``.
        samples: ``K``, the samples per forward pass.
        mode: where sampling starts (any :class:`McMode` but ``FULL``).

    Raises:
        TypeError: when ``network`` is not a MONAI ``UNet``.
        ValueError: when ``samples < 1``, ``mode`` is ``FULL`` or no dropout layer follows
            the start.
    """

    def __init__(self, network: nn.Module, *, samples: int, mode: McMode | str) -> None:
        super().__init__()
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.network = network
        self.samples = samples
        self.mode = McMode(mode)
        self.levels = unet_levels(network)
        stages = self.levels.stages()
        first = _first_stage(self.levels, self.mode)
        self.shared_dropout = [layer for stage in stages[:first] for layer in dropout_layers(stage)]
        self.sampled_dropout = [layer for stage in stages[first:] for layer in dropout_layers(stage)]
        if not self.sampled_dropout:
            raise ValueError(f"the network has no dropout layer from where {self.mode.value!r} sampling starts")

    @contextmanager
    def sampling(self) -> Iterator[DecoderDropoutSampler]:
        """Eval mode everywhere except the sampled dropout layers; previous modes restored on exit."""
        with mc_dropout(self.network, layers=self.sampled_dropout):
            yield self

    def _expand(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Forward pre-hook of the first sampled dropout layer: one input becomes ``K``."""
        head, *rest = inputs
        return (head.expand(self.samples, *head.shape[1:]).contiguous(), *rest)

    def _forward_one(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, C_in, *roi)`` -> ``(K, C, *roi)`` logits; the batch grows at the first sampled dropout."""
        skips = []
        features = image
        for down in self.levels.downs:
            features = down(features)
            skips.append(features)
        features = self.levels.bottom(features)
        for up, skip in zip(reversed(self.levels.ups), reversed(skips), strict=True):
            features = up(torch.cat([skip.expand(features.shape[0], *skip.shape[1:]), features], dim=1))
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``K`` samples stacked sample-major along the channel axis.

        Args:
            images: ``(B, C_in, *roi)`` windows.

        Returns:
            ``(B, K * C, *roi)`` logits; channel ``k * C + c`` is class ``c`` of sample ``k``.
        """
        handle = self.sampled_dropout[0].register_forward_pre_hook(self._expand)
        try:
            outputs = [self._forward_one(image[None]) for image in images]
        finally:
            handle.remove()
        return torch.stack(outputs).flatten(start_dim=1, end_dim=2)


def split_samples(stacked: torch.Tensor, *, samples: int) -> torch.Tensor:
    """Undo the channel stacking of :class:`DecoderDropoutSampler` for one volume.

    Args:
        stacked: ``(K * C, *spatial)`` logits or probabilities, sample-major.
        samples: ``K``.

    Returns:
        ``(K, C, *spatial)``.
    """
    if stacked.shape[0] % samples:
        raise ValueError(f"{stacked.shape[0]} stacked channels are not a multiple of {samples} samples")
    return stacked.reshape(samples, stacked.shape[0] // samples, *stacked.shape[1:])


def decoder_dropout_probabilities(
    network: nn.Module, batch: torch.Tensor, inferer: SlidingWindowInferer, *, samples: int, mode: McMode | str
) -> torch.Tensor:
    """Softmax probabilities of ``K`` samples of one volume from one sliding-window pass.

    Args:
        network: a MONAI ``UNet``.
        batch: ``(1, C_in, *spatial)`` pre-processed image on the network's device.
        inferer: the sliding-window inferer.
        samples: ``K``.
        mode: where sampling starts (any :class:`McMode` but ``FULL``).

    Returns:
        ``(K, C, *spatial)`` probabilities on the network's device.
    """
    sampler = DecoderDropoutSampler(network, samples=samples, mode=mode)
    with sampler.sampling():
        logits = torch.as_tensor(inferer(batch, sampler))
    return torch.softmax(split_samples(logits[0], samples=samples), dim=1)
