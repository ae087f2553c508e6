"""The log of submitted labels and how far each departed from the model's pre-segmentation.

Agreement (mean Dice of pre-segmentation vs submission) is the signal a deployment has of
how much the experts still correct; the stop rule reads it from here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from activelabel.labelmap import LabelMap
from activelabel.ml.metrics import agreement
from activelabel.store.sqlite_file import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id TEXT NOT NULL,
    agreement REAL,
    model_version INTEGER,
    val_mean_dice REAL,
    author TEXT,
    seconds_spent REAL,
    submitted_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Submission:
    """One submitted label."""

    image_id: str
    agreement: float | None
    model_version: int | None
    val_mean_dice: float | None
    author: str | None
    seconds_spent: float | None
    submitted_at: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class SubmissionLog:
    """Append-only SQLite log of submissions, oldest first."""

    def __init__(self, path: str | Path) -> None:
        self.database = SqliteFile(path, schema=_SCHEMA)
        self.path = self.database.path

    def add(
        self,
        image_id: str,
        *,
        agreement: float | None,
        model_version: int | None,
        val_mean_dice: float | None,
        author: str | None = None,
        seconds_spent: float | None = None,
    ) -> Submission:
        entry = Submission(image_id, agreement, model_version, val_mean_dice, author, seconds_spent, time.time())
        with self.database.transaction() as db:
            db.execute(
                "INSERT INTO submissions (image_id, agreement, model_version, val_mean_dice, author, seconds_spent,"
                " submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (image_id, agreement, model_version, val_mean_dice, author, seconds_spent, entry.submitted_at),
            )
        return entry

    def all(self) -> list[Submission]:
        with self.database.transaction() as db:
            rows = db.execute(
                "SELECT image_id, agreement, model_version, val_mean_dice, author, seconds_spent, submitted_at"
                " FROM submissions ORDER BY id"
            ).fetchall()
        return [Submission(*row) for row in rows]


def label_agreement(pre_segmentation: str | Path, submitted: str | Path, labels: LabelMap) -> float | None:
    """Mean Dice over the labels between two label files on the same grid (None if grids differ)."""
    first = np.asanyarray(nib.load(str(pre_segmentation)).dataobj)
    second = np.asanyarray(nib.load(str(submitted)).dataobj)
    if first.shape != second.shape:
        return None
    return agreement(np.rint(first).astype(np.int64), np.rint(second).astype(np.int64), labels.to_dict())
