"""The oracle active-learning loop: the server's own parts, with ground truth as the expert.

Each round trains the network (warm start), measures Dice on a fixed test split that is never
selected, scores the unlabeled pool with MC dropout, lets a strategy pick the next volumes and
"labels" them from the ground truth.  Network, transforms, trainer, scorer, score store,
strategies and the datastore are the very classes the server uses: the pool lives in a real
MONAI Label ``LocalDatastore`` whose labels are links to the truth files.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.tasks.strategy import Strategy
from tqdm import tqdm

from activelabel.errors import ConfigError
from activelabel.labelmap import LabelMap
from activelabel.ml.inference import (
    embed_volume,
    mc_dropout_uncertainty,
    predict_probabilities,
    sliding_window,
)
from activelabel.ml.metrics import dice_per_label, mean_dice
from activelabel.ml.networks import NetworkSpec, build_network, initial_state
from activelabel.ml.training import TrainOptions, load_volumes, split_train_val, train_network, validate
from activelabel.ml.transforms import Preset
from activelabel.ml.uncertainty import UncertaintyMetric
from activelabel.scoring.triage import (
    automation_accuracy_curve,
    curve_automation_at,
    expert_effort,
    quality_and_dice,
    quality_threshold,
    rank_correlation,
    triage_outcome,
)
from activelabel.server.stop_rule import RoundSignals, StopRule
from activelabel.store.scores import ScoreStore
from activelabel.strategies.diverse import DiverseUncertain, farthest_first
from activelabel.strategies.foreground_random import ForegroundRandom
from activelabel.strategies.most_uncertain import MostUncertain
from activelabel.strategies.random_sample import RandomSample

logger = logging.getLogger(__name__)

FULL_DATA = "all"
STRATEGIES = ("random", "foreground_random", "entropy", "mutual_information", "variance", "diverse", FULL_DATA)
RANDOM_STRATEGIES = ("random", "foreground_random")
"""Strategies that need no scores (the pool is not scored for them)."""


@dataclass(frozen=True)
class SimulationConfig:
    """One simulated labeling project.

    Attributes:
        strategy: ``random``, ``foreground_random`` (nnActive's baseline, foreground from the
            truth), ``entropy``, ``mutual_information``, ``variance`` (most uncertain by that
            metric), ``diverse`` (uncertainty x novelty, mutual information) or ``all``
            (full-data reference: the whole pool, trained with the training recipe as given,
            i.e. the server's trainer with its own step cap and patience, not a round's cap).
        initial: volumes labeled at random before the first round.
        per_round: volumes labeled per round.
        rounds: selection rounds after the initial training.
        test_fraction: fraction of all volumes held out for testing (never selected).
        seed: seed of the validation splits, initial weights, initial labels and training.
        split_seed: seed of the test split, the same for every run by default, so that runs
            with different seeds are tested on the same volumes against one full-data reference.
        epochs_per_round: training epochs at most after each labeling round (warm start).
        steps_per_epoch: optimizer steps per epoch (the validation interval), whatever the
            number of labeled volumes.
        patience: each round stops once validation Dice has not improved for this many
            epochs, so it trains to convergence within its cap (``None``: the recipe's).
        mc_samples: MC-dropout passes per volume when scoring.
        audit_threshold: an auto-label is accepted when its Dice is at least this.
        audit_size: auto-labels audited (a random sample; all when larger than the rest).
        cold_start: how the ``initial`` volumes are picked: ``random``, or ``diverse``
            (farthest-first in the untrained network's bottleneck feature space, from one
            random volume).
        triage_accuracy: the share of accepted auto-labels that should pass the audit; the
            quality threshold is calibrated for it.
        label_minutes: expert minutes to label one volume by hand (the effort model).
        audit_seconds: expert seconds to audit one auto-label (the effort model).
        unit: ``volumes`` (the expert labels whole volumes) or ``slices`` (only the slices
            the strategy asks for, see :mod:`activelabel.simulation.sparse`).
        slices_per_volume: slices asked for per picked volume when ``unit`` is ``slices``.
    """

    strategy: str
    initial: int = 5
    per_round: int = 5
    rounds: int = 5
    test_fraction: float = 0.2
    seed: int = 0
    split_seed: int = 0
    epochs_per_round: int = 5
    steps_per_epoch: int = 20
    mc_samples: int = 4
    learning_rate: float | None = None
    samples_per_volume: int | None = None
    patience: int | None = None
    val_split: float = 0.2
    dilation: int = 3
    audit_threshold: float = 0.8
    audit_size: int = 50
    cold_start: str = "random"
    triage_accuracy: float = 0.95
    label_minutes: float = 20.0
    audit_seconds: float = 30.0
    unit: str = "volumes"
    slices_per_volume: int = 5

    def __post_init__(self) -> None:
        if self.unit not in ("volumes", "slices"):
            raise ConfigError(f"unit must be volumes or slices, got {self.unit!r}")
        if self.slices_per_volume < 1:
            raise ConfigError(f"slices_per_volume must be >= 1, got {self.slices_per_volume}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        for name in ("initial", "per_round", "epochs_per_round", "steps_per_epoch", "mc_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rounds < 0:
            raise ConfigError(f"rounds must be >= 0, got {self.rounds}")
        if self.cold_start not in ("random", "diverse"):
            raise ConfigError(f"cold_start must be random or diverse, got {self.cold_start!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass
class RoundRecord:
    """Figures of one round (after training on the labels so far)."""

    round: int
    labeled: int
    labeled_fraction: float
    test_dice: dict[str, float]
    test_mean_dice: float
    val_mean_dice: float | None
    picked: list[str] = field(default_factory=list)
    picked_agreement: float | None = None
    pool_uncertainty: float | None = None
    training_seconds: float = 0.0
    scoring_seconds: float = 0.0
    stop: dict[str, Any] | None = None


def split_cases(ids: Sequence[str], *, test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic (pool, test) split; the test split is never offered to a strategy."""
    ordered = sorted(ids)
    random.Random(f"test-split-{seed}").shuffle(ordered)
    n_test = max(1, round(len(ordered) * test_fraction))
    if n_test >= len(ordered):
        raise ConfigError(f"{len(ordered)} volumes are too few for a test fraction of {test_fraction}")
    return sorted(ordered[n_test:]), sorted(ordered[:n_test])


def _strategy(name: str, scores: ScoreStore, foreground: Mapping[str, float]) -> tuple[Strategy, dict[str, Any]]:
    if name == "random":
        return RandomSample(), {}
    if name == "foreground_random":
        return ForegroundRandom(foreground=foreground), {}
    if name == "diverse":
        return DiverseUncertain(scores=scores, metric=UncertaintyMetric.MUTUAL_INFORMATION), {}
    return MostUncertain(scores=scores, metric=UncertaintyMetric(name)), {}


class Simulation:
    """One strategy, one seed, on one data set.

    Args:
        images: case id -> image path.
        truths: case id -> ground-truth label path.
        labels: the label map of the truth files.
        preset: pre-processing preset.
        spec: network architecture.
        config: the run's settings.
        work_dir: scratch folder (the simulated datastore and its score database).
        volumes: pre-processed volumes by case id, shared between runs (see :func:`preprocess`).
        train_options: the training recipe (:meth:`activelabel.config.Settings.train_options`);
            the config's per-round cap, steps, learning rate, patch count and patience replace
            its fields, and its seed changes per round.  ``None``: Adam at a constant rate.
        device: where the network trains and runs (``cpu``, ``cuda``).
    """

    def __init__(
        self,
        images: Mapping[str, Path],
        truths: Mapping[str, Path],
        *,
        labels: LabelMap,
        preset: Preset,
        spec: NetworkSpec,
        config: SimulationConfig,
        work_dir: Path,
        volumes: Mapping[str, dict[str, Any]] | None = None,
        train_options: TrainOptions | None = None,
        device: str = "cpu",
    ) -> None:
        self.device = device
        self._val_ids: list[str] = []
        self.train_options = train_options or TrainOptions(max_epochs=1, learning_rate=1e-3)
        missing = sorted(set(images) - set(truths))
        if missing:
            raise ConfigError(f"no ground truth for {len(missing)} image(s), e.g. {missing[0]}")
        self.images, self.truths = dict(images), dict(truths)
        self.labels, self.preset, self.spec, self.config = labels, preset, spec, config
        self.work_dir = Path(work_dir)
        self.volumes = (
            dict(volumes) if volumes is not None else preprocess(images, truths, preset=preset, labels=labels)
        )
        self.pool, self.test = split_cases(sorted(images), test_fraction=config.test_fraction, seed=config.split_seed)
        self.inferer = sliding_window(preset.roi_size, overlap=self.train_options.overlap, bf16=self.train_options.bf16)
        self.channel_labels = {name: index for index, name in labels.channel_names().items()}
        self.network = build_network(spec)
        self.network.load_state_dict(initial_state(spec, seed=config.seed))
        self.network.to(device)
        self.studies = self.work_dir / "studies"
        self.datastore = self._make_datastore()
        self.scores = ScoreStore(self.work_dir / "scores.sqlite")

    def _make_datastore(self) -> LocalDatastore:
        (self.studies / "labels" / "final").mkdir(parents=True, exist_ok=True)
        for case in self.pool:
            link = self.studies / f"{case}.nii.gz"
            if not link.exists():
                link.symlink_to(Path(self.images[case]).resolve())
        return LocalDatastore(str(self.studies), extensions=("*.nii.gz",), auto_reload=False)

    def _label(self, cases: Sequence[str]) -> None:
        for case in cases:
            link = self.studies / "labels" / "final" / f"{case}.nii.gz"
            link.symlink_to(Path(self.truths[case]).resolve())
        self.datastore.refresh()

    def labeled(self) -> list[str]:
        return sorted(self.datastore.get_labeled_images())

    def unlabeled(self) -> list[str]:
        return sorted(self.datastore.get_unlabeled_images())

    def _cold_start(self, rng: random.Random) -> list[str]:
        """The ``initial`` volumes: random, or spread over the untrained network's feature space."""
        if self.config.cold_start == "random":
            return rng.sample(self.pool, self.config.initial)
        embeddings = {c: embed_volume(self.network, self.volumes[c]["image"], self.inferer).numpy() for c in self.pool}
        return farthest_first(embeddings, self.config.initial, first=rng.choice(self.pool))

    def _truth_foreground(self) -> dict[str, float]:
        """Labeled voxels of each pool volume's truth (what nnActive's baseline draws by)."""
        return {case: float((np.asarray(self.volumes[case]["label"]) > 0).sum()) for case in self.pool}

    def _prediction_dice(self, case: str) -> float:
        volume = self.volumes[case]
        prediction = predict_probabilities(self.network, volume["image"], self.inferer).argmax(dim=0).numpy()
        return mean_dice(dice_per_label(prediction, np.asarray(volume["label"][0]), self.channel_labels).values())

    def _train(self, cases: Sequence[str], *, options: TrainOptions) -> tuple[float | None, float]:
        train_ids, val_ids = split_train_val(cases, val_split=self.config.val_split, seed=self.config.seed)
        self._val_ids = list(val_ids)  # triage calibrates on these: never trained on
        began = time.perf_counter()
        result = train_network(
            self.network,
            [self._training_volume(c) for c in train_ids],
            [self._training_volume(c) for c in val_ids],
            preset=self.preset,
            labels=self.labels,
            options=options,
            device=self.device,
        )
        return result.val_mean_dice, time.perf_counter() - began

    def _training_volume(self, case: str) -> dict[str, Any]:
        """What training sees of a labeled case: here its whole truth (partial in :mod:`.sparse`)."""
        return self.volumes[case]

    def _round_options(self, *, epochs: int, round_index: int) -> TrainOptions:
        config = self.config
        overrides: dict[str, Any] = {
            "max_epochs": epochs,
            "seed": config.seed * 1000 + round_index,
            "steps_per_epoch": config.steps_per_epoch,
        }
        for name in ("learning_rate", "samples_per_volume", "patience"):
            if getattr(config, name) is not None:
                overrides[name] = getattr(config, name)
        return replace(self.train_options, **overrides)

    def _test_dice(self) -> dict[str, float]:
        return validate(
            self.network,
            [self.volumes[c] for c in self.test],
            preset=self.preset,
            labels=self.labels,
            overlap=self.train_options.overlap,
            bf16=self.train_options.bf16,
        )

    def _score(self, version: int) -> tuple[float, float]:
        """Score the unlabeled pool and embed the labeled volumes; returns (seconds, mean score)."""
        began = time.perf_counter()
        values = []
        for case in self.unlabeled():
            volume_began = time.perf_counter()
            uncertainty, embedding = mc_dropout_uncertainty(
                self.network,
                self.volumes[case]["image"],
                self.inferer,
                samples=self.config.mc_samples,
                dilation=self.config.dilation,
            )
            self.scores.put(case, version, uncertainty, seconds=time.perf_counter() - volume_began)
            self.scores.put_embedding(case, version, embedding.numpy())
            values.append(uncertainty.mutual_information)
        if self.config.strategy == "diverse":
            for case in self.labeled():
                embedding = embed_volume(self.network, self.volumes[case]["image"], self.inferer)
                self.scores.put_embedding(case, version, embedding.numpy())
        return time.perf_counter() - began, float(np.mean(values)) if values else 0.0

    def _pick(self, count: int) -> list[str]:
        foreground = self._truth_foreground() if self.config.strategy == "foreground_random" else {}
        strategy, request = _strategy(self.config.strategy, self.scores, foreground)
        picked: list[str] = []
        for index in range(count):
            if self.config.strategy in RANDOM_STRATEGIES:
                request = {"seed": f"{self.config.seed}-{len(self.labeled())}-{index}"}
            answer = strategy(request, self.datastore)
            if not answer:
                break
            picked.append(answer["id"])
            self._label([answer["id"]])  # a pick is leased: the next call must not see it again
        return picked

    def run(self, *, progress: bool = True) -> dict[str, Any]:
        """Run the loop and return the results (JSON-ready)."""
        if self.config.strategy == FULL_DATA:
            return self._run_full_data()
        config = self.config
        rng = random.Random(f"initial-{config.seed}")
        if config.initial > len(self.pool):
            raise ConfigError(f"initial={config.initial} exceeds the pool of {len(self.pool)} volumes")
        self._label(self._cold_start(rng))
        rule = StopRule()
        signals: list[RoundSignals] = []
        records: list[RoundRecord] = []
        picked: list[str] = []
        agreement: float | None = None
        audit: dict[str, Any] | None = None
        bar = tqdm(total=config.rounds + 1, desc=f"{config.strategy} seed {config.seed}", disable=not progress)
        for round_index in range(config.rounds + 1):
            val_dice, train_seconds = self._train(
                self.labeled(), options=self._round_options(epochs=config.epochs_per_round, round_index=round_index)
            )
            test = self._test_dice()
            record = RoundRecord(
                round=round_index,
                labeled=len(self.labeled()),
                labeled_fraction=len(self.labeled()) / len(self.pool),
                test_dice=test,
                test_mean_dice=mean_dice(test.values()),
                val_mean_dice=val_dice,
                picked=picked,
                picked_agreement=agreement,
                training_seconds=train_seconds,
            )
            if round_index < config.rounds and self.unlabeled():
                if config.strategy not in RANDOM_STRATEGIES:
                    record.scoring_seconds, record.pool_uncertainty = self._score(version=round_index + 1)
                count = min(config.per_round, len(self.unlabeled()))
                candidates = self._pick(count)
                # Agreement: what the expert sees, the current model's prediction vs the truth.
                agreement = float(np.mean([self._prediction_dice(c) for c in candidates])) if candidates else None
                picked = candidates
            signals.append(RoundSignals(record.labeled, record.picked_agreement, val_dice, record.pool_uncertainty))
            decision = rule.evaluate(signals, per_round=config.per_round)
            record.stop = decision.to_dict()
            if decision.stop and audit is None:
                audit = {"round": round_index, **self._audit()}
            records.append(record)
            bar.update(1)
            bar.set_postfix(labeled=record.labeled, test_dice=f"{record.test_mean_dice:.3f}")
        bar.close()
        if audit is None:
            audit = {"round": config.rounds, "stop_fired": False, **self._audit()}
        return self._results(records, audit)

    def _quality(self, case: str) -> tuple[float, float]:
        """(predicted quality, true Dice) of the auto-label of ``case`` (see :func:`quality_and_dice`)."""
        return quality_and_dice(
            self.network,
            self.volumes[case],
            inferer=self.inferer,
            samples=self.config.mc_samples,
            channels=self.channel_labels,
        )

    def _audit(self) -> dict[str, Any]:
        """Auto-label the unlabeled pool, triage it by predicted quality and audit it against the truth.

        The quality threshold is calibrated on the last training's validation volumes (never
        trained on; volumes picked after that training are not among them): the lowest quality
        above which at least ``triage_accuracy`` of them reach ``audit_threshold``.  Volumes
        below it go back to the labeling pool.  The random audit sample (the baseline without
        triage) reads the same auto-labels, so every volume is predicted once.
        """
        config = self.config
        rest = self.unlabeled()
        calibration = [self._quality(case) for case in self._val_ids]
        threshold = quality_threshold(
            calibration, dice_threshold=config.audit_threshold, accuracy=config.triage_accuracy
        )
        scored = {case: self._quality(case) for case in rest}
        sample = random.Random(f"audit-{config.seed}").sample(rest, min(config.audit_size, len(rest)))
        dice = [scored[case][1] for case in sample]
        accepted = sum(d >= config.audit_threshold for d in dice)
        triage = triage_outcome(
            scored, threshold=threshold, dice_threshold=config.audit_threshold, labeled=len(self.labeled())
        )
        curve = automation_accuracy_curve(
            list(scored.values()), dice_threshold=config.audit_threshold, labeled=len(self.labeled())
        )
        return {
            "auto_labeled": len(rest),
            "automation": len(rest) / len(self.pool),
            "audited": len(sample),
            "accepted": int(accepted),
            "auto_label_accuracy": accepted / len(sample) if sample else None,
            "audit_threshold": config.audit_threshold,
            "audit_mean_dice": float(np.mean(dice)) if dice else None,
            "quality_rank_correlation": rank_correlation(list(scored.values())),
            "quality_threshold": threshold,
            "calibration_volumes": len(calibration),
            "triage": triage,
            "automation_at_95": curve_automation_at(curve, 0.95),
            "automation_at_90": curve_automation_at(curve, 0.90),
            "automation_accuracy_curve": curve,
            "effort": expert_effort(
                labeled=len(self.labeled()) + triage["sent_back"] + triage["failed_audit"],
                audited=triage["auto_accepted"],
                pool=len(self.pool),
                label_minutes=config.label_minutes,
                audit_seconds=config.audit_seconds,
            ),
        }

    def _run_full_data(self) -> dict[str, Any]:
        self._label(self.pool)
        val_dice, seconds = self._train(self.pool, options=replace(self.train_options, seed=self.config.seed * 1000))
        test = self._test_dice()
        record = RoundRecord(
            round=0,
            labeled=len(self.pool),
            labeled_fraction=1.0,
            test_dice=test,
            test_mean_dice=mean_dice(test.values()),
            val_mean_dice=val_dice,
            training_seconds=seconds,
        )
        return self._results([record], None)

    def _results(self, records: list[RoundRecord], audit: dict[str, Any] | None) -> dict[str, Any]:
        stop_round = next((r.round for r in records if r.stop and r.stop["stop"]), None)
        final = records[-1]
        labeled_fraction = records[stop_round].labeled_fraction if stop_round is not None else final.labeled_fraction
        return {
            "config": asdict(self.config),
            "train_options": {k: getattr(v, "value", v) for k, v in asdict(self.train_options).items()},
            "pool": len(self.pool),
            "test": self.test,
            "labels": self.labels.to_dict(),
            "rounds": [asdict(r) for r in records],
            "audit": audit,
            "summary": {
                "final_test_mean_dice": final.test_mean_dice,
                "stop_round": stop_round,
                "fraction_labeled": labeled_fraction,
                "effort_saved": audit["effort"]["effort_saved"] if audit else None,
                "effort_fraction_labeled": audit["effort"]["labeled"] / len(self.pool) if audit else None,
                "automation_after_triage": audit["triage"]["automation"] if audit else None,
                "accuracy_after_triage": audit["triage"]["accuracy"] if audit else None,
            },
        }


def simulate(
    images: Mapping[str, Path],
    truths: Mapping[str, Path],
    *,
    labels: LabelMap,
    preset: Preset,
    spec: NetworkSpec,
    config: SimulationConfig,
    volumes: Mapping[str, dict[str, Any]] | None = None,
    train_options: TrainOptions | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Run one :class:`Simulation` in a scratch folder that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="activelabel-sim-") as work:
        simulation = Simulation(
            images,
            truths,
            labels=labels,
            preset=preset,
            spec=spec,
            config=config,
            work_dir=Path(work),
            volumes=volumes,
            train_options=train_options,
            device=device,
        )
        return simulation.run(progress=progress)


def preprocess(
    images: Mapping[str, Path], truths: Mapping[str, Path], *, preset: Preset, labels: LabelMap
) -> dict[str, dict[str, Any]]:
    """Load and pre-process every case once (image and truth on the preset grid)."""
    cases = sorted(images)
    items = [{"image": str(images[c]), "label": str(truths[c])} for c in cases]
    return dict(zip(cases, load_volumes(items, preset=preset, labels=labels), strict=True))


def load_cached(
    images: Mapping[str, Path], truths: Mapping[str, Path], *, preset: Preset, labels: LabelMap, cache: Path
) -> dict[str, dict[str, Any]]:
    """:func:`preprocess` with its result kept in ``cache`` (reused when inputs match)."""
    key = {"cases": sorted(images), "preset": repr(preset), "labels": labels.to_dict()}
    if cache.is_file():
        stored = torch.load(cache, weights_only=False)
        if stored.get("key") == key:
            return stored["volumes"]
    volumes = preprocess(images, truths, preset=preset, labels=labels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "volumes": volumes}, cache)
    return volumes
