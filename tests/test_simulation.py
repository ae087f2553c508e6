"""The oracle loop's mechanics on a tiny profile (a dozen phantoms, two rounds)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from activelabel.cli import main
from activelabel.config import load_settings
from activelabel.data.phantoms import generate_datastore
from activelabel.errors import ConfigError
from activelabel.labelmap import NOT_ANNOTATED
from activelabel.ml.training import epoch_order
from activelabel.simulation.loop import Simulation, SimulationConfig, preprocess, split_cases
from activelabel.simulation.sparse import SparseSimulation

# The cheaper UNet keeps these end-to-end runs short; the default DynUNet is covered by
# test_training, test_decoder_dropout and test_server.
TINY_CONF = {"roi_size": "48,48,48", "channels": "8,16,32", "modality": "mr", "architecture": "unet"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sim") / "studies"
    generate_datastore(root, modality="mr", count=12, seed=3)
    images = {p.name.removesuffix(".nii.gz"): p for p in sorted(root.glob("*.nii.gz"))}
    truths = {case: root / "truth" / f"{case}.nii.gz" for case in images}
    settings = load_settings(TINY_CONF, studies=str(root), app_dir=str(root), env={})
    volumes = preprocess(images, truths, preset=settings.preset, labels=settings.labels)
    return {"root": root, "images": images, "truths": truths, "settings": settings, "volumes": volumes}


TINY_RUN = {
    "initial": 2,
    "per_round": 2,
    "rounds": 2,
    "epochs_per_round": 1,
    "steps_per_epoch": 3,
    "mc_samples": 2,
    "test_fraction": 0.25,
}
"""Two short rounds on nine pool volumes (three held out for testing)."""


def _simulate(dataset: dict[str, Any], tmp_path: Path, strategy: str) -> dict[str, Any]:
    config = SimulationConfig(strategy=strategy, **TINY_RUN)
    return _simulation(dataset, tmp_path, config).run(progress=False)


def _simulation(
    dataset: dict[str, Any], tmp_path: Path, config: SimulationConfig, *, kind: type[Simulation] = Simulation
) -> Simulation:
    settings = dataset["settings"]
    return kind(
        dataset["images"],
        dataset["truths"],
        labels=settings.labels,
        preset=settings.preset,
        spec=settings.network,
        config=config,
        work_dir=tmp_path,
        volumes=dataset["volumes"],
        # Rounds replace the cap with their own; the full-data reference trains this one.
        train_options=settings.train_options(seed=0, max_epochs=2, steps_per_epoch=3, patience=None),
    )


@pytest.mark.parametrize("strategy", ["random", "foreground_random", "mutual_information", "diverse"])
def test_rounds_record_curves_and_never_select_test_or_twice(
    dataset: dict[str, Any], tmp_path: Path, strategy: str
) -> None:
    results = _simulate(dataset, tmp_path, strategy)
    rounds = results["rounds"]
    assert [r["labeled"] for r in rounds] == [2, 4, 6]
    assert [r["labeled_fraction"] for r in rounds] == pytest.approx([2 / 9, 4 / 9, 6 / 9])
    picked = [case for r in rounds for case in r["picked"]]
    assert len(picked) == len(set(picked)) == 4
    assert not set(picked) & set(results["test"])
    for record in rounds:
        assert set(record["test_dice"]) == {"anterior", "posterior"}
        assert 0.0 <= record["test_mean_dice"] <= 1.0
        assert record["training_seconds"] > 0
        assert {"stop", "reason", "estimated_labels_needed"} <= set(record["stop"])
    assert rounds[1]["picked_agreement"] is not None
    assert results["train_options"]["optimizer"] == dataset["settings"].optimizer.value
    if strategy not in ("random", "foreground_random"):
        assert rounds[0]["scoring_seconds"] > 0
        assert rounds[0]["pool_uncertainty"] is not None


def test_results_schema_feeds_the_cost_model(dataset: dict[str, Any], tmp_path: Path) -> None:
    results = _simulate(dataset, tmp_path, "entropy")
    json.dumps(results)  # JSON-ready
    assert set(results) == {"config", "train_options", "pool", "test", "labels", "rounds", "audit", "summary"}
    assert results["pool"] == 9
    assert len(results["test"]) == 3
    assert 0.0 < results["summary"]["fraction_labeled"] <= 1.0
    audit = results["audit"]
    assert audit["auto_labeled"] + results["rounds"][-1]["labeled"] == results["pool"]
    assert audit["automation"] == pytest.approx(audit["auto_labeled"] / results["pool"])
    assert audit["accepted"] <= audit["audited"] <= audit["auto_labeled"]
    triage = audit["triage"]
    assert triage["auto_accepted"] + triage["sent_back"] == audit["auto_labeled"]
    assert triage["failed_audit"] <= triage["auto_accepted"]
    assert len(audit["automation_accuracy_curve"]) == audit["auto_labeled"]
    assert 0.0 <= audit["automation_at_90"] <= audit["automation"]
    effort = audit["effort"]
    assert effort["labeled"] == results["rounds"][-1]["labeled"] + triage["sent_back"] + triage["failed_audit"]
    assert results["summary"]["effort_saved"] == pytest.approx(effort["effort_saved"])
    assert results["summary"]["effort_fraction_labeled"] == pytest.approx(effort["labeled"] / results["pool"])


def test_full_data_reference_labels_the_whole_pool(dataset: dict[str, Any], tmp_path: Path) -> None:
    results = _simulate(dataset, tmp_path, "all")
    assert len(results["rounds"]) == 1
    assert results["rounds"][0]["labeled"] == results["pool"] == 9
    assert results["audit"] is None


def test_test_split_is_deterministic_and_disjoint() -> None:
    ids = [f"case_{i:02d}" for i in range(20)]
    pool, test = split_cases(ids, test_fraction=0.2, seed=1)
    assert (pool, test) == split_cases(list(reversed(ids)), test_fraction=0.2, seed=1)
    assert len(test) == 4
    assert not set(pool) & set(test)
    assert sorted(pool + test) == ids


def test_simulate_command_writes_results(dataset: dict[str, Any], tmp_path: Path) -> None:
    root = dataset["root"]
    out = tmp_path / "results.json"
    args = ["simulate", "--images", str(root), "--labels", str(root / "truth"), "--strategy", "random"]
    args += [
        "--initial",
        "2",
        "--per-round",
        "2",
        "--rounds",
        "1",
        "--epochs-per-round",
        "1",
        "--steps-per-epoch",
        "2",
        "--quiet",
    ]
    for key, value in TINY_CONF.items():
        args += ["--conf", key, value]
    assert main([*args, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["strategy"] == "random"
    sparse = tmp_path / "sparse.json"
    assert main([*args, "--unit", "slices", "--slices-per-volume", "2", "--out", str(sparse)]) == 0
    assert json.loads(sparse.read_text())["rounds"][-1]["annotated_slices"] == 8


def test_simulate_command_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "images").mkdir()
    code = main(
        [
            "simulate",
            "--images",
            str(tmp_path / "images"),
            "--labels",
            str(tmp_path / "nowhere"),
            "--strategy",
            "random",
            "--out",
            str(tmp_path / "x.json"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: folder not found")


def test_fixed_steps_per_epoch_cycle_through_every_volume() -> None:
    rng = random.Random(0)
    order = epoch_order(3, 7, rng)
    assert len(order) == 7
    assert sorted(order[:3]) == sorted(order[3:6]) == [0, 1, 2]
    assert sorted(epoch_order(4, None, rng)) == [0, 1, 2, 3]


def test_diverse_cold_start_picks_distinct_pool_volumes_spread_in_feature_space(
    dataset: dict[str, Any], tmp_path: Path
) -> None:
    config = SimulationConfig(strategy="random", initial=3, test_fraction=0.25, cold_start="diverse")
    simulation = _simulation(dataset, tmp_path, config)
    picked = simulation._cold_start(random.Random(0))
    assert len(picked) == len(set(picked)) == 3
    assert set(picked) <= set(simulation.pool)
    with pytest.raises(ConfigError, match="cold_start must be"):
        SimulationConfig(strategy="random", cold_start="kmeans")


def test_slice_runs_annotate_only_the_asked_slices_and_train_on_them(dataset: dict[str, Any], tmp_path: Path) -> None:
    for strategy in ("random", "mutual_information"):
        config = SimulationConfig(strategy=strategy, unit="slices", slices_per_volume=3, **TINY_RUN)
        simulation = _simulation(dataset, tmp_path / strategy, config, kind=SparseSimulation)
        result = simulation.run(progress=False)
        slices = [r["annotated_slices"] for r in result["rounds"]]
        assert slices == [6, 12, 18]  # 2 volumes x 3 slices per round, never an annotated slice twice
        assert all(len(s) == len(set(s)) for s in result["annotated"].values())
        assert not set(result["annotated"]) & set(result["test"])
        assert result["rounds"][-1]["annotated_slice_fraction"] == pytest.approx(18 / result["pool_slices"])
        case = next(iter(result["annotated"]))
        label = np.asarray(simulation._training_volume(case)["label"])
        kept = sorted(set(np.flatnonzero((label != NOT_ANNOTATED).any(axis=(0, 1, 2))).tolist()))
        assert kept == result["annotated"][case]
    diverse = SimulationConfig(strategy="diverse", unit="slices", test_fraction=0.25)
    with pytest.raises(ConfigError, match="does not pick slices"):
        _simulation(dataset, tmp_path / "diverse", diverse, kind=SparseSimulation)
