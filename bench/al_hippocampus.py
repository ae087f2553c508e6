"""Label efficiency of every strategy on the MSD hippocampus MRI (200 real volumes).

Runs the oracle loop for each strategy and seed plus the full-data reference, then reports
per strategy: labels needed to reach 95% of full-data test Dice (mean over seeds), how that
compares with random, where the stop rule fired, and the auto-label audit.  Writes
``bench/results/al-hippocampus.json`` and the learning-curve plot ``al-hippocampus.png``.
Run with ``make bench-al`` (defaults) or with fewer seeds/strategies for a quicker look.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from activelabel.config import load_settings
from activelabel.simulation.commands import pair_cases
from activelabel.simulation.loop import FULL_DATA, SimulationConfig, load_cached, simulate

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "msd-hippocampus"
RESULTS = REPO / "bench" / "results"
LABELS = '{"anterior": 1, "posterior": 2}'
STRATEGIES = ["random", "entropy", "mutual_information", "variance", "diverse"]
TARGET = 0.95


def first_reaching(rounds: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    """The first round whose test mean Dice reaches ``threshold``."""
    return next((r for r in rounds if r["test_mean_dice"] >= threshold), None)


def summarize(runs: dict[str, list[dict[str, Any]]], full_dice: float, per_round: int) -> dict[str, Any]:
    """Per strategy: labels to reach 95% of full-data Dice, stop-rule timing and audit (means over seeds)."""
    threshold = TARGET * full_dice
    summary: dict[str, Any] = {}
    for strategy, results in runs.items():
        reached = [first_reaching(r["rounds"], threshold) for r in results]
        labels = [r["labeled"] if r else None for r in reached]
        fractions = [r["labeled_fraction"] if r else None for r in reached]
        stops = [r["summary"]["stop_round"] for r in results]
        target_rounds = [r["round"] if r else None for r in reached]
        summary[strategy] = {
            "seeds": len(results),
            "reached_target": sum(x is not None for x in labels),
            "labels_to_target": _mean(labels),
            "fraction_to_target": _mean(fractions),
            "final_test_mean_dice": _mean([r["summary"]["final_test_mean_dice"] for r in results]),
            "stop_rounds": stops,
            "target_rounds": target_rounds,
            "stop_minus_target_rounds": [
                s - t if s is not None and t is not None else None for s, t in zip(stops, target_rounds, strict=True)
            ],
            "automation": _mean([r["audit"]["automation"] for r in results]),
            "auto_label_accuracy": _mean([r["audit"]["auto_label_accuracy"] for r in results]),
            "labels_per_round": per_round,
        }
    random_labels = summary.get("random", {}).get("labels_to_target")
    for values in summary.values():
        own = values["labels_to_target"]
        values["labels_saved_vs_random"] = (1 - own / random_labels) if own and random_labels else None
    return summary


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def plot(runs: dict[str, list[dict[str, Any]]], full_dice: float, path: Path) -> None:
    """Mean ± sd test Dice per strategy against labeled fraction, with full-data and 95% lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for strategy, results in runs.items():
        x = np.array([r["labeled_fraction"] for r in results[0]["rounds"]])
        curves = np.array([[r["test_mean_dice"] for r in res["rounds"]] for res in results])
        mean, sd = curves.mean(axis=0), curves.std(axis=0)
        (line,) = ax.plot(x * 100, mean, marker="o", label=strategy)
        ax.fill_between(x * 100, mean - sd, mean + sd, alpha=0.15, color=line.get_color())
        stops = [r["summary"]["stop_round"] for r in results if r["summary"]["stop_round"] is not None]
        for stop in stops:
            ax.axvline(x[stop] * 100, color=line.get_color(), linestyle=":", alpha=0.5)
    ax.axhline(full_dice, color="black", label=f"full data ({full_dice:.3f})")
    ax.axhline(TARGET * full_dice, color="gray", linestyle="--", label=f"{TARGET:.0%} of full data")
    ax.set_xlabel("training volumes labeled (%)")
    ax.set_ylabel("test mean Dice (anterior, posterior)")
    ax.set_title("Active learning on MSD hippocampus (dotted: stop rule fired)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--initial", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--epochs-per-round", type=int, default=5)
    parser.add_argument("--steps-per-epoch", type=int, default=25)
    parser.add_argument("--mc-samples", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "al-hippocampus.json")
    args = parser.parse_args()

    images, truths = pair_cases(DATA / "imagesTr", DATA / "labelsTr")
    settings = load_settings({"labels": LABELS, "modality": "mr"}, studies=str(DATA), app_dir=str(DATA))
    cache = REPO / "bench" / ".cache" / "hippocampus-volumes.pt"
    volumes = load_cached(images, truths, preset=settings.preset, labels=settings.labels, cache=cache)
    base = {
        "initial": args.initial,
        "per_round": args.per_round,
        "rounds": args.rounds,
        "epochs_per_round": args.epochs_per_round,
        "steps_per_epoch": args.steps_per_epoch,
        "mc_samples": args.mc_samples,
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    full: list[dict[str, Any]] = []
    began = time.perf_counter()
    for seed in args.seeds:
        for strategy in [FULL_DATA, *args.strategies]:
            started = time.perf_counter()
            result = simulate(
                images,
                truths,
                labels=settings.labels,
                preset=settings.preset,
                spec=settings.network,
                config=SimulationConfig(strategy=strategy, seed=seed, **base),
                volumes=volumes,
            )
            result["seconds"] = time.perf_counter() - started
            (full if strategy == FULL_DATA else runs.setdefault(strategy, [])).append(result)
            print(
                f"{strategy} seed {seed}: final Dice {result['summary']['final_test_mean_dice']:.3f} "
                f"in {result['seconds'] / 60:.1f} min",
                flush=True,
            )
    full_dice = float(np.mean([r["summary"]["final_test_mean_dice"] for r in full]))
    summary = summarize(runs, full_dice, args.per_round)
    report = {
        "data": "MSD Task04 Hippocampus, 200 MRI volumes (imagesTr/labelsTr)",
        "settings": {**base, "seeds": args.seeds, "test_fraction": 0.2, "network": settings.network.to_dict()},
        "full_data_test_mean_dice": full_dice,
        "target_dice": TARGET * full_dice,
        "summary": summary,
        "minutes": (time.perf_counter() - began) / 60,
        "runs": runs,
        "full_data_runs": full,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, full_dice, args.out.with_suffix(".png"))
    print(f"full-data test mean Dice {full_dice:.3f}; target (95%) {TARGET * full_dice:.3f}")
    print(f"{'strategy':<20}{'labels->95%':>12}{'fraction':>10}{'vs random':>11}{'automation':>12}{'accuracy':>10}")
    for strategy, s in summary.items():
        print(
            f"{strategy:<20}{_fmt(s['labels_to_target'], '.1f'):>12}{_fmt(s['fraction_to_target'], '.1%'):>10}"
            f"{_fmt(s['labels_saved_vs_random'], '+.0%'):>11}{_fmt(s['automation'], '.1%'):>12}"
            f"{_fmt(s['auto_label_accuracy'], '.1%'):>10}"
        )
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
