"""API fuzzing for minutes: schemathesis against a real server, round after round, counting the 5xx answers.

The long version of tests/test_fuzz.py: one server on three CT phantoms (one labeled), every
operation of its ``/openapi.json`` but the training, scoring and batch-infer starts, valid and
invalid requests in seeded rounds (each round a new seed) until ``--seconds`` have passed, every
answer checked with schemathesis' ``not_a_server_error``.  Prints the operations, cases and 5xx
found, and writes ``bench/results/fuzz.json``; exits 1 when any request got a 5xx.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from activelabel.data.phantoms import generate_datastore
from activelabel.testing.fuzz import fuzz
from activelabel.testing.server_process import start_server

RESULTS = Path(__file__).resolve().parent / "results"
FAST_CONF = {"architecture": "unet", "max_epochs": "1", "mc_samples": "2", "samples_per_volume": "1"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="fuzzing time (default 300)")
    parser.add_argument("--examples", type=int, default=25, help="cases per operation, mode and round (default 25)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="activelabel-fuzz-") as tmp:
        root = Path(tmp)
        studies = root / "studies"
        generate_datastore(studies, modality="ct", count=3, seed=0, labeled=1)
        conf = {**FAST_CONF, "state_dir": str(root / "state")}
        with start_server(studies, log=root / "server.log", conf=conf) as server:
            report = fuzz(server.url, examples=args.examples, seconds=args.seconds, rounds=None)

    print(report.summary())
    width = max(len(label) for label in report.operations)
    for label in report.operations:
        errors = sum(error.operation == label for error in report.server_errors)
        print(f"  {label:<{width}}  {report.cases_by_operation.get(label, 0):>6} cases  {errors:>4} 5xx")
    for error in report.server_errors:
        print(f"5xx: {error}")
    result = {**report.as_json(), "examples_per_round": args.examples, "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if report.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
