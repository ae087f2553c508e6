"""Supervised fine-tuning of the segmentation network on labeled volumes.

Plain PyTorch loops over pre-processed volumes: random patches per volume for training,
sliding-window prediction of whole volumes for validation Dice per label.  The best epoch
by validation mean Dice is kept (the last epoch when there is no validation split).

The recipe follows nnU-Net where it pays on a CPU budget: SGD with Nesterov momentum 0.99 and
a polynomial learning-rate decay over the step cap, foreground-oversampled patches, mirroring
and intensity augmentation, Gaussian-weighted sliding windows, optional test-time mirroring,
and early stopping once validation Dice has not improved for ``patience`` epochs (an epoch is
``steps_per_epoch`` optimizer steps, the validation interval).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset
from monai.losses import DeepSupervisionLoss
from torch import nn

from activelabel.labelmap import LabelMap
from activelabel.ml.inference import predict_probabilities, sliding_window
from activelabel.ml.losses import PartialDiceCELoss
from activelabel.ml.metrics import dice_per_label, mean_dice
from activelabel.ml.networks import network_outputs
from activelabel.ml.transforms import Preset, augmentation_transforms, evaluation_transforms

logger = logging.getLogger(__name__)

Item = Mapping[str, Any]


class Optimizer(str, Enum):
    """The optimizer of a training run."""

    ADAM = "adam"
    """Adam at a constant or decaying learning rate (the first recipe)."""
    ADAMW = "adamw"
    """AdamW with weight decay 1e-4."""
    SGD = "sgd"
    """SGD with Nesterov momentum 0.99 and weight decay 3e-5 (nnU-Net's)."""


class Schedule(str, Enum):
    """How the learning rate changes over a run."""

    CONSTANT = "constant"
    POLY = "poly"
    """``lr * (1 - step / step_cap) ** 0.9`` (nnU-Net's), reaching 0 at the step cap."""
    COSINE = "cosine"
    """``lr * (1 + cos(pi * step / step_cap)) / 2``, reaching 0 at the step cap."""


@dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters of one training run.

    Attributes:
        max_epochs: epochs at most; with ``steps_per_epoch`` this is the step cap.
        learning_rate: initial learning rate.
        samples_per_volume: patches cropped from the volume of each step (the batch size).
        seed: seed of the patch order, crops and augmentation.
        overlap: sliding-window overlap of validation.
        steps_per_epoch: optimizer steps per epoch (volumes are cycled in shuffled order);
            ``None`` means one step per training volume.  A fixed number gives runs with
            different numbers of labeled volumes the same budget per epoch.
        optimizer: Adam, AdamW or nnU-Net's SGD.
        schedule: constant, polynomial or cosine decay of the learning rate to 0 at the step cap.
        patience: stop once validation mean Dice has not improved for this many epochs
            (``None``: train all ``max_epochs``).  Needs a validation split.
        mirror_axes: spatial axes flipped at random (each with probability 1/2) during
            training; leave out an axis along which labels differ by side (left/right organs).
        test_time_mirroring: validate on the mean of the predictions over all flips of
            ``mirror_axes`` (``2 ** len(mirror_axes)`` passes per volume).
        foreground_share: share of patches centred on a labeled voxel (the rest anywhere).
        affine_augmentation: small random rotations and scalings of the patches (nnU-Net's).
        bf16: forward passes in bfloat16 autocast, in training (about 2x faster where the CPU
            has AVX512-BF16 or AMX, or on a GPU; see :func:`bf16_supported`) and validation
            (about 4x); weights, gradients, the loss and the blended probabilities stay float32.
    """

    max_epochs: int
    learning_rate: float = 1e-3
    samples_per_volume: int = 2
    seed: int = 0
    overlap: float = 0.5
    steps_per_epoch: int | None = None
    optimizer: Optimizer = Optimizer.ADAM
    schedule: Schedule = Schedule.CONSTANT
    patience: int | None = None
    mirror_axes: tuple[int, ...] = ()
    test_time_mirroring: bool = False
    foreground_share: float = 2.0 / 3.0
    affine_augmentation: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if any(axis not in (0, 1, 2) for axis in self.mirror_axes):
            raise ValueError(f"mirror_axes must be spatial axes 0, 1 or 2, got {self.mirror_axes}")
        if not 0.0 <= self.foreground_share <= 1.0:
            raise ValueError(f"foreground_share must be in [0, 1], got {self.foreground_share}")


def bf16_supported(device: str = "cpu") -> bool:
    """Whether bfloat16 autocast runs natively on ``device`` (CPU: AVX512-BF16 or AMX-BF16 flags)."""
    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def make_optimizer(network: nn.Module, options: TrainOptions) -> torch.optim.Optimizer:
    """The optimizer ``options`` name, over ``network``'s parameters."""
    kind = Optimizer(options.optimizer)
    if kind is Optimizer.SGD:
        return torch.optim.SGD(
            network.parameters(), lr=options.learning_rate, momentum=0.99, nesterov=True, weight_decay=3e-5
        )
    if kind is Optimizer.ADAMW:
        return torch.optim.AdamW(network.parameters(), lr=options.learning_rate, weight_decay=1e-4)
    return torch.optim.Adam(network.parameters(), lr=options.learning_rate)


def learning_rate_at(step: int, *, options: TrainOptions, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of a run capped at ``total_steps``."""
    progress = min(step, total_steps) / max(total_steps, 1)
    schedule = Schedule(options.schedule)
    if schedule is Schedule.POLY:
        return options.learning_rate * (1.0 - progress) ** 0.9
    if schedule is Schedule.COSINE:
        return options.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return options.learning_rate


@dataclass
class TrainResult:
    """Outcome of one run: the kept weights and how they scored."""

    state_dict: dict[str, torch.Tensor]
    epochs: int
    best_epoch: int | None
    val_dice: dict[str, float]
    val_mean_dice: float | None
    train_count: int
    val_count: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("state_dict")
        return data


def split_train_val(ids: Sequence[str], *, val_split: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split of image ids; at least one validation id once there are two ids.

    The same ids, fraction and seed always give the same split, whatever their order.
    """
    ordered = sorted(ids)
    random.Random(seed).shuffle(ordered)
    if val_split <= 0 or len(ordered) < 2:
        return ordered, []
    n_val = min(len(ordered) - 1, max(1, round(len(ordered) * val_split)))
    return ordered[n_val:], ordered[:n_val]


def load_volumes(items: Sequence[Item], *, preset: Preset, labels: LabelMap) -> list[dict[str, Any]]:
    """Pre-process ``{"image": path, "label": path}`` items once (resampled, normalized)."""
    dataset = CacheDataset(list(items), transform=evaluation_transforms(preset, labels), progress=False)
    return [dataset[i] for i in range(len(dataset))]


def validate(
    network: nn.Module,
    volumes: Sequence[Item],
    *,
    preset: Preset,
    labels: LabelMap,
    overlap: float = 0.5,
    mirror_axes: Sequence[int] = (),
    bf16: bool = False,
) -> dict[str, float]:
    """Mean Dice per label of the network's argmax over pre-processed volumes.

    With ``mirror_axes`` the prediction is the mean over every flip of those axes; with
    ``bf16`` the network passes run in bfloat16 autocast.
    """
    inferer = sliding_window(preset.roi_size, overlap=overlap, bf16=bf16)
    channels = {name: index for index, name in labels.channel_names().items()}
    per_label: dict[str, list[float]] = {name: [] for name in labels.names}
    for volume in volumes:
        probabilities = predict_probabilities(network, volume["image"], inferer, mirror_axes=mirror_axes)
        prediction = probabilities.argmax(dim=0).numpy()
        truth = np.asarray(volume["label"][0])
        for name, score in dice_per_label(prediction, truth, channels).items():
            per_label[name].append(score)
    return {name: float(np.mean(scores)) for name, scores in per_label.items() if scores}


def epoch_order(count: int, steps: int | None, rng: random.Random) -> list[int]:
    """Volume indices for one epoch: each volume once, or ``steps`` indices cycling through shuffles."""
    order: list[int] = []
    while len(order) < (steps or count):
        block = list(range(count))
        rng.shuffle(block)
        order.extend(block)
    return order[: steps or count]


def train_network(
    network: nn.Module,
    train_volumes: Sequence[Item],
    val_volumes: Sequence[Item],
    *,
    preset: Preset,
    labels: LabelMap,
    options: TrainOptions,
    device: str = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    patch_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> TrainResult:
    """Fine-tune ``network`` in place from its current weights.

    Args:
        network: the model to train (warm start: its current weights are the start).
        train_volumes: pre-processed volumes from :func:`load_volumes`.
        val_volumes: pre-processed volumes for validation (may be empty).
        preset: geometry and patch size.
        labels: label map; Dice is reported per label name.
        options: epochs, learning rate, patches per volume, seed.
        device: torch device for training.
        on_epoch: called with each epoch's record (epoch, loss, val_dice, seconds).
        patch_transform: applied to every augmented patch before the network sees it (the
            refinement network's simulated clicks, :mod:`activelabel.ml.interaction`); its
            validation then needs inputs the network can read, so pass no ``val_volumes``.
    """
    if not train_volumes:
        raise ValueError("training needs at least one labeled volume")
    start = time.perf_counter()
    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)
    augment = augmentation_transforms(
        preset,
        samples_per_volume=options.samples_per_volume,
        mirror_axes=options.mirror_axes,
        foreground_share=options.foreground_share,
        affine=options.affine_augmentation,
    )
    augment.set_random_state(seed=options.seed)
    network.to(device)
    optimizer = make_optimizer(network, options)
    # nnU-Net's loss: Dice over the foreground channels only, pooled over the batch (so a patch
    # without a structure does not count as a perfect or a failed Dice of its own), plus CE;
    # voxels a partial label leaves unannotated count in neither.  Deep-supervision heads (a
    # DynUNet's) weigh 1, 1/2, 1/4, ...; one head is the plain loss.
    loss_function = DeepSupervisionLoss(PartialDiceCELoss(), weight_mode="exp")
    steps_per_epoch = options.steps_per_epoch or len(train_volumes)
    total_steps = options.max_epochs * steps_per_epoch
    validation_mirror = tuple(options.mirror_axes) if options.test_time_mirroring else ()
    best_state = copy.deepcopy(network.state_dict())
    best_score, best_epoch, best_dice = -1.0, None, {}
    history: list[dict[str, Any]] = []
    step = 0
    epochs_run = 0
    for epoch in range(1, options.max_epochs + 1):
        began = time.perf_counter()
        network.train()
        losses = []
        for index in epoch_order(len(train_volumes), options.steps_per_epoch, rng):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, options=options, total_steps=total_steps)
            patches = augment(dict(train_volumes[index]))
            patches = patches if isinstance(patches, list) else [patches]
            if patch_transform is not None:
                patches = [patch_transform(patch) for patch in patches]
            images = torch.stack([torch.as_tensor(p["image"]) for p in patches]).to(device)
            targets = torch.stack([torch.as_tensor(p["label"]) for p in patches]).to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=options.bf16):
                outputs = network_outputs(network(images), inputs=images)
            loss = loss_function([output.float() for output in outputs], targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
        epochs_run = epoch
        record: dict[str, Any] = {"epoch": epoch, "steps": step, "loss": float(np.mean(losses))}
        if val_volumes:
            scores = validate(
                network,
                val_volumes,
                preset=preset,
                labels=labels,
                overlap=options.overlap,
                mirror_axes=validation_mirror,
                bf16=options.bf16,
            )
            record["val_dice"] = scores
            record["val_mean_dice"] = mean_dice(scores.values())
            if record["val_mean_dice"] > best_score:
                best_score, best_epoch, best_dice = record["val_mean_dice"], epoch, scores
                best_state = copy.deepcopy(network.state_dict())
        else:
            best_epoch, best_state = epoch, copy.deepcopy(network.state_dict())
        record["seconds"] = time.perf_counter() - began
        history.append(record)
        logger.info("epoch %d/%d: %s", epoch, options.max_epochs, record)
        if on_epoch is not None:
            on_epoch(record)
        stale = epoch - best_epoch if best_epoch is not None else 0
        if val_volumes and options.patience is not None and stale >= options.patience:
            logger.info("early stop after epoch %d: no better validation Dice since epoch %d", epoch, best_epoch)
            break
    network.load_state_dict(best_state)
    return TrainResult(
        state_dict={k: v.detach().cpu() for k, v in best_state.items()},
        epochs=epochs_run,
        best_epoch=best_epoch,
        val_dice=best_dice,
        val_mean_dice=best_score if val_volumes else None,
        train_count=len(train_volumes),
        val_count=len(val_volumes),
        seconds=time.perf_counter() - start,
        history=history,
        steps=step,
    )
