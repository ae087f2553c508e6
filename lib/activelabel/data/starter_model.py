"""A starting model for a phantom datastore, trained on phantoms the datastore never holds.

A fresh project's version 0 is untrained: its first pre-segmentation is noise.  For the
sample data this module trains the project's own network (the settings the server will
use: same spacing, patch size and architecture) on separately seeded phantoms of the same
modality, so that ``make serve`` starts with a model whose pre-segmentations are useful on
volumes it has never seen, without any download.  The model is published as the project's
next version with ``origin`` saying where it came from and ``train_count`` 0, so labels
submitted later count in full towards retraining.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from activelabel.config import DEFAULT_APP_DIR, Settings, load_settings
from activelabel.data.layout import final_label_path, image_path, write_datastore
from activelabel.data.phantoms import PHANTOM_LABELS, generate_phantom
from activelabel.labelmap import LabelMap
from activelabel.ml.checkpoints import ModelInfo, ModelStore
from activelabel.ml.inference import load_model
from activelabel.ml.interaction import REFINE_MODEL, refine_spec, train_refine_network
from activelabel.ml.metrics import mean_dice
from activelabel.ml.training import TrainOptions, load_volumes, train_network, validate
from activelabel.ml.transforms import Modality, Preset

logger = logging.getLogger(__name__)

STARTERS = Path(__file__).resolve().parent / "starters"
"""Shipped starter checkpoints, ``<modality>-<model>.pt`` (see ``bench/starter_models.py``, which makes them)."""

STARTER_SEED_OFFSET = 1_000_003
"""Added to the datastore's seed for the starter's phantoms, so no training volume is in the datastore."""


@dataclass(frozen=True)
class StarterRecipe:
    """How long and on what the starter trains (defaults: about 2 minutes on 2 CPU cores for CT).

    Attributes:
        volumes: phantoms trained on.
        val_volumes: further phantoms whose Dice is recorded in the model's info.
        steps: optimizer steps.
        steps_per_epoch: steps between progress reports.
        learning_rate: initial learning rate (cosine decay to 0 over ``steps``).
    """

    volumes: int = 6
    val_volumes: int = 2
    steps: int = 100
    steps_per_epoch: int = 10
    learning_rate: float = 0.003
    samples_per_volume: int = 1
    patch_voxels: int = 64 * 64 * 48
    """Training patches are cropped to at most this many voxels (the server's patch scaled down
    evenly), a third of a CT phantom's: the network is fully convolutional, so it segments
    with the server's larger windows all the same."""

    def __post_init__(self) -> None:
        if self.volumes < 1 or self.val_volumes < 0:
            raise ValueError(f"volumes must be >= 1 and val_volumes >= 0, got {self.volumes}, {self.val_volumes}")
        if self.steps < 1 or self.steps_per_epoch < 1 or self.steps % self.steps_per_epoch:
            raise ValueError(f"steps must be a positive multiple of steps_per_epoch, got {self.steps}")


class StarterSource(str, Enum):
    """Where a phantom datastore's starting model came from."""

    EXISTING = "existing"
    """A trained model was there already: nothing changed."""
    SHIPPED = "shipped"
    """The checkpoint shipped with ActiveLabel for these phantoms and this network."""
    NONE = "none"
    """No shipped checkpoint fits the project's network settings: version 0 stays."""


@dataclass(frozen=True)
class StarterOutcome:
    """What :func:`install_starter_model` did."""

    source: StarterSource
    info: ModelInfo


def shipped_starter(modality: Modality | str, *, model: str = "segmentation") -> Path | None:
    """The shipped starter checkpoint of ``modality`` phantoms, or ``None``."""
    path = STARTERS / f"{Modality(modality).value}-{model}.pt"
    return path if path.is_file() else None


def install_starter_model(
    studies: Path, *, modality: Modality | str, conf: dict[str, str] | None = None
) -> StarterOutcome:
    """Give a phantom datastore a starting model: keep a trained one, else import the shipped one.

    The shipped checkpoints (the segmentation network's and, when shipped, the refinement
    network's) fit the default network settings; with other settings nothing fits and the
    project keeps its untrained version 0 (``StarterSource.NONE``).
    """
    settings = starter_settings(studies, conf=conf)
    store = ModelStore(settings.model_dir)
    existing = store.ensure_initial(settings.network, settings.labels.to_dict(), seed=settings.seed)
    if existing.trained:
        return StarterOutcome(StarterSource.EXISTING, existing)
    shipped = shipped_starter(modality)
    if shipped is None:
        return StarterOutcome(StarterSource.NONE, existing)
    try:
        info = store.import_checkpoint(shipped, spec=settings.network, labels=settings.labels.to_dict())
    except ValueError as error:
        logger.info("the shipped starter does not fit this project: %s", error)
        return StarterOutcome(StarterSource.NONE, existing)
    _install_shipped_refine(settings, modality)
    return StarterOutcome(StarterSource.SHIPPED, info or existing)


def _install_shipped_refine(settings: Settings, modality: Modality | str) -> None:
    """Import the shipped refinement network too, when there is one and it fits."""
    shipped = shipped_starter(modality, model=REFINE_MODEL)
    if shipped is None:
        return
    store = ModelStore(settings.model_dir, name=REFINE_MODEL)
    spec = refine_spec(settings.network)
    store.ensure_initial(spec, settings.labels.to_dict(), seed=settings.seed)
    try:
        store.import_checkpoint(shipped, spec=spec, labels=settings.labels.to_dict())
    except ValueError as error:
        logger.info("the shipped refine starter does not fit this project: %s", error)


def starter_settings(studies: Path, *, conf: dict[str, str] | None = None) -> Settings:
    """The settings the server will resolve for ``studies`` (bundled app, ``conf`` as given)."""
    return load_settings(conf or {}, studies=str(studies), app_dir=str(DEFAULT_APP_DIR), env={})


def train_starter_model(
    studies: Path,
    *,
    modality: Modality | str,
    seed: int = 0,
    recipe: StarterRecipe | None = None,
    conf: dict[str, str] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> ModelInfo | None:
    """Train and publish the starter model of a phantom datastore; ``None`` when a trained model exists.

    Args:
        studies: the datastore folder (its ``labels.json`` must be the phantoms' labels).
        modality: the phantoms' modality.
        seed: the datastore's series seed; the starter's phantoms use ``seed + STARTER_SEED_OFFSET``.
        recipe: volumes and steps.
        conf: settings as the server will get them (``--conf``), so the network matches.
        on_epoch: called after every ``recipe.steps_per_epoch`` steps with the epoch record.

    Raises:
        ValueError: when the datastore's labels are not the phantoms' labels of ``modality``.
    """
    modality = Modality(modality)
    recipe = recipe or StarterRecipe()
    settings = starter_settings(studies, conf=conf)
    expected = LabelMap.from_mapping(PHANTOM_LABELS[modality])
    if settings.labels.to_dict() != expected.to_dict():
        raise ValueError(
            f"a starter model needs the {modality.value} phantom labels {expected.to_dict()}, "
            f"got {settings.labels.to_dict()}"
        )
    store = ModelStore(settings.model_dir)
    existing = store.ensure_initial(settings.network, settings.labels.to_dict(), seed=settings.seed)
    if existing.trained:
        logger.info("model version %d exists in %s: no starter model trained", existing.version, store.directory)
        return None
    first = seed + STARTER_SEED_OFFSET
    volumes = starter_volumes(settings, modality=modality, seed=first, count=recipe.volumes + recipe.val_volumes)
    train, held_out = volumes[: recipe.volumes], volumes[recipe.volumes :]
    patch_preset = _patch_preset(settings, recipe)
    network, _ = load_model(store, device=settings.device)
    options = _options(settings, recipe, seed=first)
    result = train_network(
        network,
        train,
        [],
        preset=patch_preset,
        labels=settings.labels,
        options=options,
        device=settings.device,
        on_epoch=on_epoch,
    )
    val_dice = (
        validate(network, held_out, preset=settings.preset, labels=settings.labels, overlap=settings.sw_overlap)
        if held_out
        else {}
    )
    info = store.publish(
        result.state_dict,
        spec=settings.network.to_dict(),
        labels=settings.labels.to_dict(),
        val_dice=val_dice,
        val_mean_dice=mean_dice(val_dice.values()) if val_dice else None,
        epochs=result.epochs,
        best_epoch=result.best_epoch,
        origin=f"starter: {recipe.volumes} {modality.value} phantoms (seed {first}), {result.steps} steps",
    )
    logger.info("published starter model version %d (held-out mean Dice %s)", info.version, info.val_mean_dice)
    return info


def train_starter_refine(
    studies: Path,
    *,
    modality: Modality | str,
    seed: int = 0,
    recipe: StarterRecipe | None = None,
    conf: dict[str, str] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> ModelInfo:
    """Train the click-conditioned refinement network on the starter's phantoms and publish it.

    The same phantoms as :func:`train_starter_model` (all ``recipe.volumes + val_volumes``:
    the refinement network has no validation), simulated clicks as the server's trainer uses:
    on corrupted truths and, when the project has a trained segmentation model (the starter),
    on its own answers, starting from its weights.
    """
    modality = Modality(modality)
    recipe = recipe or StarterRecipe()
    settings = starter_settings(studies, conf=conf)
    segmentation_store = ModelStore(settings.model_dir)
    segmentation_info = segmentation_store.info()
    segmentation = (
        load_model(segmentation_store, device=settings.device)[0]
        if segmentation_info is not None and segmentation_info.trained
        else None
    )
    store = ModelStore(settings.model_dir, name=REFINE_MODEL)
    store.ensure_initial(refine_spec(settings.network), settings.labels.to_dict(), seed=settings.seed)
    first = seed + STARTER_SEED_OFFSET
    volumes = starter_volumes(settings, modality=modality, seed=first, count=recipe.volumes + recipe.val_volumes)
    options = _options(settings, recipe, seed=first)
    return train_refine_network(
        store,
        volumes,
        preset=_patch_preset(settings, recipe),
        labels=settings.labels,
        options=options,
        device=settings.device,
        segmentation=segmentation,
        inferer=settings.inferer(),
        on_epoch=on_epoch,
    )


def starter_volumes(settings: Settings, *, modality: Modality, seed: int, count: int) -> list[dict[str, Any]]:
    """``count`` phantoms of series ``seed``, pre-processed with ``settings`` (written to a scratch folder)."""
    with tempfile.TemporaryDirectory(prefix="activelabel-starter-") as folder:
        root = Path(folder)
        ids = [f"starter_{index:03d}" for index in range(count)]
        cases = ((case, generate_phantom(modality=modality, index=i, seed=seed)) for i, case in enumerate(ids))
        write_datastore(root, cases, labels=PHANTOM_LABELS[modality], labeled=count)
        items = [{"image": str(image_path(root, case)), "label": str(final_label_path(root, case))} for case in ids]
        return load_volumes(items, preset=settings.preset, labels=settings.labels)


def _options(settings: Settings, recipe: StarterRecipe, *, seed: int) -> TrainOptions:
    """The settings' training recipe at the starter's steps, learning rate and batch, no early stop."""
    return settings.train_options(
        seed=seed,
        max_epochs=recipe.steps // recipe.steps_per_epoch,
        steps_per_epoch=recipe.steps_per_epoch,
        patience=None,
        learning_rate=recipe.learning_rate,
        foreground_share=0.5,
        samples_per_volume=recipe.samples_per_volume,
    )


def _patch_preset(settings: Settings, recipe: StarterRecipe) -> Preset:
    """The settings' preset with the recipe's smaller training patch."""
    divisor = settings.network.size_divisor
    return replace(
        settings.preset, roi_size=_scaled_patch(settings.preset.roi_size, recipe.patch_voxels, divisor=divisor)
    )


def _scaled_patch(roi_size: tuple[int, int, int], voxels: int, *, divisor: int) -> tuple[int, int, int]:
    """``roi_size`` shrunk by one factor on every axis to at most ``voxels``, multiples of ``divisor``."""
    factor = min(1.0, (voxels / float(roi_size[0] * roi_size[1] * roi_size[2])) ** (1.0 / 3.0))
    x, y, z = (max(divisor, int(size * factor) // divisor * divisor) for size in roi_size)
    return (x, y, z)
