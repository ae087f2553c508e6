"""Load test: 20 simulated clinicians for 10 minutes doing next sample → infer → submit.

Starts a real server on loopback over a pool of generated CT phantoms (copied under new ids,
so the pool outlasts the run), runs :func:`activelabel.testing.loadtest.run_load`, prints requests
served, p50/p99 latency of next sample, infer and submit, duplicate serves and lost or
corrupted labels, and writes ``bench/results/load.json``.  Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

from activelabel.data.phantoms import generate_datastore
from activelabel.testing.loadtest import LoadConfig, run_load
from activelabel.testing.server_process import start_server

RESULTS = Path(__file__).resolve().parent / "results"


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
    parser.add_argument("--pool", type=int, default=600, help="volumes in the datastore (enough for 10 minutes)")
    parser.add_argument("--strategy", default="random")
    parser.add_argument("--out", type=Path, default=RESULTS / "load.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="activelabel-load-") as tmp:
        work = Path(tmp)
        build_pool(work / "studies", size=args.pool)
        conf = {"state_dir": str(work / "state"), "retrain_after": "0"}
        server = start_server(work / "studies", log=work / "server.log", conf=conf)
        try:
            config = LoadConfig(
                clinicians=args.clinicians, seconds=args.seconds, think=tuple(args.think), strategy=args.strategy
            )
            print(f"{config.clinicians} clinicians for {config.seconds:.0f} s on {args.pool} volumes …", flush=True)
            report = run_load(server.url, work / "studies", config)
        finally:
            server.stop()

    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, **report.to_dict()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"requests served     {report.requests} in {report.seconds:.0f} s ({report.failed_requests} failed)")
    print(f"volumes submitted   {report.submitted} (served {report.served}; pool exhausted: {report.pool_exhausted})")
    for kind, figures in report.latency_ms.items():
        p50, p99 = figures["p50"], figures["p99"]
        print(f"{kind:<19} p50 {p50:8.0f} ms   p99 {p99:8.0f} ms   ({figures['count']} requests)")
    print(f"duplicate serves    {report.duplicate_serves} (must be 0)")
    print(f"lost labels         {report.lost_labels}, corrupted labels {report.corrupted_labels} (must be 0)")
    for error in report.errors:
        print(f"  {error}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
