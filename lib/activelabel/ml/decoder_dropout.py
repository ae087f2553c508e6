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
``Sequential(down, SkipConnection(Sequential(down, SkipConnection(...), up)), up)``.  A
``DynUNet`` in ``BOTTLENECK`` or ``DECODER`` mode is split at its bottleneck instead: hooks
repeat the bottleneck's input (or output) and every skip ``K`` times, so the encoder (and the
bottleneck) run once and the rest samples.  Any other network or mode replicates each window ``K`` times: the samples
are still one batch and every dropout layer samples, but nothing is shared.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import DynUNet, UNet
from torch import nn

from activelabel.ml.networks import UNetLevels, dropout_layers, mc_dropout, unet_levels


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
        TypeError: when a MONAI ``UNet``'s skips do not concatenate channels.
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
        if self.mode is McMode.FULL:
            raise ValueError("mode 'full' samples the whole network; use full MC dropout for it")
        self.levels: UNetLevels | None = None
        self._dynunet_split = isinstance(network, DynUNet) and self.mode in (McMode.BOTTLENECK, McMode.DECODER)
        if self._dynunet_split:
            decoder = [network.upsamples, network.output_block]
            encoder = [network.input_block, network.downsamples]
            (decoder if self.mode is McMode.BOTTLENECK else encoder).append(network.bottleneck)
            self.shared_dropout = [layer for part in encoder for layer in dropout_layers(part)]
            self.sampled_dropout = [layer for part in decoder for layer in dropout_layers(part)]
            if not any(layer.p > 0 for layer in self.sampled_dropout):
                raise ValueError(f"the network has no dropout layer from where {self.mode.value!r} sampling starts")
            return
        if not isinstance(network, UNet):
            self.shared_dropout: list[nn.Module] = []
            self.sampled_dropout = dropout_layers(network)
            if not self.sampled_dropout:
                raise ValueError("the network has no dropout layer to sample")
            return
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

    def _forward_dynunet(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *roi)`` -> ``(B * K, C, *roi)``: the bottleneck input (or output) repeated ``K`` times."""
        network = self.network
        samples = self.samples
        if self.mode is McMode.BOTTLENECK:
            handles = [
                network.bottleneck.register_forward_pre_hook(
                    lambda _m, inputs: (inputs[0].repeat_interleave(samples, dim=0), *inputs[1:])
                )
            ]
        else:
            handles = [
                network.bottleneck.register_forward_hook(lambda _m, _i, out: out.repeat_interleave(samples, dim=0))
            ]
        handles += [up.register_forward_pre_hook(_repeat_skip) for up in network.upsamples]
        try:
            return network(images)
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``K`` samples stacked sample-major along the channel axis.

        Args:
            images: ``(B, C_in, *roi)`` windows.

        Returns:
            ``(B, K * C, *roi)`` logits; channel ``k * C + c`` is class ``c`` of sample ``k``.
        """
        if self._dynunet_split:
            logits = self._forward_dynunet(images)
            return logits.reshape(images.shape[0], -1, *logits.shape[2:])
        if self.levels is None:  # not splittable: K copies of each window as one batch
            logits = self.network(images.repeat_interleave(self.samples, dim=0))
            return logits.reshape(images.shape[0], -1, *logits.shape[2:])
        handle = self.sampled_dropout[0].register_forward_pre_hook(self._expand)
        try:
            outputs = [self._forward_one(image[None]) for image in images]
        finally:
            handle.remove()
        return torch.stack(outputs).flatten(start_dim=1, end_dim=2)


def _repeat_skip(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Forward pre-hook of a DynUNet up block: repeat its skip to the (repeated) input's batch."""
    features, skip, *rest = inputs
    if skip.shape[0] != features.shape[0]:
        skip = skip.repeat_interleave(features.shape[0] // skip.shape[0], dim=0)
    return (features, skip, *rest)


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
