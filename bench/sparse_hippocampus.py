"""Sparse annotation on the MSD hippocampus: slices asked for vs whole volumes, at equal slices drawn.

Methods, each over ``--seeds`` (test split and full-data reference as in ``al_hippocampus.py``):

- ``volumes_random`` and ``volumes_<default>``: whole volumes, ``--volumes-per-round`` a round
  (the runs of ``al_hippocampus.py``, read from its cache when it already ran them);
- ``slices_uncertain``: the most uncertain volumes by mutual information and in each the
  ``--slices-per-volume`` most uncertain axial slices, spread apart (the server's
  ``uncertain_slices``);
- ``slices_random``: random volumes, random slices spread apart.

Slice runs pick as many slices per round as the whole-volume runs draw on average (so the
curves meet at equal effort).  For each method: the annotated share of the pool's slices
needed to reach 95% and 97% of full-data test Dice (mean over seeds; whole volumes count all
their slices).  Writes ``bench/results/sparse-hippocampus.json`` and ``.png``.  Every run is
cached under ``bench/.cache/al-runs/`` (resumable); ``--device cuda`` for a GPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from al_hippocampus import RESULTS, _run_in_worker, hippocampus_volumes
from tqdm import tqdm

from activelabel.simulation.loop import FULL_DATA, SimulationConfig, split_cases

LEVELS = (0.95, 0.97)


def slice_fraction_to(rounds: list[dict[str, Any]], threshold: float, *, whole: bool) -> float | None:
    """Annotated share of the pool's slices at the first round reaching ``threshold`` test Dice."""
    for record in rounds:
        if record["test_mean_dice"] >= threshold:
            return record["labeled_fraction"] if whole else record["annotated_slice_fraction"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--default-strategy", default="mutual_information", help="the whole-volume strategy")
    parser.add_argument("--initial", type=int, default=5, help="volumes labeled (or sliced) at random first")
    parser.add_argument("--volumes-per-round", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slices-per-volume", type=int, default=5)
    parser.add_argument("--epochs-per-round", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=25)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--mc-samples", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "sparse-hippocampus.json")
    args = parser.parse_args()

    conf = {"device": args.device} if args.device else {}
    _, _, _, volumes = hippocampus_volumes(conf)
    pool, _ = split_cases(sorted(volumes), test_fraction=0.2, seed=0)
    depth = float(np.mean([volumes[c]["label"].shape[-1] for c in pool]))
    # Slices a whole-volume round draws on average, spread over volumes of K slices each.
    volumes_per_slice_round = max(1, round(args.volumes_per_round * depth / args.slices_per_volume))
    initial_slice_volumes = max(1, round(args.initial * depth / args.slices_per_volume))
    base = {
        "rounds": args.rounds,
        "epochs_per_round": args.epochs_per_round,
        "steps_per_epoch": args.steps_per_epoch,
        "mc_samples": args.mc_samples,
        "patience": args.patience,
        "cold_start": "random",
    }
    whole = {**base, "initial": args.initial, "per_round": args.volumes_per_round}
    sliced = {
        **base,
        "initial": initial_slice_volumes,
        "per_round": volumes_per_slice_round,
        "unit": "slices",
        "slices_per_volume": args.slices_per_volume,
    }
    methods = {
        "volumes_random": ("random", whole),
        f"volumes_{args.default_strategy}": (args.default_strategy, whole),
        "slices_uncertain": ("mutual_information", sliced),
        "slices_random": ("random", sliced),
    }
    configs = [("full_data", SimulationConfig(strategy=FULL_DATA, seed=0, **whole))]
    configs += [
        (method, SimulationConfig(strategy=strategy, seed=seed, **fields))
        for seed in args.seeds
        for method, (strategy, fields) in methods.items()
    ]
    began = time.perf_counter()
    results: dict[int, dict[str, Any]] = {}
    bar = tqdm(total=len(configs), desc="sparse-hippocampus runs", unit="run")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as workers:
        futures = {workers.submit(_run_in_worker, c, conf, args.threads): i for i, (_, c) in enumerate(configs)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(1)
    bar.close()
    full_dice = results[0]["summary"]["final_test_mean_dice"]
    summary: dict[str, Any] = {}
    curves: dict[str, list[list[dict[str, Any]]]] = {}
    for index, (method, _) in enumerate(configs):
        if method != "full_data":
            curves.setdefault(method, []).append(results[index]["rounds"])
    for method, runs in curves.items():
        is_whole = method.startswith("volumes_")
        entry: dict[str, Any] = {"seeds": len(runs)}
        for level in LEVELS:
            found = [slice_fraction_to(r, level * full_dice, whole=is_whole) for r in runs]
            reached = [f for f in found if f is not None]
            entry[f"slice_fraction_to_{round(level * 100)}"] = float(np.mean(reached)) if reached else None
            entry[f"reached_{round(level * 100)}"] = len(reached)
        entry["final_test_mean_dice"] = float(np.mean([r[-1]["test_mean_dice"] for r in runs]))
        summary[method] = entry
    best_whole = min(
        (
            v["slice_fraction_to_95"]
            for k, v in summary.items()
            if k.startswith("volumes_") and v["slice_fraction_to_95"]
        ),
        default=None,
    )
    sparse = summary["slices_uncertain"]["slice_fraction_to_95"]
    report = {
        "data": "MSD Task04 Hippocampus, 200 MRI volumes; test split and reference as al-hippocampus.json",
        "settings": {
            **vars(args),
            "out": str(args.out),
            "mean_depth": depth,
            "slice_volumes_per_round": volumes_per_slice_round,
        },
        "full_data_test_mean_dice": full_dice,
        "summary": summary,
        "slices_saved_vs_whole_volumes_at_95": (1 - sparse / best_whole) if sparse and best_whole else None,
        "minutes": (time.perf_counter() - began) / 60,
        "runs": curves,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    _plot(curves, full_dice, args.out.with_suffix(".png"))
    print(f"full-data test mean Dice {full_dice:.3f}")
    for method, entry in summary.items():
        print(f"{method:<32} 95%: {entry['slice_fraction_to_95']}  97%: {entry['slice_fraction_to_97']}")
    print(f"wrote {args.out}")


def _plot(curves: dict[str, list[list[dict[str, Any]]]], full_dice: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for method, runs in curves.items():
        key = "labeled_fraction" if method.startswith("volumes_") else "annotated_slice_fraction"
        x = np.mean([[r[key] for r in run] for run in runs], axis=0) * 100
        y = np.array([[r["test_mean_dice"] for r in run] for run in runs])
        (line,) = ax.plot(x, y.mean(axis=0), marker="o", label=method)
        ax.fill_between(
            x, y.mean(axis=0) - y.std(axis=0), y.mean(axis=0) + y.std(axis=0), alpha=0.15, color=line.get_color()
        )
    for level in LEVELS:
        ax.axhline(level * full_dice, color="gray", linestyle="--", linewidth=0.8)
    ax.axhline(full_dice, color="black", label=f"full data ({full_dice:.3f})")
    ax.set_xlabel("pool slices annotated (%)")
    ax.set_ylabel("test mean Dice")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
