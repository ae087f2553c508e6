"""Cheaper epistemic uncertainty: cost and pool ranking against full MC dropout with 16 samples.

Trains a model the way an active-learning round would have it (a few dozen labeled MSD
hippocampus volumes, a few epochs; the checkpoint is cached under ``bench/.cache/`` keyed by its
settings), then scores a pool of other volumes with

* one deterministic pass: its cost per volume is the unit,
* the reference: MC dropout in every dropout layer, 16 samples (run as 4 batches of 4, which
  draws the same distribution as 16 sequential passes at a fraction of the CPU time),
* the noise ceiling: the reference again with other random draws,
* full MC dropout with 2 sequential passes (the scorer's ``full`` mode),
* the batched and decoder-only samplers of :mod:`activelabel.ml.decoder_dropout`: sampling starts
  at the first dropout layer (``batched``), the bottleneck, the up path or the output block,
  ``K`` samples from one sliding-window pass.

Every candidate runs side by side with the deterministic pass on each volume (in rotating
order).  Cost is process CPU time (one torch thread by default), which other jobs on a shared
machine disturb far less than wall-clock time; both are reported.  For each candidate: seconds
per volume, cost relative to the deterministic pass, and the Spearman rank correlation of the
pool ranking against the reference for mutual information, entropy and variance.  Prints a
table and writes ``bench/results/cheap_uncertainty.json``; per-volume records are kept in
``bench/.cache/`` so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from al_hippocampus import RESULTS, hippocampus_volumes
from scipy.stats import spearmanr
from torch import nn

from activelabel.config import Settings
from activelabel.ml.decoder_dropout import McMode, decoder_dropout_probabilities
from activelabel.ml.inference import mc_dropout_uncertainty, predict_probabilities, sliding_window
from activelabel.ml.metrics import dice_per_label, mean_dice
from activelabel.ml.networks import build_network, initial_state
from activelabel.ml.training import TrainOptions, split_train_val, train_network
from activelabel.ml.uncertainty import SampleAccumulator, UncertaintyMetric, VolumeUncertainty

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "bench" / ".cache"
METRICS = [metric.value for metric in UncertaintyMetric]
DETERMINISTIC = "deterministic (1 pass)"
TARGET_COST = 2.0
TARGET_SPEARMAN = 0.9


@dataclass(frozen=True)
class Candidate:
    """One way of drawing MC-dropout samples of a volume.

    Attributes:
        name: row name in the table.
        mode: which dropout layers sample (``FULL``: one sequential network pass per sample).
        samples: samples per sliding-window pass (``K``; passes for ``FULL``).
        chunks: sliding-window passes of ``samples`` each folded into one score.
    """

    name: str
    mode: McMode
    samples: int
    chunks: int = 1


REFERENCE = Candidate("full-16 (reference, 4x4 batched)", McMode.BATCHED, 4, chunks=4)
CEILING = Candidate("full-16 other draws (noise ceiling)", McMode.BATCHED, 4, chunks=4)
CANDIDATES = [
    Candidate("full-2 (sequential)", McMode.FULL, 2),
    Candidate("batched-4", McMode.BATCHED, 4),
    Candidate("batched-8", McMode.BATCHED, 8),
    Candidate("bottleneck-4", McMode.BOTTLENECK, 4),
    Candidate("decoder-4", McMode.DECODER, 4),
    Candidate("decoder-8", McMode.DECODER, 8),
    Candidate("head-4", McMode.HEAD, 4),
    Candidate("head-8", McMode.HEAD, 8),
]


def train_cached(
    settings: Settings, volumes: dict[str, dict[str, Any]], train_cases: Sequence[str], *, epochs: int, steps: int
) -> tuple[nn.Module, dict[str, Any]]:
    """A network trained on ``train_cases``; read from ``bench/.cache/`` when these settings already ran."""
    key = {
        "cases": sorted(train_cases),
        "epochs": epochs,
        "steps": steps,
        "network": settings.network.to_dict(),
        "preset": repr(settings.preset),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = CACHE / f"cheap-uncertainty-model-{digest}.pt"
    network = build_network(settings.network)
    if path.is_file():
        stored = torch.load(path, weights_only=False)
        network.load_state_dict(stored["state"])
        return network.eval(), stored["summary"]
    network.load_state_dict(initial_state(settings.network, seed=0))
    train_ids, val_ids = split_train_val(train_cases, val_split=0.2, seed=0)
    result = train_network(
        network,
        [volumes[c] for c in train_ids],
        [volumes[c] for c in val_ids],
        preset=settings.preset,
        labels=settings.labels,
        options=TrainOptions(max_epochs=epochs, steps_per_epoch=steps, seed=0),
    )
    summary = {"train": len(train_ids), "val": len(val_ids), "val_mean_dice": result.val_mean_dice}
    summary["training_seconds"] = result.seconds
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "state": result.state_dict, "summary": summary}, path)
    return network.eval(), summary


def _scores(uncertainty: VolumeUncertainty) -> dict[str, float]:
    return {metric: uncertainty.score(metric) for metric in METRICS}


class _Clock:
    """CPU and wall-clock seconds of a block."""

    def __enter__(self) -> _Clock:
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self._cpu
        self.wall = time.perf_counter() - self._wall

    def record(self, scores: dict[str, float], **extra: Any) -> dict[str, Any]:
        return {"cpu_seconds": self.cpu, "wall_seconds": self.wall, "scores": scores, **extra}


class VolumeBench:
    """Runs the deterministic pass and every candidate on one volume."""

    def __init__(self, network: nn.Module, settings: Settings, *, dilation: int) -> None:
        self.network = network
        self.inferer = sliding_window(settings.preset.roi_size)
        self.dilation = dilation
        self.channels = {name: index for index, name in settings.labels.channel_names().items()}

    def deterministic(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, Any]:
        """One deterministic pass (the cost unit); its entropy is a no-sampling baseline."""
        with _Clock() as clock:
            probs = predict_probabilities(self.network, image, self.inferer)
        accumulator = SampleAccumulator()
        accumulator.add(probs)
        entropy = accumulator.result(dilation=self.dilation).entropy
        dice = mean_dice(dice_per_label(probs.argmax(dim=0).numpy(), np.asarray(label[0]), self.channels).values())
        return clock.record({"entropy": entropy}, dice=dice)

    def candidate(self, image: torch.Tensor, index: int, candidate: Candidate) -> dict[str, Any]:
        """One candidate through the scorer's own code path (several chunks folded into one score)."""
        torch.manual_seed(zlib.crc32(candidate.name.encode()) + index)
        with _Clock() as clock:
            if candidate.chunks == 1:
                uncertainty, _ = mc_dropout_uncertainty(
                    self.network,
                    image,
                    self.inferer,
                    samples=candidate.samples,
                    dilation=self.dilation,
                    mode=candidate.mode,
                )
            else:
                uncertainty = self._chunked(image, candidate)
        return clock.record(_scores(uncertainty))

    def _chunked(self, image: torch.Tensor, candidate: Candidate) -> VolumeUncertainty:
        batch = torch.as_tensor(image, dtype=torch.float32)[None]
        accumulator = SampleAccumulator()
        for _ in range(candidate.chunks):
            for probs in decoder_dropout_probabilities(
                self.network, batch, self.inferer, samples=candidate.samples, mode=candidate.mode
            ):
                accumulator.add(probs)
        return accumulator.result(dilation=self.dilation)


def bench_volume(bench: VolumeBench, volume: dict[str, Any], index: int) -> dict[str, dict[str, Any]]:
    """The deterministic pass and every candidate on one volume, in an order rotated by ``index``."""
    image, label = volume["image"], volume["label"]
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = [(DETERMINISTIC, lambda: bench.deterministic(image, label))]
    for candidate in [REFERENCE, CEILING, *CANDIDATES]:
        runs.append((candidate.name, lambda c=candidate: bench.candidate(image, index, c)))
    shift = index % len(runs)
    with torch.no_grad():
        return {name: run() for name, run in runs[shift:] + runs[:shift]}


def summarize(records: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per candidate: seconds per volume, cost vs the deterministic pass, Spearman vs the reference."""
    cases = sorted(records)
    first = records[cases[0]]
    units = {clock: sum(records[c][DETERMINISTIC][clock] for c in cases) for clock in ("cpu_seconds", "wall_seconds")}
    summary: dict[str, dict[str, Any]] = {}
    for name in [DETERMINISTIC, REFERENCE.name, CEILING.name, *(c.name for c in CANDIDATES)]:
        row: dict[str, Any] = {}
        for clock, unit in units.items():
            seconds = [records[c][name][clock] for c in cases]
            row[f"{clock}_per_volume"] = float(np.mean(seconds))
            row[f"{clock.split('_')[0]}_cost_vs_deterministic"] = float(sum(seconds) / unit)
        for metric in METRICS:
            if name == REFERENCE.name or metric not in first[name]["scores"]:
                continue
            ours = [records[c][name]["scores"][metric] for c in cases]
            reference = [records[c][REFERENCE.name]["scores"][metric] for c in cases]
            row[f"spearman_{metric}"] = float(spearmanr(ours, reference).statistic)
        rho = row.get(f"spearman_{UncertaintyMetric.MUTUAL_INFORMATION.value}", 0.0)
        row["meets_target"] = row["cpu_cost_vs_deterministic"] <= TARGET_COST and rho >= TARGET_SPEARMAN
        summary[name] = row
    return summary


def _records_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return CACHE / f"cheap-uncertainty-records-{digest}.jsonl"


def _load_records(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    if not path.is_file():
        return {}
    lines = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {line["case"]: line["records"] for line in lines}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    header = (
        f"{'candidate':<38}{'cpu s':>7}{'cost x':>8}{'wall s':>8}{'wall x':>8}"
        f"{'rho MI':>8}{'rho H':>8}{'rho var':>8}  target"
    )
    print(header)
    print("-" * len(header))
    for name, row in summary.items():
        print(
            f"{name:<38}{row['cpu_seconds_per_volume']:>7.3f}{row['cpu_cost_vs_deterministic']:>8.2f}"
            f"{row['wall_seconds_per_volume']:>8.3f}{row['wall_cost_vs_deterministic']:>8.2f}"
            f"{_fmt(row.get('spearman_mutual_information'), '.3f'):>8}{_fmt(row.get('spearman_entropy'), '.3f'):>8}"
            f"{_fmt(row.get('spearman_variance'), '.3f'):>8}  {'yes' if row['meets_target'] else ''}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=25, help="labeled training volumes (a fifth for validation)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=25)
    parser.add_argument("--pool", type=int, default=100, help="unlabeled volumes ranked")
    parser.add_argument("--dilation", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU time is the cost)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cheap_uncertainty.json")
    args = parser.parse_args()
    began = time.perf_counter()
    _, _, settings, volumes = hippocampus_volumes()
    cases = sorted(volumes)
    random.Random(0).shuffle(cases)
    if args.train + args.pool > len(cases):
        raise SystemExit(f"--train + --pool exceed the {len(cases)} volumes")
    train_cases, pool = cases[: args.train], cases[args.train : args.train + args.pool]
    network, training = train_cached(settings, volumes, train_cases, epochs=args.epochs, steps=args.steps_per_epoch)
    print(f"model: {training}", flush=True)
    torch.set_num_threads(args.threads)

    key = {"train": sorted(train_cases), "epochs": args.epochs, "steps": args.steps_per_epoch, "pool": pool}
    key["candidates"] = [c.name for c in (REFERENCE, CEILING, *CANDIDATES)]
    path = _records_path({**key, "dilation": args.dilation})
    records = _load_records(path)
    bench = VolumeBench(network, settings, dilation=args.dilation)
    CACHE.mkdir(parents=True, exist_ok=True)
    for index, case in enumerate(pool):
        if case in records:
            continue
        volume_began = time.perf_counter()
        records[case] = bench_volume(bench, volumes[case], index)
        with path.open("a") as stream:
            stream.write(json.dumps({"case": case, "records": records[case]}) + "\n")
        print(f"{index + 1}/{len(pool)} {case} in {time.perf_counter() - volume_began:.1f}s", flush=True)

    summary = summarize({case: records[case] for case in pool})
    pool_dice = float(np.mean([records[c][DETERMINISTIC]["dice"] for c in pool]))
    sequential = 8 * summary[CANDIDATES[0].name]["cpu_cost_vs_deterministic"]
    report = {
        "data": "MSD Task04 Hippocampus MRI (imagesTr/labelsTr), MR preset, roi 48^3",
        "settings": {**{k: v for k, v in key.items() if k != "pool"}, "pool_size": len(pool)},
        "model": {**training, "pool_mean_dice": pool_dice, "network": settings.network.to_dict()},
        "reference": REFERENCE.name,
        "target": {"cost_vs_deterministic": TARGET_COST, "spearman_mutual_information": TARGET_SPEARMAN},
        "summary": summary,
        "full_16_sequential_cpu_cost_estimate": sequential,
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "minutes": (time.perf_counter() - began) / 60,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"pool of {len(pool)} volumes, model mean Dice on the pool {pool_dice:.3f}")
    print_table(summary)
    print(f"full MC dropout with 16 sequential passes (8 x full-2): about {sequential:.1f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
