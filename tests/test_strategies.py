"""Active-learning strategies on a real LocalDatastore and score store."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from monailabel.datastore.local import LocalDatastore

from activelabel.datastore.indexed import IndexedLocalDatastore
from activelabel.ml.uncertainty import UncertaintyMetric, VolumeUncertainty
from activelabel.store.scores import ScoreStore
from activelabel.strategies.diverse import DiverseUncertain, cosine_distances, diversity_priority, farthest_first
from activelabel.strategies.foreground_random import ForegroundRandom, pick_foreground_random
from activelabel.strategies.most_uncertain import MostUncertain
from activelabel.strategies.random_sample import RandomSample, pick_random
from tests.helpers import tiny_datastore


def _uncertainty(entropy: float, mi: float, variance: float) -> VolumeUncertainty:
    return VolumeUncertainty(
        entropy=entropy, mutual_information=mi, variance=variance, foreground_fraction=0.1, samples=4
    )


@pytest.fixture(params=[LocalDatastore, IndexedLocalDatastore], ids=["stock-json", "indexed-sqlite"])
def datastore(tmp_path: Path, request: pytest.FixtureRequest) -> LocalDatastore:
    """The same four images (``a`` labeled) in MONAI Label's datastore and in ours."""
    root = tiny_datastore(tmp_path / "studies", ["a", "b", "c", "d"], labeled=["a"])
    return request.param(str(root), extensions=("*.nii.gz",))


@pytest.fixture
def scores(tmp_path: Path) -> ScoreStore:
    store = ScoreStore(tmp_path / "scores.sqlite")
    store.put("a", 1, _uncertainty(9.0, 9.0, 9.0), seconds=0.1)  # labeled: must never be chosen
    store.put("b", 1, _uncertainty(0.5, 0.2, 0.03), seconds=0.1)
    store.put("c", 1, _uncertainty(0.9, 0.1, 0.01), seconds=0.1)
    return store


def test_most_uncertain_picks_highest_score_among_unlabeled(datastore: LocalDatastore, scores: ScoreStore) -> None:
    strategy = MostUncertain(scores=scores, metric=UncertaintyMetric.ENTROPY)
    result = strategy({}, datastore)
    assert result["id"] == "c"
    assert result["score"] == pytest.approx(0.9)
    assert result["ranked"] == 3  # scored images; the labeled one's score is dropped when its label is submitted


@pytest.mark.parametrize(("metric", "expected"), [("mutual_information", "b"), ("variance", "b"), ("entropy", "c")])
def test_most_uncertain_metric_is_configurable_per_request(
    datastore: LocalDatastore, scores: ScoreStore, metric: str, expected: str
) -> None:
    strategy = MostUncertain(scores=scores, metric=UncertaintyMetric.ENTROPY)
    assert strategy({"metric": metric}, datastore)["id"] == expected


def test_most_uncertain_rejects_unknown_metric(datastore: LocalDatastore, scores: ScoreStore) -> None:
    strategy = MostUncertain(scores=scores, metric=UncertaintyMetric.ENTROPY)
    with pytest.raises(ValueError, match="unknown metric 'dice'"):
        strategy({"metric": "dice"}, datastore)


def test_most_uncertain_without_scores_falls_back_to_random_and_says_so(
    datastore: LocalDatastore, tmp_path: Path
) -> None:
    strategy = MostUncertain(scores=ScoreStore(tmp_path / "empty.sqlite"), metric=UncertaintyMetric.ENTROPY)
    result = strategy({}, datastore)
    assert result["id"] in {"b", "c", "d"}
    assert result["score"] is None
    assert "random" in result["fallback"]


def test_strategies_return_nothing_when_everything_is_labeled(tmp_path: Path, scores: ScoreStore) -> None:
    root = tiny_datastore(tmp_path / "done", ["a"], labeled=["a"])
    datastore = LocalDatastore(str(root), extensions=("*.nii.gz",))
    assert MostUncertain(scores=scores, metric=UncertaintyMetric.ENTROPY)({}, datastore) is None
    assert RandomSample()({}, datastore) is None


def test_random_never_picks_labeled_and_covers_all_unlabeled(datastore: LocalDatastore) -> None:
    strategy = RandomSample()
    picks = {strategy({"seed": seed}, datastore)["id"] for seed in range(40)}
    assert picks == {"b", "c", "d"}


def test_random_with_seed_is_reproducible(datastore: LocalDatastore) -> None:
    strategy = RandomSample()
    assert strategy({"seed": 3}, datastore)["id"] == strategy({"seed": 3}, datastore)["id"]
    assert pick_random(["x", "y", "z"], rng=random.Random(1)) == pick_random(["z", "y", "x"], rng=random.Random(1))


def test_diversity_prefers_uncertain_volumes_unlike_the_labeled_ones() -> None:
    labeled = [np.array([1.0, 0.0])]
    embeddings = {"near": np.array([0.99, 0.05]), "far": np.array([0.0, 1.0])}
    priority = diversity_priority({"near": 1.0, "far": 0.8}, embeddings, labeled)
    assert priority["far"] > priority["near"]
    assert diversity_priority({"near": 1.0, "far": 0.8}, embeddings, [])["near"] == pytest.approx(1.0)


def test_cosine_distance_to_nearest_reference() -> None:
    distances = cosine_distances(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[2.0, 0.0]]))
    assert distances.tolist() == pytest.approx([0.0, 1.0])


def test_diverse_strategy_spreads_a_batch(datastore: LocalDatastore, scores: ScoreStore, tmp_path: Path) -> None:
    # b and c are near-duplicates, d is different; all equally uncertain.
    for image_id, vector in {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.05, 1.0], "d": [0.7, -0.7]}.items():
        scores.put(image_id, 1, _uncertainty(0.5, 0.5, 0.5), seconds=0.1)
        scores.put_embedding(image_id, 1, np.array(vector))
    strategy = DiverseUncertain(scores=scores, metric=UncertaintyMetric.MUTUAL_INFORMATION)
    first = strategy({}, datastore)["id"]
    labels = Path(datastore.get_image_uri("a")).parent / "labels" / "final"
    shutil.copy(labels / "a.nii.gz", labels / f"{first}.nii.gz")
    datastore.refresh()
    second = strategy({}, datastore)["id"]
    assert {first, second} in ({"b", "d"}, {"c", "d"})


def test_foreground_random_draws_in_proportion_to_foreground_two_times_in_three() -> None:
    foreground = {"b": 1.0, "c": 9.0, "d": 0.0}
    rng = random.Random(0)
    picks = [pick_foreground_random(["b", "c", "d"], foreground, rng=rng) for _ in range(3000)]
    counts = {i: picks.count(i) for i in "bcd"}
    # Uniform third: 1000/3 each; weighted two thirds: 10% b, 90% c, none d.
    assert counts["d"] == pytest.approx(1000 / 3, rel=0.2)
    assert counts["b"] == pytest.approx(1000 / 3 + 2000 * 0.1, rel=0.2)
    assert counts["c"] == pytest.approx(1000 / 3 + 2000 * 0.9, rel=0.1)


def test_foreground_random_with_no_uniform_share_never_picks_empty_foreground() -> None:
    rng = random.Random(1)
    picks = {pick_foreground_random(["b", "c"], {"b": 0.0, "c": 2.0}, rng=rng, uniform_share=0.0) for _ in range(50)}
    assert picks == {"c"}


def test_foreground_random_weighs_unknown_volumes_as_the_mean_and_refuses_bad_shares() -> None:
    rng = random.Random(2)
    picks = [pick_foreground_random(["b", "x"], {"b": 4.0}, rng=rng, uniform_share=0.0) for _ in range(400)]
    assert picks.count("x") == pytest.approx(200, rel=0.25)
    assert pick_foreground_random([], {}, rng=rng) is None
    with pytest.raises(ValueError, match="uniform_share must be in"):
        pick_foreground_random(["b"], {}, rng=rng, uniform_share=1.5)


def test_foreground_random_strategy_reads_predicted_foreground_and_skips_labeled(
    datastore: LocalDatastore, tmp_path: Path
) -> None:
    store = ScoreStore(tmp_path / "fg-scores.sqlite")
    for image_id, fraction in {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.5}.items():
        uncertainty = VolumeUncertainty(
            entropy=0.1, mutual_information=0.1, variance=0.1, foreground_fraction=fraction, samples=2
        )
        store.put(image_id, 1, uncertainty, seconds=0.1)
    strategy = ForegroundRandom(scores=store, uniform_share=0.0)
    picks = {strategy({"seed": seed}, datastore)["id"] for seed in range(30)}
    assert picks == {"d"}  # "a" is labeled; "b" and "c" have no predicted foreground
    assert strategy({"seed": 0}, datastore)["strategy"] == "foreground_random"


def test_farthest_first_spreads_the_cold_start_over_feature_space() -> None:
    embeddings = {
        "a1": np.array([1.0, 0.0]),
        "a2": np.array([0.99, 0.01]),
        "b": np.array([0.0, 1.0]),
        "c": np.array([-1.0, 0.0]),
    }
    assert farthest_first(embeddings, 3, first="a1") == ["a1", "c", "b"]
    assert farthest_first(embeddings, 9, first="b")[:1] == ["b"]
    assert len(farthest_first(embeddings, 9, first="b")) == 4
    with pytest.raises(ValueError, match="no embedding"):
        farthest_first(embeddings, 2, first="zz")
