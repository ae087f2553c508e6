"""Per-image uncertainty scores, each tagged with the model version that produced it.

Scores live in a small SQLite database beside the project's other state rather than in
MONAI Label's datastore JSON: scoring runs in a separate process, and SQLite gives atomic,
concurrent writes and indexed "highest score" queries without rewriting a whole file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activelabel.ml.uncertainty import UncertaintyMetric, VolumeUncertainty
from activelabel.store.sqlite_file import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    image_id TEXT PRIMARY KEY,
    model_version INTEGER NOT NULL,
    entropy REAL NOT NULL,
    mutual_information REAL NOT NULL,
    variance REAL NOT NULL,
    foreground_fraction REAL NOT NULL,
    samples INTEGER NOT NULL,
    seconds REAL NOT NULL,
    scored_at REAL NOT NULL,
    agreement REAL
);
CREATE INDEX IF NOT EXISTS scores_by_entropy ON scores(entropy DESC, image_id);
CREATE INDEX IF NOT EXISTS scores_by_mutual_information ON scores(mutual_information DESC, image_id);
CREATE INDEX IF NOT EXISTS scores_by_variance ON scores(variance DESC, image_id);
CREATE TABLE IF NOT EXISTS embeddings (
    image_id TEXT PRIMARY KEY,
    model_version INTEGER NOT NULL,
    vector BLOB NOT NULL
);
"""

_COLUMNS = (
    "image_id, model_version, entropy, mutual_information, variance, foreground_fraction, samples, seconds, "
    "scored_at, agreement"
)

_TOP_BATCH = 64


@dataclass(frozen=True)
class ImageScore:
    """The stored uncertainty of one image."""

    image_id: str
    model_version: int
    uncertainty: VolumeUncertainty
    seconds: float
    scored_at: float

    def to_dict(self) -> dict[str, object]:
        return {
            "image": self.image_id,
            "model_version": self.model_version,
            **self.uncertainty.to_dict(),
            "seconds": self.seconds,
            "scored_at": self.scored_at,
        }


@dataclass(frozen=True)
class Freshness:
    """How many images have a score from the current model, an older one, or none."""

    fresh: int
    stale: int
    unscored: int


class ScoreStore:
    """SQLite-backed score table.

    Args:
        path: database file; its directory is created when missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.database = SqliteFile(
            path, schema=_SCHEMA, rebuild="scores start empty: the next scoring run scores every unlabeled volume again"
        )
        self.path = self.database.path
        with self.database.transaction() as db:  # databases made before the agreement column
            columns = {row[1] for row in db.execute("PRAGMA table_info(scores)")}
            if "agreement" not in columns:
                db.execute("ALTER TABLE scores ADD COLUMN agreement REAL")

    def put(self, image_id: str, model_version: int, uncertainty: VolumeUncertainty, *, seconds: float) -> None:
        """Store (or replace) the score of one image."""
        self.put_many([(image_id, model_version, uncertainty, seconds)])

    def put_many(self, scores: Iterable[tuple[str, int, VolumeUncertainty, float]]) -> None:
        """Store (or replace) ``(image id, model version, uncertainty, seconds)`` rows in one transaction."""
        now = time.time()
        rows = [
            (
                image_id,
                version,
                u.entropy,
                u.mutual_information,
                u.variance,
                u.foreground_fraction,
                u.samples,
                s,
                now,
                u.agreement,
            )
            for image_id, version, u, s in scores
        ]
        with self.database.transaction() as db:
            db.executemany(f"INSERT OR REPLACE INTO scores ({_COLUMNS}) VALUES ({', '.join('?' * 10)})", rows)

    def put_embedding(self, image_id: str, model_version: int, vector: np.ndarray) -> None:
        """Store (or replace) the bottleneck embedding of one image."""
        blob = np.asarray(vector, dtype=np.float32).tobytes()
        with self.database.transaction() as db:
            db.execute("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", (image_id, model_version, blob))

    def embeddings(self, model_version: int) -> dict[str, np.ndarray]:
        """Embeddings computed by ``model_version`` (others live in another feature space)."""
        with self.database.transaction() as db:
            rows = db.execute(
                "SELECT image_id, vector FROM embeddings WHERE model_version = ?", (model_version,)
            ).fetchall()
        return {image_id: np.frombuffer(blob, dtype=np.float32) for image_id, blob in rows}

    def get(self, image_id: str) -> ImageScore | None:
        with self.database.transaction() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM scores WHERE image_id = ?", (image_id,)).fetchone()
        return _to_score(row) if row else None

    def all(self) -> dict[str, ImageScore]:
        with self.database.transaction() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM scores").fetchall()
        return {row[0]: _to_score(row) for row in rows}

    def stale(self, image_ids: Iterable[str], model_version: int) -> list[str]:
        """The ids among ``image_ids`` without a score from ``model_version``."""
        current = {image_id for image_id, score in self.all().items() if score.model_version == model_version}
        return [image_id for image_id in image_ids if image_id not in current]

    def freshness(self, image_ids: Iterable[str], model_version: int) -> Freshness:
        scores = self.all()
        fresh = stale = unscored = 0
        for image_id in image_ids:
            score = scores.get(image_id)
            if score is None:
                unscored += 1
            elif score.model_version == model_version:
                fresh += 1
            else:
                stale += 1
        return Freshness(fresh=fresh, stale=stale, unscored=unscored)

    def top(self, metric: UncertaintyMetric | str, *, accept: Callable[[str], bool]) -> ImageScore | None:
        """The highest-scoring image that ``accept`` admits (ties broken by image id), or ``None``.

        Walks the metric's index from the top and stops at the first admitted image, so the
        cost depends on how many top images are refused (leased or labeled ones), not on how
        many images are scored.
        """
        name = UncertaintyMetric(metric).value
        with self.database.transaction() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM scores ORDER BY {name} DESC, image_id ASC")
            while batch := rows.fetchmany(_TOP_BATCH):
                for row in batch:
                    if accept(row[0]):
                        return _to_score(row)
        return None

    def count(self) -> int:
        """How many images have a stored score."""
        with self.database.transaction() as db:
            return int(db.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def forget(self, image_id: str) -> None:
        """Drop the score of ``image_id`` (labeled: it is no longer a candidate); its embedding stays."""
        with self.database.transaction() as db:
            db.execute("DELETE FROM scores WHERE image_id = ?", (image_id,))

    def ranked(self, image_ids: Iterable[str], metric: UncertaintyMetric | str) -> list[ImageScore]:
        """Scores of ``image_ids`` in descending order of ``metric`` (unscored ids omitted).

        Ties are broken by image id so the order is deterministic.
        """
        name = UncertaintyMetric(metric).value
        wanted = set(image_ids)
        scores = [score for image_id, score in self.all().items() if image_id in wanted]
        scores.sort(key=lambda s: (-s.uncertainty.score(name), s.image_id))
        return scores


def _to_score(row: tuple) -> ImageScore:
    image_id, version, entropy, mi, variance, fraction, samples, seconds, scored_at, agreement = row
    return ImageScore(
        image_id=image_id,
        model_version=int(version),
        uncertainty=VolumeUncertainty(
            entropy=entropy,
            mutual_information=mi,
            variance=variance,
            foreground_fraction=fraction,
            samples=int(samples),
            agreement=None if agreement is None else float(agreement),
        ),
        seconds=seconds,
        scored_at=scored_at,
    )
