"""Next-sample and label-save latency against pool size: ActiveLabel beside MONAI Label's stock path.

For each pool size (1k, 10k, 100k images by default) two identical studies folders are built:
every image a symlink to one of four real MR phantom volumes, 10% of them with a final label,
metadata generated with an uncertainty score per unlabeled image (in the datastore JSON for
the stock ``Epistemic`` strategy, in the score store for ours).  Then, one after the other,
a real server is started on each — ``activelabel serve`` with our app, and ``monailabel
start_server`` with a stock app (LocalDatastore + Epistemic, bench/stock_app) — and timed
over plain HTTP: ``POST /activelearning/<strategy>`` (a different client each time, so our
leases pile up as they would with many clinicians) and ``PUT /datastore/label`` for distinct
unlabeled images.  Figures are printed and written to bench/results/next_sample_scale.json.

    .venv/bin/python bench/next_sample_scale.py [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

from activelabel.data.phantoms import generate_datastore
from activelabel.ml.uncertainty import VolumeUncertainty
from activelabel.store.scores import ScoreStore
from activelabel.testing.server_process import ServerProcess, start_server

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "next_sample_scale.json"
STOCK_APP = REPO / "bench" / "stock_app"
REAL_FILES = 4
LABELED_FRACTION = 0.1
TARGET_P99_MS = 50.0
TARGET_RATIO = 10.0


def _image_id(index: int) -> str:
    return f"img_{index:06d}"


def build_pool(dest: Path, *, real: Path, size: int, seed: int) -> dict[str, float]:
    """A studies folder of ``size`` symlinked images with metadata; returns the unlabeled images' scores."""
    rng = random.Random(seed)
    (dest / "labels" / "final").mkdir(parents=True)
    shutil.copyfile(real / "labels.json", dest / "labels.json")
    sources = sorted(real.glob("*.nii.gz"))[:REAL_FILES]
    now = int(time.time())
    objects: dict[str, dict[str, object]] = {}
    scores: dict[str, float] = {}
    for index in range(size):
        image_id = _image_id(index)
        source = sources[index % len(sources)]
        name = f"{image_id}.nii.gz"
        os.symlink(source, dest / name)
        entry: dict[str, object] = {"image": {"ext": ".nii.gz", "info": {"ts": now, "name": name}}, "labels": {}}
        if index < size * LABELED_FRACTION:
            os.symlink(real / "labels" / "final" / source.name, dest / "labels" / "final" / name)
            entry["labels"] = {"final": {"ext": ".nii.gz", "info": {"ts": now, "name": name}}}
        else:
            scores[image_id] = rng.random()
            entry["image"]["info"].update(epistemic_entropy=scores[image_id], epistemic_ts=now)  # type: ignore[index]
        objects[image_id] = entry
    document = {"name": "bench", "description": "generated", "images_dir": "", "labels_dir": "labels"}
    (dest / "datastore_v2.json").write_text(json.dumps({**document, "objects": objects}))
    return scores


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "max_ms": 1000 * ordered[-1],
    }


def _timed(calls: int, request: Callable[[int], requests.Response]) -> list[float]:
    times = []
    for index in range(calls):
        began = time.perf_counter()
        response = request(index)
        times.append(time.perf_counter() - began)
        if response.status_code != 200:
            raise RuntimeError(f"{response.request.method} {response.url}: {response.status_code} {response.text}")
    return times


def measure(server: ServerProcess, *, strategy: str, save_ids: list[str], label: Path, requests_: int) -> dict:
    """Next-sample and label-save latencies of one running server (the first call of each is a warm-up)."""
    session = requests.Session()

    def next_sample(index: int) -> requests.Response:
        return session.post(f"{server.url}/activelearning/{strategy}", json={"client_id": f"bench-{index}"})

    def save(index: int) -> requests.Response:
        with label.open("rb") as handle:
            return session.put(
                f"{server.url}/datastore/label",
                params={"image": save_ids[index], "tag": "final"},
                data={"params": json.dumps({"client_id": "bench"})},
                files={"label": (label.name, handle)},
            )

    next_times = _timed(requests_ + 1, next_sample)[1:]
    save_times = _timed(len(save_ids), save)[1:]
    return {"next_sample": _percentiles(next_times), "save_label": _percentiles(save_times)}


def run_size(work: Path, real: Path, *, size: int, requests_: int, stock_requests: int, saves: int) -> dict:
    """Both paths on fresh copies of one generated pool of ``size`` images."""
    result: dict[str, object] = {"size": size}
    # Label files match their image's grid: save image i with the label of its source volume.
    label = real / "labels" / "final" / sorted(real.glob("*.nii.gz"))[0].name
    for path in ("activelabel", "stock"):
        studies = work / f"{path}-{size}"
        began = time.perf_counter()
        scores = build_pool(studies, real=real, size=size, seed=size)
        built = time.perf_counter() - began
        state = work / f"{path}-{size}-state"
        if path == "activelabel":
            store = ScoreStore(state / "scores.sqlite")
            store.put_many(
                (image_id, 0, VolumeUncertainty(score, score, score, 0.1, 2), 0.0) for image_id, score in scores.items()
            )
        unlabeled = sorted(scores)
        save_ids = [i for i in unlabeled if int(i.split("_")[1]) % REAL_FILES == 0][: saves + 1]
        conf = {"modality": "mr", "retrain_after": "0", "state_dir": str(state)}
        server = start_server(
            studies,
            log=work / f"{path}-{size}.log",
            conf=conf if path == "activelabel" else {},
            launcher="activelabel" if path == "activelabel" else "monailabel",
            app_dir=STOCK_APP,
            timeout=1800,
        )
        try:
            figures = measure(
                server,
                strategy="most_uncertain" if path == "activelabel" else "epistemic",
                save_ids=save_ids,
                label=label,
                requests_=requests_ if path == "activelabel" else stock_requests if size < 100_000 else 8,
            )
        finally:
            server.stop()
        figures["start_seconds"] = server.started_in
        figures["pool_build_seconds"] = built
        result[path] = figures
        shutil.rmtree(studies, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        print(f"  {size:>7} {path:<12} start {server.started_in:7.1f}s  {_line(figures)}", flush=True)
    ours, stock = result["activelabel"], result["stock"]
    result["next_sample_p99_ratio"] = stock["next_sample"]["p99_ms"] / ours["next_sample"]["p99_ms"]  # type: ignore[index]
    result["save_label_p99_ratio"] = stock["save_label"]["p99_ms"] / ours["save_label"]["p99_ms"]  # type: ignore[index]
    return result


def _line(figures: dict) -> str:
    n, s = figures["next_sample"], figures["save_label"]
    return (
        f"next p50/p99 {n['p50_ms']:8.1f}/{n['p99_ms']:8.1f} ms (n={n['n']})   "
        f"save p50/p99 {s['p50_ms']:8.1f}/{s['p99_ms']:8.1f} ms (n={s['n']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated pool sizes")
    parser.add_argument("--requests", type=int, default=200, help="next-sample requests to our server per size")
    parser.add_argument(
        "--stock-requests", type=int, default=20, help="next-sample requests to the stock server (8 from 100k on)"
    )
    parser.add_argument("--saves", type=int, default=20, help="label saves per server and size")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="next-sample-scale-") as tmp:
        work = Path(tmp)
        real = work / "real"
        generate_datastore(real, modality="mr", count=REAL_FILES, labeled=REAL_FILES, seed=0)
        print(f"pool sizes {sizes}; every image a symlink to one of {REAL_FILES} MR phantoms", flush=True)
        for size in sizes:
            runs.append(
                run_size(
                    work,
                    real,
                    size=size,
                    requests_=args.requests,
                    stock_requests=args.stock_requests,
                    saves=args.saves,
                )
            )
    largest = runs[-1]
    ours = largest["activelabel"]["next_sample"]["p99_ms"]
    report = {
        "benchmark": "next_sample_scale",
        "labeled_fraction": LABELED_FRACTION,
        "targets": {"next_sample_p99_ms": TARGET_P99_MS, "ratio_vs_stock": TARGET_RATIO, "at_size": largest["size"]},
        "met": {
            "next_sample_p99": ours <= TARGET_P99_MS,
            "ratio_vs_stock": largest["next_sample_p99_ratio"] >= TARGET_RATIO,
        },
        "runs": runs,
    }
    print(
        f"at {largest['size']} images: our next-sample p99 {ours:.1f} ms (target <= {TARGET_P99_MS:.0f}), "
        f"{largest['next_sample_p99_ratio']:.0f}x faster than stock (target >= {TARGET_RATIO:.0f}x); "
        f"label save p99 {largest['save_label_p99_ratio']:.0f}x faster"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
