"""Supervised fine-tuning of the segmentation network on labeled volumes.

Plain PyTorch loops over pre-processed volumes: random patches per volume for training,
sliding-window prediction of whole volumes for validation Dice per label.  The best epoch
by validation mean Dice is kept (the last epoch when there is no validation split).
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset
from monai.losses import DiceCELoss
from torch import nn

from activelabel.labelmap import LabelMap
from activelabel.ml.inference import predict_probabilities, sliding_window
from activelabel.ml.metrics import dice_per_label, mean_dice
from activelabel.ml.transforms import Preset, augmentation_transforms, evaluation_transforms

logger = logging.getLogger(__name__)

Item = Mapping[str, Any]


@dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters of one training run.

    ``steps_per_epoch`` fixes the optimizer steps per epoch (volumes are cycled in shuffled
    order); ``None`` means one step per training volume.  A fixed number gives runs with
    different numbers of labeled volumes the same training budget.
    """

    max_epochs: int
    learning_rate: float = 1e-3
    samples_per_volume: int = 2
    seed: int = 0
    overlap: float = 0.25
    steps_per_epoch: int | None = None


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
    overlap: float = 0.25,
) -> dict[str, float]:
    """Mean Dice per label of the network's argmax over pre-processed volumes."""
    inferer = sliding_window(preset.roi_size, overlap=overlap)
    channels = {name: index for index, name in labels.channel_names().items()}
    per_label: dict[str, list[float]] = {name: [] for name in labels.names}
    for volume in volumes:
        prediction = predict_probabilities(network, volume["image"], inferer).argmax(dim=0).numpy()
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
    """
    if not train_volumes:
        raise ValueError("training needs at least one labeled volume")
    start = time.perf_counter()
    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)
    augment = augmentation_transforms(preset, samples_per_volume=options.samples_per_volume)
    augment.set_random_state(seed=options.seed)
    network.to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=options.learning_rate)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    best_state = copy.deepcopy(network.state_dict())
    best_score, best_epoch, best_dice = -1.0, None, {}
    history: list[dict[str, Any]] = []
    for epoch in range(1, options.max_epochs + 1):
        began = time.perf_counter()
        network.train()
        losses = []
        for index in epoch_order(len(train_volumes), options.steps_per_epoch, rng):
            patches = augment(dict(train_volumes[index]))
            patches = patches if isinstance(patches, list) else [patches]
            images = torch.stack([torch.as_tensor(p["image"]) for p in patches]).to(device)
            targets = torch.stack([torch.as_tensor(p["label"]) for p in patches]).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(network(images), targets)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        record: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses))}
        if val_volumes:
            scores = validate(network, val_volumes, preset=preset, labels=labels, overlap=options.overlap)
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
    network.load_state_dict(best_state)
    return TrainResult(
        state_dict={k: v.detach().cpu() for k, v in best_state.items()},
        epochs=options.max_epochs,
        best_epoch=best_epoch,
        val_dice=best_dice,
        val_mean_dice=best_score if val_volumes else None,
        train_count=len(train_volumes),
        val_count=len(val_volumes),
        seconds=time.perf_counter() - start,
        history=history,
    )
