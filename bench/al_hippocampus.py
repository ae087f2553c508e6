"""Label efficiency of the strategies on the MSD hippocampus MRI (200 real volumes).

Runs the oracle loop for each strategy and seed plus the full-data reference, then reports
per strategy: labels needed to reach 95% of full-data test Dice (mean over seeds), how that
compares with both random baselines (paired per seed, with a 95% confidence interval), where
the stop rule fired, the auto-label audit with and without triage, and the expert effort
saved.  Writes ``bench/results/al-hippocampus.json``, the learning-curve plot
``al-hippocampus.png`` and the automation-accuracy plot ``al-hippocampus-automation.png``.

Protocol: one test split (40 volumes, split seed 0) for every run; 5 random volumes first,
then 5 rounds of 5 picks; every round warm-starts from the last model and trains with the
server's recipe to convergence within its cap (``--epochs-per-round`` x ``--steps-per-epoch``
steps, stopping after ``--patience`` epochs without a better validation Dice).  The full-data
reference trains the server's trainer unchanged (its own cap and patience) on all 160 pool
volumes.  Runs go ``--jobs`` at a time, one process and ``--threads`` torch threads each.

Each run is kept under ``bench/.cache/al-runs/`` keyed by its settings, so an interrupted
benchmark resumes where it stopped.  Stop rounds are replayed from the recorded signals with
the current stop rule.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from activelabel.commands.simulate import pair_cases
from activelabel.config import Settings, load_settings
from activelabel.server.stop_rule import RoundSignals, StopRule, replay
from activelabel.simulation.loop import FULL_DATA, SimulationConfig, load_cached, simulate
from activelabel.simulation.sparse import simulate_slices
from activelabel.testing.datasets import MSD_HIPPOCAMPUS

REPO = Path(__file__).resolve().parents[1]
DATA = MSD_HIPPOCAMPUS
RESULTS = REPO / "bench" / "results"
RUNS = REPO / "bench" / ".cache" / "al-runs"
LABELS = '{"anterior": 1, "posterior": 2}'
STRATEGIES = ["random", "foreground_random", "entropy", "mutual_information", "variance", "diverse"]
DEFAULT_STRATEGIES = ["random", "foreground_random", "mutual_information", "diverse"]
"""Run by default: both random baselines, most-uncertain by the server's aggregation (mutual information;
entropy and variance tied with it in the first benchmark) and the batch strategy (``--strategies`` for all)."""
TARGET = 0.95


def first_reaching(rounds: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    """The first round whose test mean Dice reaches ``threshold``."""
    return next((r for r in rounds if r["test_mean_dice"] >= threshold), None)


def stop_round(rounds: list[dict[str, Any]], per_round: int) -> int | None:
    """The round where the current stop rule fires on a run's recorded signals."""
    history = [
        RoundSignals(r["labeled"], r["picked_agreement"], r["val_mean_dice"], r["pool_uncertainty"]) for r in rounds
    ]
    return replay(StopRule(), history, per_round=per_round)


def summarize(runs: dict[str, list[dict[str, Any]]], full_dice: float, per_round: int) -> dict[str, Any]:
    """Per strategy: labels to reach 95% of full-data Dice, stop-rule timing and audit (means over seeds)."""
    threshold = TARGET * full_dice
    summary: dict[str, Any] = {}
    for strategy, results in runs.items():
        reached = [first_reaching(r["rounds"], threshold) for r in results]
        labels = [r["labeled"] if r else None for r in reached]
        fractions = [r["labeled_fraction"] if r else None for r in reached]
        stops = [stop_round(r["rounds"], per_round) for r in results]
        target_rounds = [r["round"] if r else None for r in reached]
        summary[strategy] = {
            "seeds": len(results),
            "reached_target": sum(x is not None for x in labels),
            "labels_to_target": _mean(labels),
            "labels_to_target_per_seed": labels,
            "labels_to_target_sd": _sd(labels),
            "fraction_to_target": _mean(fractions),
            "final_test_mean_dice": _mean([r["summary"]["final_test_mean_dice"] for r in results]),
            "stop_rounds": stops,
            "stop_labels": [
                r["rounds"][s]["labeled"] if s is not None else None for r, s in zip(results, stops, strict=True)
            ],
            "target_rounds": target_rounds,
            "stop_minus_target_rounds": [
                s - t if s is not None and t is not None else None for s, t in zip(stops, target_rounds, strict=True)
            ],
            "audit_rounds": [r["audit"]["round"] for r in results],
            "automation": _mean([r["audit"]["automation"] for r in results]),
            "auto_label_accuracy": _mean([r["audit"]["auto_label_accuracy"] for r in results]),
            "automation_after_triage": _mean([r["audit"]["triage"]["automation"] for r in results]),
            "accuracy_after_triage": _mean([r["audit"]["triage"]["accuracy"] for r in results]),
            "automation_at_95": _mean([r["audit"]["automation_at_95"] for r in results]),
            "automation_at_90": _mean([r["audit"]["automation_at_90"] for r in results]),
            "quality_rank_correlation": _mean([r["audit"]["quality_rank_correlation"] for r in results]),
            "effort_saved": _mean([r["audit"]["effort"]["effort_saved"] for r in results]),
            "audit_mean_dice": _mean([r["audit"]["audit_mean_dice"] for r in results]),
            "labels_per_round": per_round,
        }
    for baseline in ("random", "foreground_random"):
        base = summary.get(baseline, {})
        base_labels = base.get("labels_to_target")
        for values in summary.values():
            own = values["labels_to_target"]
            values[f"labels_saved_vs_{baseline}"] = (1 - own / base_labels) if own and base_labels else None
            values[f"paired_labels_minus_{baseline}"] = paired_difference(
                values["labels_to_target_per_seed"], base.get("labels_to_target_per_seed", [])
            )
    return summary


def default_strategy(summary: dict[str, Any]) -> str:
    """The strategy needing the fewest labels to reach the target (the baselines included).

    A strategy that reached the target in fewer seeds ranks after one that reached it in
    more; a tie goes to the simpler baseline order of ``STRATEGIES``.
    """

    def key(name: str) -> tuple[int, float, int]:
        values = summary[name]
        labels = values["labels_to_target"]
        return (-values["reached_target"], labels if labels is not None else float("inf"), STRATEGIES.index(name))

    return min(summary, key=key)


def paired_difference(own: list[float | None], base: list[float | None]) -> dict[str, Any] | None:
    """Mean per-seed difference ``own - base`` with a two-sided 95% t confidence interval.

    Seeds where either run missed the target are left out (``n`` counts the pairs used).
    """
    pairs = [(a, b) for a, b in zip(own, base, strict=False) if a is not None and b is not None]
    if not pairs:
        return None
    differences = np.array([a - b for a, b in pairs], dtype=np.float64)
    mean = float(differences.mean())
    if len(pairs) < 2:
        return {"n": 1, "mean": mean, "ci95": None}
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(pairs) - 1) * differences.std(ddof=1) / np.sqrt(len(pairs)))
    return {"n": len(pairs), "mean": mean, "ci95": [mean - half, mean + half]}


def _sd(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.std(present, ddof=1)) if len(present) > 1 else None


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
        stops = [stop_round(r["rounds"], r["config"]["per_round"]) for r in results]
        for stop in (s for s in stops if s is not None):
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


def plot_automation(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Audited accuracy against automation when the best-trusted auto-labels are accepted (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for strategy, results in runs.items():
        curve = results[0]["audit"].get("automation_accuracy_curve") or []
        if curve:
            ax.plot([p["automation"] * 100 for p in curve], [p["accuracy"] * 100 for p in curve], label=strategy)
    for level in (95, 90):
        ax.axhline(level, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("automation: auto-labels accepted, best-trusted first (% of pool)")
    ax.set_ylabel("audited accuracy: accepted with Dice >= 0.8 (%)")
    ax.set_title("Auto-label triage by MC-sample agreement (seed of the first run)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def hippocampus_volumes(
    conf: Mapping[str, str] | None = None,
) -> tuple[dict[str, Path], dict[str, Path], Settings, dict[str, dict[str, Any]]]:
    """The MSD hippocampus cases and what every benchmark on them shares.

    Args:
        conf: extra settings (``--conf`` keys) on top of the MR preset and the labels.

    Returns:
        Case id -> image path, case id -> label path, the benchmark's settings (MR preset,
        anterior/posterior labels) and every case pre-processed on the preset grid (cached in
        ``bench/.cache/hippocampus-volumes-<preset>.pt``).
    """
    images, truths = pair_cases(DATA / "imagesTr", DATA / "labelsTr")
    conf = {"labels": LABELS, "modality": "mr", **(conf or {})}
    # The images folder, so that spacing and roi_size are planned from its fingerprint.
    settings = load_settings(conf, studies=str(DATA / "imagesTr"), app_dir=str(DATA))
    preset_key = hashlib.sha256(repr(settings.preset).encode()).hexdigest()[:8]
    cache = REPO / "bench" / ".cache" / f"hippocampus-volumes-{preset_key}.pt"
    volumes = load_cached(images, truths, preset=settings.preset, labels=settings.labels, cache=cache)
    return images, truths, settings, volumes


def run_path(*, settings: Settings, config: SimulationConfig) -> Path:
    """The cache file of one run: its strategy, seed and a hash of everything that shapes it."""
    options = {k: getattr(v, "value", v) for k, v in asdict(settings.train_options(seed=config.seed)).items()}
    fields = asdict(config)
    if config.unit == "volumes":  # whole-volume runs keep the keys they had before slices existed
        fields.pop("unit")
        fields.pop("slices_per_volume")
    key = json.dumps({"config": fields, "network": settings.network.to_dict(), "train": options}, sort_keys=True)
    unit = "" if config.unit == "volumes" else "slices-"
    return RUNS / f"{unit}{config.strategy}-seed{config.seed}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def run_cached(
    images: Mapping[str, Path],
    truths: Mapping[str, Path],
    *,
    settings: Settings,
    config: SimulationConfig,
    volumes: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """One simulation, read from the run cache when the same settings already ran."""
    path = run_path(settings=settings, config=config)
    if path.is_file():
        return json.loads(path.read_text())
    started = time.perf_counter()
    run = simulate_slices if config.unit == "slices" else simulate
    result = run(
        images,
        truths,
        labels=settings.labels,
        preset=settings.preset,
        spec=settings.network,
        config=config,
        volumes=volumes,
        train_options=settings.train_options(seed=config.seed),
        device=settings.device,
    )
    result["seconds"] = time.perf_counter() - started
    RUNS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    return result


def _run_in_worker(config: SimulationConfig, conf: dict[str, str], threads: int) -> dict[str, Any]:
    """One run in a worker process: its own torch threads, the volumes read from the shared cache."""
    import torch

    torch.set_num_threads(threads)
    images, truths, settings, volumes = hippocampus_volumes(conf)
    return run_cached(images, truths, settings=settings, config=config, volumes=volumes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--initial", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs-per-round", type=int, default=8, help="the round's step cap, in epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=25, help="optimizer steps between validations")
    parser.add_argument("--mc-samples", type=int, default=2)
    parser.add_argument("--patience", type=int, default=3, help="epochs without a better validation Dice per round")
    parser.add_argument("--cold-start", default="random", choices=["random", "diverse"], help="initial picks")
    parser.add_argument(
        "--full-data-seeds", type=int, nargs="+", default=[0], help="training seeds of the full-data reference"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the settings' device)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one process each (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (default: 1)")
    parser.add_argument(
        "--conf",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        help="app setting on top of the defaults (the training recipe of every run and of the reference)",
    )
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="report the runs already in the cache and train nothing (seeds still missing are left out)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "al-hippocampus.json")
    args = parser.parse_args()

    conf = {**dict(args.conf or []), **({"device": args.device} if args.device else {})}
    _, _, settings, _ = hippocampus_volumes(conf)  # fills the cache of pre-processed volumes
    base = {
        "initial": args.initial,
        "per_round": args.per_round,
        "rounds": args.rounds,
        "epochs_per_round": args.epochs_per_round,
        "steps_per_epoch": args.steps_per_epoch,
        "mc_samples": args.mc_samples,
        "patience": args.patience,
        "cold_start": args.cold_start,
    }
    # The longest runs first, so that the two workers finish together.
    configs = [SimulationConfig(strategy=FULL_DATA, seed=seed, **base) for seed in args.full_data_seeds]
    configs += [SimulationConfig(strategy=s, seed=seed, **base) for seed in args.seeds for s in args.strategies]
    if args.cached_only:
        configs = [c for c in configs if run_path(settings=settings, config=c).is_file()]
        if not any(c.strategy == FULL_DATA for c in configs):
            raise SystemExit("no cached full-data reference: run without --cached-only first")
    began = time.perf_counter()
    results: dict[int, dict[str, Any]] = {}
    bar = tqdm(total=len(configs), desc="al-hippocampus runs", unit="run")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_in_worker, c, conf, args.threads): i for i, c in enumerate(configs)}
        for future in as_completed(futures):
            index = futures[future]
            results[index] = result = future.result()
            bar.update(1)
            bar.write(
                f"{configs[index].strategy} seed {configs[index].seed}: final Dice "
                f"{result['summary']['final_test_mean_dice']:.3f} in {result['seconds'] / 60:.1f} min"
            )
    bar.close()
    runs: dict[str, list[dict[str, Any]]] = {}
    full: list[dict[str, Any]] = []
    for index, config in enumerate(configs):
        (full if config.strategy == FULL_DATA else runs.setdefault(config.strategy, [])).append(results[index])
    full_dice = float(np.mean([r["summary"]["final_test_mean_dice"] for r in full]))
    summary = summarize(runs, full_dice, args.per_round)
    default = default_strategy(summary)
    report = {
        "data": "MSD Task04 Hippocampus, 200 MRI volumes (imagesTr/labelsTr)",
        "settings": {
            **base,
            "seeds": args.seeds,
            "full_data_seeds": args.full_data_seeds,
            "test_fraction": 0.2,
            "split_seed": 0,
            "network": settings.network.to_dict(),
            "preset": repr(settings.preset),
            "train_options": {k: getattr(v, "value", v) for k, v in asdict(settings.train_options(seed=0)).items()},
            "conf": conf,
            "jobs": args.jobs,
            "threads_per_job": args.threads,
            "device": settings.device,
        },
        "complete": not args.cached_only
        or len(configs) == len(args.full_data_seeds) + len(args.seeds) * len(args.strategies),
        "full_data_test_mean_dice": full_dice,
        "target_dice": TARGET * full_dice,
        "summary": summary,
        "default_strategy": default,
        "labels_saved_vs_foreground_random": summary.get(default, {}).get("labels_saved_vs_foreground_random"),
        "effort_saved": summary.get(default, {}).get("effort_saved"),
        "minutes": (time.perf_counter() - began) / 60,
        "run_minutes": sum(r["seconds"] for r in results.values()) / 60,
        "runs": runs,
        "full_data_runs": full,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, full_dice, args.out.with_suffix(".png"))
    plot_automation(runs, args.out.with_name(args.out.stem + "-automation.png"))
    print(f"full-data test mean Dice {full_dice:.3f}; target (95%) {TARGET * full_dice:.3f}; default {default}")
    header = f"{'strategy':<20}{'labels->95%':>12}{'fraction':>10}{'vs random':>11}{'vs fg-random':>13}"
    print(header + f"{'automation':>12}{'accuracy':>10}{'triaged auto':>14}{'triaged acc':>13}{'effort saved':>14}")
    for strategy, v in summary.items():
        print(
            f"{strategy:<20}{_fmt(v['labels_to_target'], '.1f'):>12}{_fmt(v['fraction_to_target'], '.1%'):>10}"
            f"{_fmt(v['labels_saved_vs_random'], '+.0%'):>11}{_fmt(v['labels_saved_vs_foreground_random'], '+.0%'):>13}"
            f"{_fmt(v['automation'], '.1%'):>12}{_fmt(v['auto_label_accuracy'], '.1%'):>10}"
            f"{_fmt(v['automation_after_triage'], '.1%'):>14}{_fmt(v['accuracy_after_triage'], '.1%'):>13}"
            f"{_fmt(v['effort_saved'], '.1%'):>14}"
        )
    print(f"{(time.perf_counter() - began) / 60:.1f} min; wrote {args.out} and {args.out.with_suffix('.png')}")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
