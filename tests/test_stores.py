"""Model versions and score freshness, as stored on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.networks import NetworkSpec, build_network
from activelabel.ml.uncertainty import VolumeUncertainty
from activelabel.store.scores import ScoreStore

SPEC = NetworkSpec(out_channels=3, channels=(4, 8), strides=(2,))
LABELS = {"a": 1, "b": 2}


def test_initial_model_is_version_zero_and_published_once(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = store.ensure_initial(SPEC, LABELS)
    again = store.ensure_initial(SPEC, LABELS)
    assert first.version == again.version == 0
    assert not first.trained
    state, info = store.load()
    assert info.version == 0
    assert set(state) == set(_network().state_dict())


def _network() -> torch.nn.Module:
    return build_network(SPEC)


def test_publish_increments_version_and_keeps_weights_with_info(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.ensure_initial(SPEC, LABELS)
    weights = _network().state_dict()
    info = store.publish(weights, spec=SPEC.to_dict(), labels=LABELS, val_dice={"a": 0.5, "b": 0.7}, val_mean_dice=0.6)
    assert info.version == 1
    assert info.trained
    state, loaded = store.load()
    assert loaded == store.info() == info
    for key, value in weights.items():
        torch.testing.assert_close(state[key], value)
    assert not list(tmp_path.glob("*.tmp"))


def test_model_for_other_labels_is_refused_with_advice(tmp_path: Path) -> None:
    ModelStore(tmp_path).ensure_initial(SPEC, LABELS)
    with pytest.raises(ValueError, match="trained for labels"):
        ModelStore(tmp_path).ensure_initial(SPEC, {"a": 1, "c": 2})


def test_an_untrained_model_for_another_network_is_replaced_but_a_trained_one_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.ensure_initial(SPEC, LABELS)
    other = NetworkSpec(out_channels=3, channels=(4, 8), strides=(2,), dropout_scope="bottleneck")
    replaced = store.ensure_initial(other, LABELS)
    assert (replaced.version, NetworkSpec.from_dict(replaced.spec)) == (0, other)
    store.publish(build_network(other).state_dict(), spec=other.to_dict(), labels=LABELS)
    with pytest.raises(ValueError, match="--conf architecture unet"):
        store.ensure_initial(SPEC, LABELS)
    assert NetworkSpec.from_dict(store.info().spec) == other  # the trained model is untouched


def _u(value: float) -> VolumeUncertainty:
    return VolumeUncertainty(
        entropy=value, mutual_information=value, variance=value, foreground_fraction=0.5, samples=2
    )


def test_scores_are_fresh_only_for_the_current_model_version(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path / "scores.sqlite")
    store.put("x", 1, _u(0.1), seconds=1.0)
    store.put("y", 2, _u(0.2), seconds=1.0)
    freshness = store.freshness(["x", "y", "z"], model_version=2)
    assert (freshness.fresh, freshness.stale, freshness.unscored) == (1, 1, 1)
    assert store.stale(["x", "y", "z"], 2) == ["x", "z"]


def test_rescoring_replaces_the_previous_score(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path / "scores.sqlite")
    store.put("x", 1, _u(0.1), seconds=1.0)
    store.put("x", 2, _u(0.9), seconds=1.0)
    score = ScoreStore(tmp_path / "scores.sqlite").get("x")
    assert score is not None
    assert score.model_version == 2
    assert score.uncertainty.entropy == pytest.approx(0.9)
    assert [s.image_id for s in store.ranked(["x"], "entropy")] == ["x"]


def test_a_score_database_from_before_the_agreement_column_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "scores.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE scores (image_id TEXT PRIMARY KEY, model_version INTEGER NOT NULL, entropy REAL NOT NULL, "
            "mutual_information REAL NOT NULL, variance REAL NOT NULL, foreground_fraction REAL NOT NULL, "
            "samples INTEGER NOT NULL, seconds REAL NOT NULL, scored_at REAL NOT NULL)"
        )
        db.execute("INSERT INTO scores VALUES ('old', 1, 0.5, 0.1, 0.01, 0.2, 4, 1.0, 0.0)")
    store = ScoreStore(path)
    assert store.get("old").uncertainty.agreement is None  # unknown, not a perfect 1.0
    store.put("new", 1, VolumeUncertainty(0.4, 0.1, 0.01, 0.2, 4, agreement=0.87), seconds=1.0)
    assert store.get("new").uncertainty.agreement == pytest.approx(0.87)
    assert ScoreStore(path).get("old").model_version == 1  # opening again changes nothing
