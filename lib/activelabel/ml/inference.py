"""Network forward passes over whole volumes: deterministic and Monte-Carlo dropout.

Inputs are pre-processed ``(1, *spatial)`` image tensors (see :mod:`activelabel.ml.transforms`);
outputs are ``(C, *spatial)`` softmax probabilities on the same grid.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from activelabel.ml.checkpoints import ModelInfo, ModelStore
from activelabel.ml.decoder_dropout import McMode, decoder_dropout_probabilities
from activelabel.ml.networks import NetworkSpec, bottleneck, build_network, mc_dropout
from activelabel.ml.uncertainty import SampleAccumulator, VolumeUncertainty


class Bf16SlidingWindowInferer(SlidingWindowInferer):
    """Gaussian sliding windows whose network passes run in bfloat16 autocast.

    Each window's output is cast back to float32 before MONAI blends it, so the weighted sums
    (and everything computed from the probabilities) stay in float32.  On a CPU with
    AVX512-BF16 a DynUNet window runs about 4x faster than in float32.
    """

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        device_type = inputs.device.type

        def forward(window: torch.Tensor, *more: Any, **options: Any) -> Any:
            with torch.autocast(device_type, dtype=torch.bfloat16):
                output = network(window, *more, **options)
            if isinstance(output, torch.Tensor):
                return output.float()
            return type(output)(o.float() for o in output)

        return super().__call__(inputs, forward, *args, **kwargs)


def sliding_window(roi_size: tuple[int, int, int], *, overlap: float = 0.5, bf16: bool = False) -> SlidingWindowInferer:
    """The sliding-window inferer used everywhere (infer, validation, scoring, the simulator).

    Args:
        roi_size: the window (the training patch size).
        overlap: share of a window that overlaps its neighbour (nnU-Net's 0.5).
        bf16: run the network passes in bfloat16 autocast (see :class:`Bf16SlidingWindowInferer`).
    """
    kind = Bf16SlidingWindowInferer if bf16 else SlidingWindowInferer
    return kind(roi_size=roi_size, sw_batch_size=1, overlap=overlap, mode="gaussian")


def load_model(store: ModelStore, *, device: str = "cpu") -> tuple[nn.Module, ModelInfo]:
    """The published network of ``store`` in eval mode, with its info."""
    state, info = store.load(map_location=device)
    network = build_network(NetworkSpec.from_dict(info.spec))
    network.load_state_dict(state)
    return network.to(device).eval(), info


class PublishedModel:
    """The store's current network, reloaded only when a newer checkpoint is published.

    Thread-safe, so server endpoints running in a thread pool share one loaded copy.

    Args:
        store: the model's checkpoint store.
        device: where the network runs.
    """

    def __init__(self, store: ModelStore, *, device: str = "cpu") -> None:
        self.store = store
        self.device = device
        self._lock = threading.Lock()
        self._cached: tuple[nn.Module, ModelInfo, int] | None = None

    def get(self) -> tuple[nn.Module, ModelInfo]:
        """The network in eval mode and its info."""
        with self._lock:
            stamp = os.stat(self.store.checkpoint_path).st_mtime_ns
            if self._cached is None or self._cached[2] != stamp:
                network, info = load_model(self.store, device=self.device)
                self._cached = (network, info, stamp)
            return self._cached[0], self._cached[1]


def _batch(image: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    if image.ndim != 4:
        raise ValueError(f"expected a (channel, x, y, z) image, got shape {tuple(image.shape)}")
    return torch.as_tensor(image, dtype=torch.float32)[None].to(device)


def mirror_flips(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``axes`` (as batch-tensor dims), the empty one first."""
    dims = [axis + 2 for axis in axes]
    return [tuple(d for bit, d in enumerate(dims) if mask >> bit & 1) for mask in range(2 ** len(dims))]


@torch.no_grad()
def predict_probabilities(
    network: nn.Module, image: torch.Tensor, inferer: SlidingWindowInferer, *, mirror_axes: Sequence[int] = ()
) -> torch.Tensor:
    """Deterministic softmax probabilities ``(C, *spatial)``; the network is put in eval mode.

    With ``mirror_axes`` (test-time mirroring, as nnU-Net does) the result is the mean of the
    probabilities over every flip of those spatial axes: ``2 ** len(mirror_axes)`` passes.
    """
    network.eval()
    device = next(network.parameters()).device
    batch = _batch(image, device)
    total: torch.Tensor | None = None
    flips = mirror_flips(mirror_axes)
    for dims in flips:
        flipped = torch.flip(batch, dims) if dims else batch
        probabilities = torch.softmax(torch.as_tensor(inferer(flipped, network)), dim=1)
        probabilities = torch.flip(probabilities, dims) if dims else probabilities
        total = probabilities if total is None else total + probabilities
    assert total is not None
    return (total / len(flips))[0].cpu()


class BottleneckFeatures:
    """Collects the global-average-pooled bottleneck features of every forward pass.

    Used as a context manager around passes of a network; :meth:`mean` is the volume's
    embedding (averaged over sliding windows and MC samples), a compact description of what
    the model sees that diversity-aware strategies compare between volumes.
    """

    def __init__(self, network: nn.Module) -> None:
        self._module = bottleneck(network)
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _hook(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        pooled = output.detach().float().flatten(start_dim=2).mean(dim=2).sum(dim=0).cpu()
        self._sum = pooled if self._sum is None else self._sum + pooled
        self._count += output.shape[0]

    def __enter__(self) -> BottleneckFeatures:
        self._handle = self._module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()

    def mean(self) -> torch.Tensor:
        if self._sum is None:
            raise ValueError("no forward pass was recorded")
        return self._sum / self._count


@torch.no_grad()
def embed_volume(network: nn.Module, image: torch.Tensor, inferer: SlidingWindowInferer) -> torch.Tensor:
    """Bottleneck embedding of one volume from a deterministic pass."""
    network.eval()
    device = next(network.parameters()).device
    with BottleneckFeatures(network) as features:
        inferer(_batch(image, device), network)
    return features.mean()


@torch.no_grad()
def mc_dropout_samples(
    network: nn.Module,
    image: torch.Tensor,
    inferer: SlidingWindowInferer,
    *,
    samples: int,
    mode: McMode = McMode.FULL,
) -> tuple[SampleAccumulator, torch.Tensor]:
    """Running statistics of ``samples`` MC-dropout passes over one volume, and its embedding.

    Only dropout layers sample; normalization layers stay in eval mode.  Samples are folded
    into running statistics, so memory does not grow with ``samples``.  The embedding is
    the bottleneck features averaged over all passes.

    With a ``mode`` other than ``FULL`` only the layers from where that mode starts sample,
    and one sliding-window pass yields all ``samples`` (see :mod:`activelabel.ml.decoder_dropout`).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    device = next(network.parameters()).device
    batch = _batch(image, device)
    accumulator = SampleAccumulator()
    if McMode(mode) is not McMode.FULL:
        with BottleneckFeatures(network) as features:
            for probs in decoder_dropout_probabilities(network, batch, inferer, samples=samples, mode=mode):
                accumulator.add(probs.cpu())
        return accumulator, features.mean()
    with mc_dropout(network), BottleneckFeatures(network) as features:
        for _ in range(samples):
            logits = inferer(batch, network)
            accumulator.add(torch.softmax(torch.as_tensor(logits), dim=1)[0].cpu())
    return accumulator, features.mean()


def mc_dropout_uncertainty(
    network: nn.Module,
    image: torch.Tensor,
    inferer: SlidingWindowInferer,
    *,
    samples: int,
    dilation: int = 3,
    mode: McMode = McMode.FULL,
) -> tuple[VolumeUncertainty, torch.Tensor]:
    """Epistemic uncertainty (aggregated over the dilated foreground) and embedding of one volume."""
    accumulator, embedding = mc_dropout_samples(network, image, inferer, samples=samples, mode=mode)
    return accumulator.result(dilation=dilation), embedding
