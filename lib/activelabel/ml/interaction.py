"""Click-based correction: clicks as guidance channels, simulated clicks, the refinement network.

The refinement network sees, per voxel of the model grid, ``1 + 2 L + 1`` channels for ``L``
labels: the image, the current mask one-hot over the ``L`` foreground channels, and one
guidance channel per label plus one for ``background`` (MONAI Label's DeepEdit convention:
positive clicks of a label in its channel, negative clicks in ``background``), each click a
Gaussian made by MONAI's :class:`~monai.apps.deepedit.transforms.AddGuidanceSignalDeepEditd`.
It outputs the corrected mask as ``L + 1`` channel scores, like the segmentation network.

Clicks are simulated as evaluation protocols for interactive segmentation do: at the voxel
deepest inside the largest connected error region (a region where mask and truth disagree
and the truth has one value), with the truth's value there as the click's class.  Training
starts from a wrong mask and places a few such clicks on its errors, so the network learns
to trust the mask away from the clicks and to fix it around them.  The wrong mask is, half
of the time, the segmentation model's own answer (an MC-dropout sample,
:func:`with_model_masks`): its errors are the ones the image alone does not resolve, which
is where a clinician clicks.  Otherwise it is the truth corrupted (eroded, dilated, missing
or swapped blobs).  DeepEdit gets the same effect by running the network during training.
An untrained refinement network starts from the segmentation network's weights
(:func:`refine_state_from_segmentation`), so it has only to learn what mask and clicks add.

Arrays are indexed ``[x, y, z]`` on the model grid; masks and truths hold channel indices
(0 background, 1..L the labels in :meth:`activelabel.labelmap.LabelMap.channel_names` order).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from monai.apps.deepedit.transforms import AddGuidanceSignalDeepEditd
from scipy import ndimage

from activelabel.labelmap import NOT_ANNOTATED, LabelMap
from activelabel.ml.checkpoints import ModelInfo, ModelStore
from activelabel.ml.inference import load_model, predict_probabilities
from activelabel.ml.metrics import dice_per_label
from activelabel.ml.networks import NetworkSpec, build_network, dropout_layers, mc_dropout
from activelabel.ml.training import TrainOptions, train_network
from activelabel.ml.transforms import Preset

logger = logging.getLogger(__name__)

MODEL_MASKS = 2
"""MC-dropout masks of the segmentation network per labeled volume that training clicks on."""

MODEL_MASK_SHARE = 0.5
"""Share of training patches that start from a model mask rather than a corrupted truth
(0.8 gave less on the hippocampus with the earlier recipe:
``bench/results/refine-hippocampus-from-random-share0.8.json``)."""

REFINE_MODEL = "refine"
"""Name of the refinement network's infer task and checkpoint."""

BACKGROUND = "background"
"""The click key of negative clicks (DeepEdit's name for the background label)."""

LOCAL_RADIUS = 12
"""Voxels around each click within which the refinement network's answer replaces the mask
(chosen on the hippocampus validation volumes over 5 and 8; the whole mask did as well there
but redrew CT phantoms far worse)."""

FOCUS_RADIUS = LOCAL_RADIUS + 3
"""Voxels around the clicks of a training patch within which its loss counts (a margin beyond
:data:`LOCAL_RADIUS`, since only that neighbourhood of the answer is ever used)."""

GUIDANCE_SIGMA = 2
"""Standard deviation in model-grid voxels of each click's Gaussian."""

Point = tuple[int, int, int]


@dataclass(frozen=True)
class Click:
    """One click on the model grid: a voxel and the channel it says the voxel belongs to (0: background)."""

    point: Point
    channel: int


@dataclass
class Clicks:
    """Clicks per channel, in the order they were placed."""

    by_channel: dict[int, list[Point]] = field(default_factory=dict)

    def add(self, click: Click) -> None:
        self.by_channel.setdefault(click.channel, []).append(click.point)

    @property
    def count(self) -> int:
        return sum(len(points) for points in self.by_channel.values())

    def guidance(self, num_labels: int) -> dict[str, list[list[int]]]:
        """DeepEdit's guidance dict: one key per foreground channel, then ``background``, in channel order."""
        keys = {channel: f"label_{channel}" for channel in range(1, num_labels + 1)}
        guidance = {keys[c]: [list(p) for p in self.by_channel.get(c, [])] for c in range(1, num_labels + 1)}
        guidance[BACKGROUND] = [list(p) for p in self.by_channel.get(0, [])]
        return guidance


def refine_spec(segmentation: NetworkSpec) -> NetworkSpec:
    """The refinement network's architecture: the segmentation network's, with the guidance inputs, no dropout."""
    labels = segmentation.out_channels - 1
    return replace(segmentation, in_channels=segmentation.in_channels + 2 * labels + 1, dropout=0.0)


def refine_state_from_segmentation(
    segmentation: Mapping[str, torch.Tensor], *, spec: NetworkSpec
) -> dict[str, torch.Tensor]:
    """Weights that make the refinement network of ``spec`` answer as the ``segmentation`` weights do.

    Every tensor is copied; a first-layer kernel, which has more input channels here (mask and
    guidance after the image), gets the segmentation kernel for the image channels and zeros
    for the others.  Training then starts from the segmentation model's boundaries and has
    only to learn what the mask and the clicks add, as a zero-initialised control branch does;
    from random weights it must first learn to segment again.
    """
    state = build_network(spec).state_dict()
    for key, target in state.items():
        source = segmentation.get(key)
        if source is None:
            raise ValueError(f"the segmentation weights lack {key!r}, got keys of another architecture")
        if source.shape == target.shape:
            state[key] = source.detach().clone()
        elif (
            source.dim() == target.dim() > 1
            and source.shape[0] == target.shape[0]
            and source.shape[2:] == target.shape[2:]
        ):
            widened = torch.zeros_like(target)
            widened[:, : source.shape[1]] = source
            state[key] = widened
        else:
            raise ValueError(f"cannot widen {key!r} from {tuple(source.shape)} to {tuple(target.shape)}")
    return state


def refine_inputs(
    image: torch.Tensor, mask: torch.Tensor | np.ndarray, clicks: Clicks, *, num_labels: int
) -> torch.Tensor:
    """The refinement network's input ``[1 + 2 L + 1, x, y, z]`` from an image ``[1, x, y, z]``,
    a mask of channel indices ``[x, y, z]`` (or ``[1, x, y, z]``) and clicks on the same grid."""
    image = torch.as_tensor(image, dtype=torch.float32)
    mask = torch.as_tensor(np.asarray(mask)).reshape(image.shape[1:]).long()
    one_hot = torch.stack([(mask == channel).float() for channel in range(1, num_labels + 1)])
    signal = AddGuidanceSignalDeepEditd(keys="image", guidance="guidance", sigma=GUIDANCE_SIGMA)
    guided = signal({"image": image.detach().cpu().numpy(), "guidance": clicks.guidance(num_labels)})["image"]
    guidance = torch.as_tensor(np.asarray(guided)[1:], dtype=torch.float32)
    return torch.cat([image.cpu(), one_hot, guidance], dim=0)


def error_regions(mask: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected regions (26-neighbourhood) where ``mask`` and ``truth`` disagree and the truth has one value.

    Returns the region id map (0: no error) and the number of regions.
    """
    regions = np.zeros(truth.shape, dtype=np.int32)
    count = 0
    wrong = mask != truth
    structure = np.ones((3, 3, 3), dtype=bool)
    for value in np.unique(truth[wrong]):
        labeled, found = ndimage.label(wrong & (truth == value), structure=structure)
        regions[labeled > 0] = labeled[labeled > 0] + count
        count += int(found)
    return regions, count


def largest_error_click(mask: np.ndarray, truth: np.ndarray) -> Click | None:
    """The click at the voxel deepest inside the largest error region; ``None`` when the mask is right."""
    regions, count = error_regions(mask, truth)
    if count == 0:
        return None
    sizes = np.bincount(regions.ravel(), minlength=count + 1)
    sizes[0] = 0
    return _deepest_click(regions == int(sizes.argmax()), truth)


def _deepest_click(region: np.ndarray, truth: np.ndarray) -> Click:
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1, 1:-1]
    x, y, z = np.unravel_index(int(depth.argmax()), region.shape)
    return Click(point=(int(x), int(y), int(z)), channel=int(truth[x, y, z]))


def corrupt_mask(truth: np.ndarray, rng: np.random.Generator, *, num_labels: int) -> np.ndarray:
    """A plausible wrong mask made from ``truth``: per label eroded or dilated, blobs missed or swapped.

    One in ten is the truth itself (nothing to correct) and one in ten is empty (nothing found).
    """
    draw = rng.random()
    if draw < 0.1:
        return truth.copy()
    if draw < 0.2:
        return np.zeros_like(truth)
    mask = truth.copy()
    for channel in range(1, num_labels + 1):
        region = truth == channel
        if not region.any():
            continue
        iterations = int(rng.integers(1, 3))
        operation = rng.integers(3)
        if operation == 0:
            mask[region & ~ndimage.binary_erosion(region, iterations=iterations)] = 0
        elif operation == 1:
            grown = ndimage.binary_dilation(region, iterations=iterations)
            mask[grown & (mask == 0)] = channel
    for _ in range(int(rng.integers(0, 3))):
        _paint_blob(mask, truth, rng, num_labels=num_labels)
    return mask


def _paint_blob(mask: np.ndarray, truth: np.ndarray, rng: np.random.Generator, *, num_labels: int) -> None:
    """Overwrite a ball near the structures with a random wrong channel (a missed or swapped part)."""
    foreground = np.argwhere(truth > 0)
    if len(foreground) == 0:
        return
    centre = foreground[rng.integers(len(foreground))] + rng.integers(-3, 4, size=3)
    radius = float(rng.uniform(2.0, 5.0))
    grid = np.ogrid[tuple(slice(0, n) for n in truth.shape)]
    ball = sum((axis - c) ** 2 for axis, c in zip(grid, centre, strict=True)) <= radius**2
    mask[ball] = int(rng.integers(0, num_labels + 1))


def simulated_clicks(
    mask: np.ndarray, truth: np.ndarray, rng: np.random.Generator, *, count: int
) -> tuple[Clicks, np.ndarray]:
    """Up to ``count`` clicks on the errors of ``mask``, each in a different error region.

    Mostly the largest region first (as the evaluation clicks), sometimes a random one, the
    voxel drawn towards the region's inside.  Returns the clicks and the mask with the clicked
    regions corrected half of the time (the earlier clicks' regions already fixed, as after
    earlier refinements).
    """
    clicks = Clicks()
    regions, found = error_regions(mask, truth)
    if found == 0 or count == 0:
        return clicks, mask
    sizes = np.bincount(regions.ravel(), minlength=found + 1)[1:]
    order = list(np.argsort(-sizes) + 1)
    current = mask.copy()
    fix_earlier = rng.random() < 0.5
    for _ in range(min(count, found)):
        pick = order.pop(0) if rng.random() < 0.75 or len(order) == 1 else order.pop(int(rng.integers(len(order))))
        region = regions == pick
        depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1, 1:-1].ravel()
        weights = depth**2
        index = int(rng.choice(len(weights), p=weights / weights.sum()))
        point = tuple(int(v) for v in np.unravel_index(index, region.shape))
        clicks.add(Click(point=point, channel=int(truth[point])))  # type: ignore[arg-type]
        if fix_earlier and order:
            current[region] = truth[region]
    return clicks, current


class SimulatedInteraction:
    """A training patch transform: image and truth in, the refinement input and the truth out.

    The patch's ``label`` is ``[1 + K, x, y, z]``: the truth, then ``K >= 0`` masks of the
    segmentation model (:func:`with_model_masks`; they ride in the label so that patch
    sampling and augmentation move them with it).  The network is given back the truth alone.

    Args:
        num_labels: foreground labels ``L``.
        max_clicks: clicks per patch are drawn from ``0..max_clicks``.
        model_mask_share: share of patches (when the label carries model masks) whose wrong
            mask is one of them, drawn at random; the others get :func:`corrupt_mask`.
        focus_radius: in a patch with clicks, the truth beyond this many voxels of every click
            becomes :data:`~activelabel.labelmap.NOT_ANNOTATED`, so the loss counts only where
            the answer is used (:func:`merge_near_clicks`); ``None`` keeps the whole patch.
        seed: seed of the corruption and click draws.
    """

    def __init__(
        self,
        *,
        num_labels: int,
        max_clicks: int = 5,
        model_mask_share: float = MODEL_MASK_SHARE,
        focus_radius: float | None = FOCUS_RADIUS,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= model_mask_share <= 1.0:
            raise ValueError(f"model_mask_share must be in [0, 1], got {model_mask_share}")
        if focus_radius is not None and focus_radius <= 0:
            raise ValueError(f"focus_radius must be positive or None, got {focus_radius}")
        self.num_labels = num_labels
        self.max_clicks = max_clicks
        self.model_mask_share = model_mask_share
        self.focus_radius = focus_radius
        self.rng = np.random.default_rng(seed)

    def __call__(self, patch: Mapping[str, Any]) -> dict[str, Any]:
        image = torch.as_tensor(patch["image"])
        label = torch.as_tensor(patch["label"])
        channels = label.detach().cpu().numpy().astype(np.int64)
        truth = channels[0]
        unannotated = truth > self.num_labels
        annotated = np.where(unannotated, 0, truth)  # unannotated voxels: no clicks, no mask
        if len(channels) > 1 and self.rng.random() < self.model_mask_share:
            mask = np.where(unannotated, 0, channels[int(self.rng.integers(1, len(channels)))])
        else:
            mask = corrupt_mask(annotated, self.rng, num_labels=self.num_labels)
        clicks, current = simulated_clicks(
            mask, annotated, self.rng, count=int(self.rng.integers(0, self.max_clicks + 1))
        )
        inputs = refine_inputs(image, current, clicks, num_labels=self.num_labels)
        target = label[:1]
        if self.focus_radius is not None and clicks.count:
            far = ~near_clicks(clicks, truth.shape, radius=self.focus_radius)
            target = target.clone()
            target[0][torch.as_tensor(far)] = NOT_ANNOTATED
        return {**patch, "image": inputs, "label": target}


@torch.no_grad()
def with_model_masks(
    volumes: Sequence[Mapping[str, Any]], network: torch.nn.Module, *, inferer: Any, samples: int = MODEL_MASKS
) -> list[dict[str, Any]]:
    """The volumes with ``samples`` MC-dropout masks of the segmentation ``network`` stacked under the truth.

    Each label becomes ``[1 + samples, x, y, z]`` (channel indices); a network without
    dropout gives ``samples`` equal deterministic masks.  These are the model's real
    mistakes for :class:`SimulatedInteraction` to click on.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    device = next(network.parameters()).device
    stacked = []
    network.eval()
    with mc_dropout(network) if dropout_layers(network) else contextlib.nullcontext():
        for volume in volumes:
            image = torch.as_tensor(volume["image"])
            label = torch.as_tensor(volume["label"])
            masks = []
            for _ in range(samples):
                logits = inferer(image.unsqueeze(0).to(device), network)
                masks.append(torch.as_tensor(logits)[0].argmax(dim=0).cpu().to(label.dtype))
            stacked.append({**volume, "label": torch.cat([label[:1], torch.stack(masks)], dim=0)})
    return stacked


@torch.no_grad()
def refine_probabilities(
    network: torch.nn.Module,
    image: torch.Tensor,
    mask: np.ndarray,
    clicks: Clicks,
    *,
    inferer: Any,
    num_labels: int,
) -> torch.Tensor:
    """Softmax ``[L + 1, x, y, z]`` of the refinement network for one pre-processed volume."""
    inputs = refine_inputs(torch.as_tensor(image), mask, clicks, num_labels=num_labels)
    return predict_probabilities(network, inputs, inferer)


def merge_near_clicks(
    mask: np.ndarray,
    refined: np.ndarray,
    clicks: Clicks,
    *,
    radius: float = LOCAL_RADIUS,
    sampling: Sequence[float] | None = None,
) -> np.ndarray:
    """``refined`` within ``radius`` of a click, ``mask`` elsewhere: a click changes only its neighbourhood.

    ``radius`` is in voxels, or in the units of ``sampling`` (the voxel size per axis, e.g.
    mm) when given.  Without it the network also redraws boundaries far from any click,
    which on the hippocampus lost more than the clicks gained (``bench/refine_hippocampus.py``).
    """
    if not clicks.count or radius <= 0:
        return np.asarray(refined)
    return np.where(near_clicks(clicks, mask.shape, radius=radius, sampling=sampling), refined, mask)


def near_clicks(
    clicks: Clicks, shape: Sequence[int], *, radius: float, sampling: Sequence[float] | None = None
) -> np.ndarray:
    """Boolean map of ``shape``: within ``radius`` (voxels, or units of ``sampling``) of any click."""
    seeds = np.ones(tuple(shape), dtype=bool)
    for points in clicks.by_channel.values():
        for point in points:
            seeds[point] = False
    return ndimage.distance_transform_edt(seeds, sampling=sampling) <= radius


def click_curve(
    *,
    segment: Any,
    refine: Any,
    truth: np.ndarray,
    clicks: int,
    channels: Mapping[str, int],
) -> list[dict[str, float]]:
    """Mean Dice per label after 0..``clicks`` clicks, each placed at the largest error of the current mask.

    ``segment()`` gives the starting mask; ``refine(mask, clicks)`` the next one (both channel
    index arrays on the model grid of ``truth``).
    """
    mask = np.asarray(segment())
    placed = Clicks()
    curve = [dice_per_label(mask, truth, channels)]
    for _ in range(clicks):
        click = largest_error_click(mask, truth)
        if click is not None:
            placed.add(click)
            mask = np.asarray(refine(mask, placed))
        curve.append(dice_per_label(mask, truth, channels))
    return curve


def label_channels(labels: LabelMap) -> dict[str, int]:
    """Label name -> channel index of ``labels`` (for Dice per label)."""
    return {name: index for index, name in labels.channel_names().items()}


def points_to_model_grid(
    points: Sequence[Sequence[float]], *, source_affine: np.ndarray, model_affine: np.ndarray
) -> list[Point]:
    """Voxel indices of the image file (``source_affine``: file voxel -> world) as model-grid voxels."""
    if not len(points):
        return []
    ijk = np.c_[np.asarray(points, dtype=float), np.ones(len(points))]
    world = ijk @ np.asarray(source_affine, dtype=float).T
    model = world @ np.linalg.inv(np.asarray(model_affine, dtype=float)).T
    rounded = np.rint(model[:, :3]).astype(int)
    return [(int(p[0]), int(p[1]), int(p[2])) for p in rounded]


def train_refine_network(
    store: ModelStore,
    volumes: Sequence[Mapping[str, Any]],
    *,
    preset: Preset,
    labels: LabelMap,
    options: TrainOptions,
    device: str = "cpu",
    segmentation: torch.nn.Module | None = None,
    inferer: Any = None,
    model_masks: int = MODEL_MASKS,
    model_mask_share: float = MODEL_MASK_SHARE,
    focus_radius: float | None = FOCUS_RADIUS,
    max_clicks: int = 5,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> ModelInfo:
    """Warm-start the store's refinement network on pre-processed labeled volumes and publish the next version.

    Every patch gets a wrong mask and simulated clicks (:class:`SimulatedInteraction`): with
    a ``segmentation`` network (and ``inferer``, its sliding window), ``model_mask_share`` of
    the patches get one of its ``model_masks`` MC-dropout answers, the others a corrupted
    truth.  An untrained refinement network (version 0) starts from the segmentation
    network's weights (:func:`refine_state_from_segmentation`).  There is no validation (its
    inputs would need clicks too), so ``options`` should carry no patience: the run is the
    step cap.
    """
    if segmentation is not None and model_masks > 0:
        if inferer is None:
            raise ValueError("model masks need the segmentation network's inferer, got None")
        volumes = with_model_masks(volumes, segmentation, inferer=inferer, samples=model_masks)
    network, info = load_model(store, device=device)
    if segmentation is not None and not info.trained:  # version 0, the initial weights
        try:
            start = refine_state_from_segmentation(segmentation.state_dict(), spec=NetworkSpec.from_dict(info.spec))
        except ValueError as error:  # the settings' network changed after the segmentation model was trained
            logger.warning("refinement network starts from its initial weights: %s", error)
        else:
            network.load_state_dict(start)
    interaction = SimulatedInteraction(
        num_labels=len(labels.names),
        max_clicks=max_clicks,
        model_mask_share=model_mask_share,
        focus_radius=focus_radius,
        seed=options.seed,
    )
    result = train_network(
        network,
        volumes,
        [],
        preset=preset,
        labels=labels,
        options=replace(options, patience=None),
        device=device,
        on_epoch=on_epoch,
        patch_transform=interaction,
    )
    return store.publish(
        result.state_dict,
        spec=load_model_spec(store),
        labels=labels.to_dict(),
        train_count=result.train_count,
        epochs=result.epochs,
        best_epoch=result.best_epoch,
    )


def load_model_spec(store: ModelStore) -> dict[str, Any]:
    """The architecture (as a dict) of the store's published network."""
    info = store.info()
    if info is None:
        raise FileNotFoundError(f"no model published in {store.directory}")
    return dict(info.spec)
