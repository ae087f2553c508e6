"""Scoring throughput: one process vs a local Ray cluster with 2 workers vs 2 local processes.

Generates a pool of CT phantoms (fixed seed), publishes the seeded version-0 model and
scores the whole pool three times, each into its own empty score store:

* one process: :func:`activelabel.scoring.scorer.score_pool` in this process with torch using every
  core (what the server does with the default ``scoring_workers``);
* local processes: :func:`activelabel.scoring.distributed.score_distributed` on 2 processes;
* Ray: the same on a Ray head started on 127.0.0.1 with 2 CPUs (2 workers), stopped at the end.

Wall times include each backend's start-up (worker processes importing torch, connecting to
Ray), as a user waits for it.  Prints volumes per second and the ratio to one process, and
writes ``bench/results/ray_scoring.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from activelabel.config import Settings, load_settings
from activelabel.data.phantoms import generate_datastore
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import load_model
from activelabel.scoring.backends import LocalProcesses, RayCluster, available_cores
from activelabel.scoring.distributed import score_distributed
from activelabel.scoring.scorer import ScoringOptions, score_pool
from activelabel.store.scores import ScoreStore
from activelabel.testing.ray_local import start_local_cluster

RESULTS = Path(__file__).resolve().parent / "results"


def _images(studies: Path) -> dict[str, str]:
    return {path.name.removesuffix(".nii.gz"): str(path) for path in sorted(studies.glob("*.nii.gz"))}


def _one_process(
    images: dict[str, str], *, settings: Settings, models: ModelStore, store: ScoreStore, options: ScoringOptions
) -> dict:
    torch.set_num_threads(available_cores())
    start = time.perf_counter()
    network, info = load_model(models)
    report = score_pool(
        images, network=network, model_version=info.version, preset=settings.preset, store=store, options=options
    )
    seconds = time.perf_counter() - start
    return {
        "backend": "one process",
        "workers": 1,
        "threads": torch.get_num_threads(),
        "scored": report.scored,
        "seconds": seconds,
    }


def _distributed(backend: LocalProcesses | RayCluster) -> Callable[..., dict]:
    def run(
        images: dict[str, str], *, settings: Settings, models: ModelStore, store: ScoreStore, options: ScoringOptions
    ) -> dict:
        report = score_distributed(
            images, model_store=models, preset=settings.preset, store=store, options=options, backend=backend
        )
        if report.failed:
            raise RuntimeError(f"{len(report.failed)} volume(s) failed on {report.backend}")
        return {
            "backend": report.backend,
            "workers": report.workers,
            "threads": report.threads,
            "scored": report.scored,
            "seconds": report.seconds,
        }

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=12, help="CT phantoms in the pool (default: 12)")
    parser.add_argument("--mc-samples", type=int, default=2, help="MC-dropout passes per volume (default: 2)")
    parser.add_argument("--workers", type=int, default=2, help="Ray CPUs and local processes (default: 2)")
    parser.add_argument("--out", type=Path, default=RESULTS / "ray_scoring.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="activelabel-ray-bench-") as tmp:
        work = Path(tmp)
        studies = work / "studies"
        generate_datastore(studies, modality="ct", count=args.count, seed=0, labeled=0)
        settings = load_settings({"state_dir": str(work / "state")}, studies=str(studies), app_dir=str(work))
        models = ModelStore(settings.model_dir)
        models.ensure_initial(settings.network, settings.labels.to_dict(), seed=settings.seed)
        images = _images(studies)
        options = ScoringOptions(
            samples=args.mc_samples, dilation=settings.foreground_dilation, overlap=settings.sw_overlap
        )
        load_before = os.getloadavg()
        runs = []
        print(
            f"scoring {len(images)} CT phantoms, {args.mc_samples} MC passes each, on {available_cores()} cores",
            flush=True,
        )
        cluster = None
        try:
            plans: list[tuple[str, Callable[..., dict]]] = [
                ("one process", _one_process),
                ("local processes", _distributed(LocalProcesses(workers=args.workers))),
            ]
            for name, plan in plans:
                print(f"  {name} …", flush=True)
                store = ScoreStore(work / f"scores-{len(runs)}.sqlite")
                runs.append(plan(images, settings=settings, models=models, store=store, options=options))
            print("  starting a local Ray cluster …", flush=True)
            started = time.perf_counter()
            cluster = start_local_cluster(cpus=args.workers)
            cluster_start = time.perf_counter() - started
            print("  ray …", flush=True)
            store = ScoreStore(work / f"scores-{len(runs)}.sqlite")
            plan = _distributed(RayCluster(address=cluster.address, workers=args.workers))
            runs.append(
                {
                    **plan(images, settings=settings, models=models, store=store, options=options),
                    "cluster_start_seconds": cluster_start,
                }
            )
        finally:
            if cluster is not None:
                cluster.stop()
        load_after = os.getloadavg()

    baseline = runs[0]["scored"] / runs[0]["seconds"]
    for run in runs:
        run["volumes_per_second"] = run["scored"] / run["seconds"]
        run["ratio_to_one_process"] = run["volumes_per_second"] / baseline
        print(
            f"{run['backend']:>16}: {run['workers']} worker(s) x {run['threads']} thread(s), {run['scored']} volumes "
            f"in {run['seconds']:.1f}s = {run['volumes_per_second']:.3f} volumes/s "
            f"({run['ratio_to_one_process']:.2f}x one process)"
        )
    results = {
        "pool": {"modality": "ct", "count": args.count, "seed": 0, "mc_samples": args.mc_samples},
        "machine": {
            "platform": platform.platform(),
            "cores": available_cores(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
