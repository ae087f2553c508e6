"""Load test: 20 simulated clinicians for 10 minutes doing next sample → infer → submit, training mid-run.

Starts a real server on loopback over a pool of generated CT phantoms (copied under new ids,
so the pool outlasts the run), scores the pool first (ranking and pre-segmentations by the
initial model, timed apart), then runs :func:`activelabel.testing.loadtest.run_load` with a
training run requested half-way.  Prints requests served and per second, p50/p99 latency of
next sample, infer (cache hits and misses apart) and submit, 503 answers, duplicate serves
and lost or corrupted labels, and writes ``bench/results/load.json``.  Run with ``make bench``.

Clinicians pause ``--think`` seconds before asking for the pre-segmentation and ``--edit``
seconds correcting it before submitting (default 60-120 s: still faster than a
clinician corrects a 3D mask).  ``--edit 1 5`` is the earlier, harsher profile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from activelabel.data.phantoms import generate_datastore
from activelabel.testing.loadtest import LoadConfig, run_load, score_pool_first
from activelabel.testing.server_process import start_server

RESULTS = Path(__file__).resolve().parent / "results"

TARGETS_MS = {"next_sample": 200.0, "submit": 500.0, "infer": 2000.0, "infer_hit": 300.0}
"""p99 targets of the load issue, in milliseconds."""

TRAINING_CONF = {"max_epochs": "3", "steps_per_epoch": "25", "patience": "0"}
"""A short training run (75 steps): enough to publish a new model during the ten minutes."""


def build_pool(studies: Path, *, size: int, distinct: int = 40) -> None:
    """``size`` unlabeled CT volumes: ``distinct`` generated phantoms, each copied under new ids."""
    source = studies.parent / "phantoms"
    generate_datastore(source, modality="ct", count=min(size, distinct), seed=0, labeled=0)
    originals = sorted(source.glob("*.nii.gz"))
    studies.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "labels.json", studies / "labels.json")
    for index in range(size):
        original = originals[index % len(originals)]
        shutil.copyfile(original, studies / f"case_{index:05d}.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinicians", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--think", type=float, nargs=2, default=(1.0, 5.0), metavar=("MIN", "MAX"))
    parser.add_argument("--edit", type=float, nargs=2, default=(60.0, 120.0), metavar=("MIN", "MAX"))
    parser.add_argument("--pool", type=int, default=200, help="volumes in the datastore (enough for the run)")
    parser.add_argument("--strategy", default="most_uncertain")
    parser.add_argument("--train-at", type=float, default=None, help="seconds into the run (default: half-way)")
    parser.add_argument("--no-prescore", action="store_true", help="start without scoring the pool first")
    parser.add_argument("--device", default=None, help="cpu or cuda for the server (default: its settings)")
    parser.add_argument("--out", type=Path, default=RESULTS / "load.json")
    args = parser.parse_args()
    train_at = args.seconds / 2 if args.train_at is None else args.train_at

    with tempfile.TemporaryDirectory(prefix="activelabel-load-") as tmp:
        work = Path(tmp)
        build_pool(work / "studies", size=args.pool)
        conf = {"state_dir": str(work / "state"), "retrain_after": "0", **TRAINING_CONF}
        if args.device:
            conf["device"] = args.device
        server = start_server(work / "studies", log=work / "server.log", conf=conf)
        try:
            prescore = None
            if not args.no_prescore:
                print(f"scoring the {args.pool} volumes first …", flush=True)
                prescore = score_pool_first(server.url)
                print(f"scored in {prescore:.0f} s", flush=True)
            config = LoadConfig(
                clinicians=args.clinicians,
                seconds=args.seconds,
                think=tuple(args.think),
                edit=tuple(args.edit),
                strategy=args.strategy,
                train_at=train_at,
            )
            print(
                f"{config.clinicians} clinicians for {config.seconds:.0f} s on {args.pool} volumes, "
                f"training requested at {train_at:.0f} s …",
                flush=True,
            )
            began = time.monotonic()
            report = run_load(server.url, work / "studies", config)
            print(f"ran {time.monotonic() - began:.0f} s", flush=True)
        finally:
            server.stop()

    p99 = {kind: report.latency_ms.get(kind, {}).get("p99") for kind in TARGETS_MS}
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **report.to_dict(),
        "pool": args.pool,
        "prescore_seconds": prescore,
        "server_conf": conf,
        "targets_p99_ms": TARGETS_MS,
        "met": {kind: value is not None and value <= TARGETS_MS[kind] for kind, value in p99.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"requests served     {report.requests} in {report.seconds:.0f} s ({report.requests_per_second:.1f}/s)")
    print(
        f"failed requests     {report.failed_requests}; 503 busy answers (retried) {report.busy_responses}; "
        f"requests resent on a new connection {report.reconnects}"
    )
    print(f"volumes submitted   {report.submitted} (served {report.served}; pool exhausted: {report.pool_exhausted})")
    for kind, figures in report.latency_ms.items():
        p50, p99_ms = figures["p50"], figures["p99"]
        target = f"   target p99 <= {TARGETS_MS[kind]:.0f} ms" if kind in TARGETS_MS else ""
        print(f"{kind:<19} p50 {p50:8.0f} ms   p99 {p99_ms:8.0f} ms   ({figures['count']} requests){target}")
    print(f"training            {report.training}; model versions served {report.model_versions_served}")
    print(f"duplicate serves    {report.duplicate_serves} (must be 0)")
    print(f"lost labels         {report.lost_labels}, corrupted labels {report.corrupted_labels} (must be 0)")
    for error in report.errors:
        print(f"  {error}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
