"""Make the shipped starting models for the phantom sample data and measure them on fresh phantoms.

``make serve`` generates 12 CT phantoms (series seed 0) and installs the starting model
shipped in ``lib/activelabel/data/starters/`` (no download, no training at setup).  This
script measures it as ``data generate`` installs it, on the sample datastore's own volumes
(which it never saw): mean Dice of each volume's pre-segmentation against the generator's
truth, written to ``bench/results/starter-models-<modality>.json`` (about a minute).  With
``--train`` it first makes that checkpoint again: the default network trained on separately
seeded phantoms (:func:`activelabel.data.starter_model.train_starter_model`, the recipe below),
written compactly, int8 weights with per-channel scales, under 2 MB (about 20 minutes on
2 CPU cores; ``--device cuda`` for a GPU), and the click-conditioned
refinement network on the same phantoms (``ct-refine.pt``), measured by mean Dice after
1 to 3 clicks on the sample volumes (each at the largest error of the current mask).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
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
    train_starter_refine,
)
from activelabel.fsutil import atomic_write, atomic_write_json
from activelabel.ml.checkpoints import ModelStore, compact_state
from activelabel.ml.inference import load_model, predict_probabilities
from activelabel.ml.interaction import LOCAL_RADIUS, REFINE_MODEL, click_curve, merge_near_clicks, refine_probabilities
from activelabel.ml.metrics import dice_per_label, mean_dice
from activelabel.ml.training import load_volumes

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
REFINE_STEPS = 300
"""Training steps of the shipped refinement network (the segmentation recipe otherwise)."""
CLICKS = 3
"""Clicks measured on each sample volume with the shipped refinement network."""
SHIPPED_RECIPE = StarterRecipe(volumes=10, val_volumes=2, steps=500, steps_per_epoch=50, samples_per_volume=2)
"""The recipe of the shipped CT checkpoint."""


def train_shipped(modality: str, *, steps: int, refine_steps: int, conf: dict[str, str], project: Path | None) -> float:
    """Train the starters on fresh phantoms (or take ``project``'s) and write them as the shipped files.

    The segmentation network is trained unless ``project`` has one; the refinement network
    unless ``project`` has a trained one; what was trained here is written as the shipped file,
    compactly (int8 weights, :func:`~activelabel.ml.checkpoints.compact_state`).
    """
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="starter-train-") as scratch:
        recipe = StarterRecipe(**{**SHIPPED_RECIPE.__dict__, "steps": steps})
        trained: list[str] = []
        if project is None:
            project = Path(scratch) / "sample"
            generate_datastore(project, modality=modality, count=12, seed=0)
            with _bar(f"training the {modality} starter", recipe.steps) as on_epoch:
                train_starter_model(project, modality=modality, recipe=recipe, conf=conf, on_epoch=on_epoch)
            trained.append("segmentation")
        model_dir = starter_settings(project, conf=conf).model_dir
        refine_info = ModelStore(model_dir, name=REFINE_MODEL).info()
        if refine_info is None or not refine_info.trained:
            refine_recipe = StarterRecipe(**{**recipe.__dict__, "steps": refine_steps})
            with _bar(f"training the {modality} refine starter", refine_steps) as on_epoch:
                train_starter_refine(project, modality=modality, recipe=refine_recipe, conf=conf, on_epoch=on_epoch)
            trained.append(REFINE_MODEL)
        for name in trained:  # a project's network taken as it is ships as it was (no second quantization)
            network, info = load_model(ModelStore(model_dir, name=name))
            STARTERS.mkdir(parents=True, exist_ok=True)
            payload = {**compact_state(network.state_dict()), "activelabel": info.to_dict()}
            atomic_write(STARTERS / f"{modality}-{name}.pt", lambda tmp, p=payload: torch.save(p, tmp), suffix=".pt")
    return time.perf_counter() - began


@contextlib.contextmanager
def _bar(desc: str, total: int) -> Iterator[Callable[[dict[str, Any]], None]]:
    bar = tqdm(total=total, desc=desc, unit="step")
    try:
        yield lambda record: bar.update(record["steps"] - bar.n)
    finally:
        bar.close()


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
        refine_store = ModelStore(settings.model_dir, name=REFINE_MODEL)
        refinement = load_model(refine_store, device=settings.device)[0] if refine_store.info() else None
        ids = [f"{modality}_{i:03d}" for i in range(count)]
        items = [{"image": str(image_path(sample, c)), "label": str(truth_path(sample, c))} for c in ids]
        volumes = load_volumes(items, preset=settings.preset, labels=settings.labels)
        channels = {name: index for index, name in settings.labels.channel_names().items()}
        inferer = settings.inferer()
        per_volume: list[dict[str, float]] = []
        curves: list[list[float]] = []  # as the server's refine task answers: changed only near the clicks
        whole_curves: list[list[float]] = []  # the network's whole redrawn mask
        for volume in tqdm(volumes, desc="pre-segmenting the sample volumes (and clicks)", unit="volume"):
            truth = np.asarray(volume["label"][0]).astype(np.int64)
            image = volume["image"]
            prediction = predict_probabilities(network, image, inferer).argmax(dim=0).numpy()
            per_volume.append(dice_per_label(prediction, truth, channels))
            if refinement is None:
                continue
            for local, found in ((True, curves), (False, whole_curves)):

                def refine(mask: np.ndarray, clicks: Any, image: Any = image, local: bool = local) -> np.ndarray:
                    probabilities = refine_probabilities(
                        refinement, image, mask, clicks, inferer=inferer, num_labels=len(channels)
                    )
                    refined = probabilities.argmax(dim=0).numpy()
                    return merge_near_clicks(mask, refined, clicks) if local else refined

                curve = click_curve(
                    segment=lambda p=prediction: p, refine=refine, truth=truth, clicks=CLICKS, channels=channels
                )
                found.append([mean_dice(point.values()) for point in curve])
    means = [mean_dice(d.values()) for d in per_volume]

    def by_clicks(found: list[list[float]]) -> dict[str, float] | None:
        return {str(n): float(np.mean([c[n] for c in found])) for n in range(CLICKS + 1)} if found else None

    return {
        "origin": info.origin,
        "held_out_phantom_mean_dice": info.val_mean_dice,
        "sample_volumes": count,
        "sample_mean_dice": float(np.mean(means)),
        "sample_min_dice": float(np.min(means)),
        "sample_dice_per_label": {name: float(np.mean([d[name] for d in per_volume])) for name in per_volume[0]},
        "sample_mean_dice_after_clicks": by_clicks(curves),
        "sample_mean_dice_after_clicks_whole_mask": by_clicks(whole_curves),
        "local_radius": LOCAL_RADIUS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modality", default="ct", choices=["ct", "mr"])
    parser.add_argument("--count", type=int, default=12, help="sample volumes measured (make serve's 12)")
    parser.add_argument("--train", action="store_true", help="train the starter again and replace the shipped file")
    parser.add_argument("--steps", type=int, default=SHIPPED_RECIPE.steps, help="training steps with --train")
    parser.add_argument("--refine-steps", type=int, default=REFINE_STEPS, help="refine training steps with --train")
    parser.add_argument("--from-project", type=Path, default=None, help="with --train: ship this project's model")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: the settings' auto)")
    args = parser.parse_args()
    conf = {"device": args.device} if args.device else {}
    seconds = (
        train_shipped(
            args.modality, steps=args.steps, refine_steps=args.refine_steps, conf=conf, project=args.from_project
        )
        if args.train
        else None
    )
    shipped = STARTERS / f"{args.modality}-segmentation.pt"
    results = {
        "modality": args.modality,
        "recipe": SHIPPED_RECIPE.__dict__,
        "refine_steps": REFINE_STEPS,
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
    for key, how in (("", f"changed within {LOCAL_RADIUS} voxels of the clicks"), ("_whole_mask", "whole mask")):
        curve = results[f"sample_mean_dice_after_clicks{key}"]
        if curve:
            clicks = ", ".join(f"{n}: {d:.3f}" for n, d in curve.items())
            print(f"mean Dice after clicks with the shipped refine network ({how}): {clicks}")


if __name__ == "__main__":
    main()
