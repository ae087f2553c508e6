"""Foundation figures: server start, infer on a real CT, scoring cost per sample count, training epoch.

Prints a table and writes ``bench/results/foundation.json``.  Run with ``make bench``.
Everything runs on this machine's CPU; timings are wall-clock seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import torch
from monailabel.client import MONAILabelClient
from monailabel.datastore.local import LocalDatastore

from activelabel.config import load_settings
from activelabel.data.phantoms import generate_datastore
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import load_model
from activelabel.ml.training import TrainOptions, load_volumes, split_train_val, train_network
from activelabel.scoring.scorer import ScoringOptions, score_pool
from activelabel.store.scores import ScoreStore
from activelabel.testing.datasets import TOTALSEG_CT
from activelabel.testing.server_process import start_server

REPO = Path(__file__).resolve().parents[1]
REAL_CT = TOTALSEG_CT / "images" / "abdomen_ct.nii.gz"
RESULTS = REPO / "bench" / "results" / "foundation.json"


def _server_and_infer(studies: Path, work: Path, *, repeats: int) -> dict[str, Any]:
    server = start_server(studies, log=work / "server.log", conf={"state_dir": str(work / "state")})
    try:
        client = MONAILabelClient(server.url, tmpdir=str(work / "client"))
        client.upload_image(str(REAL_CT), image_id="abdomen_ct")
        times = []
        for _ in range(repeats + 1):
            began = time.perf_counter()
            client.infer("segmentation", "abdomen_ct", {})
            times.append(time.perf_counter() - began)
        requests.delete(f"{server.url}/datastore/image", params={"id": "abdomen_ct"}, timeout=30)
        return {
            "server_start_seconds": server.started_in,
            "infer_abdomen_ct_first_seconds": times[0],
            "infer_abdomen_ct_seconds": statistics.median(times[1:]),
            "infer_repeats": repeats,
        }
    finally:
        server.stop()


def _scoring(studies: Path, work: Path, *, samples: list[int], volumes: int) -> dict[str, Any]:
    settings = load_settings({"state_dir": str(work / "scoring")}, studies=str(studies), app_dir=str(REPO / "apps"))
    store = ModelStore(settings.model_dir)
    store.ensure_initial(settings.network, settings.labels.to_dict(), seed=settings.seed)
    network, info = load_model(store)
    datastore = LocalDatastore(str(studies), extensions=("*.nii.gz",), read_only=True)
    images = {i: datastore.get_image_uri(i) for i in sorted(datastore.get_unlabeled_images())[:volumes]}
    per_volume = {}
    for n in samples:
        report = score_pool(
            images,
            network=network,
            model_version=info.version,
            preset=settings.preset,
            store=ScoreStore(work / f"scores-{n}.sqlite"),
            options=ScoringOptions(samples=n, dilation=settings.foreground_dilation, force=True),
        )
        per_volume[str(n)] = report.seconds_per_volume
    return {"scoring_seconds_per_volume": per_volume, "scoring_volumes": len(images)}


def _training(studies: Path, work: Path, *, epochs: int) -> dict[str, Any]:
    settings = load_settings({"state_dir": str(work / "train")}, studies=str(studies), app_dir=str(REPO / "apps"))
    store = ModelStore(settings.model_dir)
    store.ensure_initial(settings.network, settings.labels.to_dict(), seed=settings.seed)
    network, _ = load_model(store)
    datastore = LocalDatastore(str(studies), extensions=("*.nii.gz",), read_only=True)
    items = {Path(item["image"]).name: item for item in datastore.datalist()}
    train_ids, val_ids = split_train_val(list(items), val_split=settings.val_split, seed=settings.seed)
    began = time.perf_counter()
    train = load_volumes([items[i] for i in train_ids], preset=settings.preset, labels=settings.labels)
    val = load_volumes([items[i] for i in val_ids], preset=settings.preset, labels=settings.labels)
    loading = time.perf_counter() - began
    result = train_network(
        network,
        train,
        val,
        preset=settings.preset,
        labels=settings.labels,
        options=TrainOptions(max_epochs=epochs, samples_per_volume=settings.samples_per_volume),
    )
    epoch_seconds = [record["seconds"] for record in result.history]
    return {
        "train_volumes": len(train),
        "val_volumes": len(val),
        "train_loading_seconds": loading,
        "train_seconds_per_epoch": statistics.median(epoch_seconds),
        "train_epochs": epochs,
    }


def _flatten(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        rows += _flatten(value, f"{name}.") if isinstance(value, dict) else [(name, value)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--repeats", type=int, default=3, help="warm infer repeats")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--volumes", type=int, default=4, help="volumes scored per sample count")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="activelabel-bench-") as tmp:
        work = Path(tmp)
        studies = work / "studies"
        generate_datastore(studies, modality="ct", count=12, seed=0, labeled=3)  # the `make serve` sample data
        figures: dict[str, Any] = {
            "machine": {
                "cpus": torch.get_num_threads(),
                "python": platform.python_version(),
                "torch": torch.__version__,
            },
            "data": "12 CT phantoms (3 labeled), abdomen_ct 122x101x112 at 3 mm",
        }
        figures.update(_server_and_infer(studies, work, repeats=args.repeats))
        figures.update(_scoring(studies, work, samples=[1, 4, 8], volumes=args.volumes))
        figures.update(_training(studies, work, epochs=args.epochs))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    for name, value in _flatten(figures):
        print(f"{name:<42} {value:.3f}" if isinstance(value, float) else f"{name:<42} {value}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
