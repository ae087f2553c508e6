"""Make the shipped starting models for the phantom sample data and measure them on fresh phantoms.

``make serve`` generates 12 CT phantoms (series seed 0) and installs the starting model
shipped in ``lib/activelabel/data/starters/`` (no download, no training at setup).  This
script measures it as ``data generate`` installs it, on the sample datastore's own volumes
(which it never saw): mean Dice of each volume's pre-segmentation against the generator's
truth, written to ``bench/results/starter-models-<modality>.json`` (about a minute).  With
``--train`` it first makes that checkpoint again: the default network trained on separately
seeded phantoms (:func:`activelabel.data.starter_model.train_starter_model`, the recipe below),
written in half precision (about 20 minutes on 2 CPU cores; ``--device cuda`` for a GPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from activelabel.data.layout import image_path, truth_path
from activelabel.data.phantoms import generate_datastore
from activelabel.data.starter_model import (
    STARTERS,
    StarterRecipe,
    StarterSource,
    install_starter_model,
    starter_settings,
    train_starter_model,
)
from activelabel.fsutil import atomic_write, atomic_write_json
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import load_model, predict_probabilities
from activelabel.ml.metrics import dice_per_label, mean_dice
from activelabel.ml.training import load_volumes

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHIPPED_RECIPE = StarterRecipe(volumes=10, val_volumes=2, steps=500, steps_per_epoch=50, samples_per_volume=2)
"""The recipe of the shipped CT checkpoint."""


def train_shipped(modality: str, *, steps: int, conf: dict[str, str], project: Path | None) -> float:
    """Train the starter on fresh phantoms (or take ``project``'s model) and write it as the shipped file."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="starter-train-") as scratch:
        if project is None:
            project = Path(scratch) / "sample"
            generate_datastore(project, modality=modality, count=12, seed=0)
            recipe = StarterRecipe(**{**SHIPPED_RECIPE.__dict__, "steps": steps})
            bar = tqdm(total=recipe.steps, desc=f"training the {modality} starter", unit="step")
            train_starter_model(
                project, modality=modality, recipe=recipe, conf=conf, on_epoch=lambda r: bar.update(r["steps"] - bar.n)
            )
            bar.close()
        network, info = load_model(ModelStore(starter_settings(project, conf=conf).model_dir))
    half = {k: v.half() if v.is_floating_point() else v for k, v in network.state_dict().items()}
    STARTERS.mkdir(parents=True, exist_ok=True)
    payload = {"model": half, "activelabel": info.to_dict()}
    atomic_write(STARTERS / f"{modality}-segmentation.pt", lambda tmp: torch.save(payload, tmp), suffix=".pt")
    return time.perf_counter() - began


def measure_shipped(modality: str, *, count: int, conf: dict[str, str]) -> dict[str, Any]:
    """Install the shipped starter into fresh sample data as ``data generate`` does; Dice of its pre-segmentations."""
    with tempfile.TemporaryDirectory(prefix="starter-measure-") as scratch:
        sample = Path(scratch) / "sample"
        generate_datastore(sample, modality=modality, count=count, seed=0)
        outcome = install_starter_model(sample, modality=modality, conf=conf)
        if outcome.source is not StarterSource.SHIPPED:
            raise SystemExit(f"no shipped {modality} starter fits the default settings (got {outcome.source.value})")
        settings = starter_settings(sample, conf=conf)
        network, info = load_model(ModelStore(settings.model_dir), device=settings.device)
        ids = [f"{modality}_{i:03d}" for i in range(count)]
        items = [{"image": str(image_path(sample, c)), "label": str(truth_path(sample, c))} for c in ids]
        volumes = load_volumes(items, preset=settings.preset, labels=settings.labels)
        channels = {name: index for index, name in settings.labels.channel_names().items()}
        inferer = settings.inferer()
        per_volume = []
        for volume in tqdm(volumes, desc="pre-segmenting the sample volumes", unit="volume"):
            prediction = predict_probabilities(network, volume["image"], inferer).argmax(dim=0).numpy()
            per_volume.append(dice_per_label(prediction, np.asarray(volume["label"][0]), channels))
    means = [mean_dice(d.values()) for d in per_volume]
    return {
        "origin": info.origin,
        "held_out_phantom_mean_dice": info.val_mean_dice,
        "sample_volumes": count,
        "sample_mean_dice": float(np.mean(means)),
        "sample_min_dice": float(np.min(means)),
        "sample_dice_per_label": {name: float(np.mean([d[name] for d in per_volume])) for name in per_volume[0]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modality", default="ct", choices=["ct", "mr"])
    parser.add_argument("--count", type=int, default=12, help="sample volumes measured (make serve's 12)")
    parser.add_argument("--train", action="store_true", help="train the starter again and replace the shipped file")
    parser.add_argument("--steps", type=int, default=SHIPPED_RECIPE.steps, help="training steps with --train")
    parser.add_argument("--from-project", type=Path, default=None, help="with --train: ship this project's model")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: the settings' auto)")
    args = parser.parse_args()
    conf = {"device": args.device} if args.device else {}
    seconds = (
        train_shipped(args.modality, steps=args.steps, conf=conf, project=args.from_project) if args.train else None
    )
    shipped = STARTERS / f"{args.modality}-segmentation.pt"
    results = {
        "modality": args.modality,
        "recipe": SHIPPED_RECIPE.__dict__,
        "checkpoint": str(shipped.relative_to(REPO)),
        "checkpoint_bytes": shipped.stat().st_size,
        "training_seconds_this_run": seconds,
        "threads": torch.get_num_threads(),
        **measure_shipped(args.modality, count=args.count, conf=conf),
        "target_mean_dice": 0.8,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"starter-models-{args.modality}.json", results)
    print(
        f"{args.modality} starter: sample mean Dice {results['sample_mean_dice']:.3f} "
        f"(min {results['sample_min_dice']:.3f}) over {args.count} volumes; "
        f"{shipped} ({results['checkpoint_bytes'] / 1e6:.1f} MB)"
    )


if __name__ == "__main__":
    main()
