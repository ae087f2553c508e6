"""Learning curve of the segmentation trainer on the MSD hippocampus MRI (full training split).

Trains the server's own trainer (:func:`activelabel.ml.training.train_network`) from the
untrained network on every training volume of the simulator's split (160 pool volumes: 128
train, 32 validation; the 40 test volumes are never trained on nor used to choose anything),
validates every ``--val-every`` steps and keeps the best model by validation Dice, stopping
after ``--patience`` validations without improvement or at the step cap.  At each validation
it also records test mean Dice, only to print the learning curve (test Dice against steps and
wall time).  The kept model's test Dice is reported with and without test-time mirroring.

Each configuration's run is cached under ``bench/.cache/recipe-runs/`` (a rerun prints the
cached figures); the results go to ``bench/results/model-recipe.json``.  ``--device cuda``
runs the same protocol on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from al_hippocampus import REPO, RESULTS, hippocampus_volumes
from tqdm import tqdm

from activelabel.fsutil import atomic_write_json
from activelabel.ml.metrics import mean_dice
from activelabel.ml.networks import build_network, initial_state
from activelabel.ml.training import split_train_val, train_network, validate
from activelabel.simulation.loop import split_cases

RUNS = REPO / "bench" / ".cache" / "recipe-runs"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train once with the options of ``args``; the JSON-ready record (cached by configuration)."""
    _, _, settings, volumes = hippocampus_volumes(dict(args.conf or []))
    spec = settings.network
    pool, test = split_cases(sorted(volumes), test_fraction=0.2, seed=0)
    train_ids, val_ids = split_train_val(pool, val_split=0.2, seed=0)
    options = settings.train_options(
        seed=0,
        max_epochs=args.steps // args.val_every,
        steps_per_epoch=args.val_every,
        patience=args.patience,
        affine_augmentation=args.affine,
    )
    config = {
        "options": {k: (v.value if hasattr(v, "value") else v) for k, v in dataclasses.asdict(options).items()},
        "network": spec.to_dict(),
        "preset": repr(settings.preset),
        "device": args.device,
        "threads": torch.get_num_threads(),
    }
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    cached = RUNS / f"recipe-{key}.json"
    if cached.is_file() and not args.force:
        return json.loads(cached.read_text())

    network = build_network(spec)
    network.load_state_dict(initial_state(spec, seed=0))
    test_volumes = [volumes[c] for c in test]
    curve: list[dict[str, Any]] = []
    bar = tqdm(total=options.max_epochs, desc="training (validations)", unit="val")
    began = time.perf_counter()

    def on_epoch(record: dict[str, Any]) -> None:
        # Test Dice of the current weights: the learning curve only, never a choice.
        test_dice = validate(network, test_volumes, preset=settings.preset, labels=settings.labels, bf16=settings.bf16)
        point = {
            "steps": record["steps"],
            "wall_seconds": time.perf_counter() - began,
            "loss": record["loss"],
            "val_mean_dice": record.get("val_mean_dice"),
            "test_mean_dice": mean_dice(test_dice.values()),
        }
        curve.append(point)
        bar.update(1)
        bar.set_postfix(val=f"{point['val_mean_dice']:.3f}", test=f"{point['test_mean_dice']:.3f}")

    result = train_network(
        network,
        [volumes[c] for c in train_ids],
        [volumes[c] for c in val_ids],
        preset=settings.preset,
        labels=settings.labels,
        options=options,
        device=args.device,
        on_epoch=on_epoch,
    )
    bar.close()
    evaluation_began = time.perf_counter()
    plain = validate(network, test_volumes, preset=settings.preset, labels=settings.labels, bf16=settings.bf16)
    axes = options.mirror_axes or (0, 1, 2)
    mirrored = validate(
        network, test_volumes, preset=settings.preset, labels=settings.labels, mirror_axes=axes, bf16=settings.bf16
    )
    record = {
        "config": config,
        "train_count": len(train_ids),
        "val_count": len(val_ids),
        "test_count": len(test),
        "steps_run": result.steps,
        "best_epoch": result.best_epoch,
        "best_steps": (result.best_epoch or 0) * args.val_every,
        "best_val_mean_dice": result.val_mean_dice,
        "training_seconds": result.seconds,
        "seconds_per_step": result.seconds / max(result.steps, 1),
        "test_dice": plain,
        "test_mean_dice": mean_dice(plain.values()),
        "test_dice_mirrored": mirrored,
        "test_mean_dice_mirrored": mean_dice(mirrored.values()),
        "evaluation_seconds": time.perf_counter() - evaluation_began,
        "curve": curve,
    }
    RUNS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cached, record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="step cap")
    parser.add_argument("--val-every", type=int, default=100, help="optimizer steps between validations")
    parser.add_argument("--patience", type=int, default=5, help="validations without improvement before stopping")
    parser.add_argument("--affine", action="store_true", help="random rotations and scalings")
    parser.add_argument(
        "--conf",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        help="app setting on top of the defaults (the recipe: optimizer, lr_schedule, learning_rate, architecture, "
        "deep_supervision, normalization, dropout_scope, mirror_axes, foreground_share, samples_per_volume, ...)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--force", action="store_true", help="train again even when the run is cached")
    parser.add_argument("--out", type=Path, default=RESULTS / "model-recipe.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    record = run(args)
    print(f"{'steps':>6}{'minutes':>9}{'val Dice':>10}{'test Dice':>11}")
    for point in record["curve"]:
        print(
            f"{point['steps']:>6}{point['wall_seconds'] / 60:>9.1f}"
            f"{point['val_mean_dice']:>10.3f}{point['test_mean_dice']:>11.3f}"
        )
    print(
        f"kept the model of step {record['best_steps']} (val {record['best_val_mean_dice']:.3f}): "
        f"test mean Dice {record['test_mean_dice']:.3f}, with test-time mirroring "
        f"{record['test_mean_dice_mirrored']:.3f}; {record['training_seconds'] / 60:.1f} min of training "
        f"({record['seconds_per_step']:.2f} s/step, {record['config']['threads']} threads, {args.device})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
