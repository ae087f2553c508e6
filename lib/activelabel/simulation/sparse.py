"""The oracle loop with slices as the unit of work: the expert draws only the slices asked for.

Each round the strategy picks ``per_round`` volumes that still have unannotated slices and
``slices_per_volume`` slices of each (axial: the last axis of the pre-processed RAS grid);
the truth fills in those slices and every other voxel stays
:data:`~activelabel.labelmap.NOT_ANNOTATED`, so training learns from the drawn slices only.
Strategies: ``random`` (random volumes, random slices spread apart) and the uncertainty
metrics (the most uncertain volumes by the metric over their foreground, and in each the
slices of highest mean voxel uncertainty, spread apart, as the server's ``uncertain_slices``
does).  Rounds record the annotated slices and their share of the pool's slices.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from activelabel.errors import ConfigError
from activelabel.labelmap import NOT_ANNOTATED
from activelabel.ml.inference import mc_dropout_samples
from activelabel.ml.metrics import mean_dice
from activelabel.ml.uncertainty import UncertaintyMetric, aggregate, foreground_mask
from activelabel.simulation.loop import RoundRecord, Simulation
from activelabel.strategies.uncertain_slices import spread_slices

SLICE_AXIS = -1
"""Axial on the pre-processed RAS grid: the S axis, the last one."""

SLICE_STRATEGIES = ("random", "entropy", "mutual_information", "variance")


class SparseSimulation(Simulation):
    """:class:`Simulation` where each pick is a volume's few most informative slices."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.strategy not in SLICE_STRATEGIES:
            raise ConfigError(
                f"strategy {self.config.strategy!r} does not pick slices; choose one of: {', '.join(SLICE_STRATEGIES)}"
            )
        self.annotated: dict[str, set[int]] = {}
        self.depth = {case: int(self.volumes[case]["label"].shape[SLICE_AXIS]) for case in self.pool}

    def _training_volume(self, case: str) -> dict[str, Any]:
        volume = self.volumes[case]
        label = torch.as_tensor(volume["label"])
        partial = torch.full_like(label, NOT_ANNOTATED)
        chosen = sorted(self.annotated[case])
        partial[..., chosen] = label[..., chosen]
        return {"image": volume["image"], "label": partial}

    def _open(self) -> list[str]:
        """Pool volumes with at least one slice nobody annotated."""
        return [case for case in self.pool if len(self.annotated.get(case, ())) < self.depth[case]]

    def _annotate(self, case: str, per_slice: list[float]) -> None:
        count = self.config.slices_per_volume
        gap = max(1, self.depth[case] // (2 * count))
        done = self.annotated.setdefault(case, set())
        done.update(spread_slices(per_slice, count=count, exclude=done, min_gap=gap))

    def _pick_slices(self, rng: random.Random, *, uncertain: bool) -> tuple[list[str], float]:
        """Annotate ``per_round`` volumes' slices; returns the volumes and the scoring seconds."""
        candidates = self._open()
        began = time.perf_counter()
        if not uncertain:
            picked = rng.sample(candidates, min(self.config.per_round, len(candidates)))
            for case in picked:
                self._annotate(case, [rng.random() for _ in range(self.depth[case])])
            return picked, 0.0
        metric = UncertaintyMetric(self.config.strategy)
        ranked: list[tuple[float, str, list[float]]] = []
        for case in candidates:
            with torch.inference_mode():
                accumulator, _ = mc_dropout_samples(
                    self.network, self.volumes[case]["image"], self.inferer, samples=self.config.mc_samples
                )
            voxels = accumulator.voxel_maps()[metric]
            mask = foreground_mask(accumulator.mean_probs(), dilation=self.config.dilation)
            per_slice = voxels.mean(dim=tuple(range(voxels.ndim - 1))).tolist()
            ranked.append((aggregate(voxels, mask), case, per_slice))
        ranked.sort(key=lambda item: (-item[0], item[1]))
        picked = []
        for _, case, per_slice in ranked[: self.config.per_round]:
            self._annotate(case, per_slice)
            picked.append(case)
        return picked, time.perf_counter() - began

    def run(self, *, progress: bool = True) -> dict[str, Any]:
        config = self.config
        rng = random.Random(f"initial-{config.seed}")
        if config.initial > len(self.pool):
            raise ConfigError(f"initial={config.initial} exceeds the pool of {len(self.pool)} volumes")
        for case in rng.sample(self.pool, config.initial):
            self._annotate(case, [rng.random() for _ in range(self.depth[case])])
        total = sum(self.depth.values())
        records: list[dict[str, Any]] = []
        picked: list[str] = []
        bar = tqdm(total=config.rounds + 1, desc=f"{config.strategy} slices seed {config.seed}", disable=not progress)
        for round_index in range(config.rounds + 1):
            options = self._round_options(epochs=config.epochs_per_round, round_index=round_index)
            val_dice, train_seconds = self._train(sorted(self.annotated), options=options)
            test = self._test_dice()
            slices = sum(len(s) for s in self.annotated.values())
            record = RoundRecord(
                round=round_index,
                labeled=len(self.annotated),
                labeled_fraction=len(self.annotated) / len(self.pool),
                test_dice=test,
                test_mean_dice=mean_dice(test.values()),
                val_mean_dice=val_dice,
                picked=picked,
                training_seconds=train_seconds,
            )
            scoring = 0.0
            if round_index < config.rounds and self._open():
                picked, scoring = self._pick_slices(rng, uncertain=config.strategy != "random")
            records.append(
                {
                    **record.__dict__,
                    "scoring_seconds": scoring,
                    "annotated_slices": slices,
                    "annotated_slice_fraction": slices / total,
                }
            )
            bar.update(1)
            bar.set_postfix(slices=slices, test_dice=f"{record.test_mean_dice:.3f}")
        bar.close()
        return {
            "config": asdict(config),
            "pool": self.pool,
            "test": self.test,
            "labels": self.labels.to_dict(),
            "pool_slices": total,
            "rounds": records,
            "annotated": {case: sorted(s) for case, s in sorted(self.annotated.items())},
            "summary": {
                "final_test_mean_dice": records[-1]["test_mean_dice"],
                "annotated_slice_fraction": records[-1]["annotated_slice_fraction"],
            },
        }


def simulate_slices(*args: Any, progress: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Run one :class:`SparseSimulation` (arguments as :func:`activelabel.simulation.loop.simulate`)."""
    with tempfile.TemporaryDirectory(prefix="activelabel-sparse-") as work:
        return SparseSimulation(*args, work_dir=Path(work), **kwargs).run(progress=progress)
