"""Every label ever stored for a volume, with who or what made it: the label version store.

Each version is a copy of the label file under ``<root>/<image id>/v<n><ext>`` plus one row
in a SQLite index (number, tag, source, author, reviewer, time, time spent, model version,
SHA-256 and, for a consensus, its details).  A version's file is written atomically before
its row is committed, and the datastore writes a version before it replaces the live label,
so a crash at any point leaves every indexed version readable and the live label whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from activelabel.fsutil import atomic_write
from activelabel.store.identifiers import check_name
from activelabel.store.sqlite_file import SqliteFile

ORIGINAL_TAG = "original"
"""MONAI Label's tag of the model's pre-segmentation (infer with ``save_label``)."""
FINAL_TAG = "final"
"""MONAI Label's tag of the accepted label, the one training reads."""
AUTO_TAG = "auto"
"""The tag of model auto-labels (``activelabel autolabel``), awaiting audit."""


class LabelSource(str, Enum):
    """Who made a label version."""

    HUMAN = "human"
    MODEL = "model"
    AUTO = "auto"
    CONSENSUS = "consensus"
    IMPORTED = "imported"
    """A label found in the datastore that the server did not record (shipped with the studies)."""


def source_of_upload(tag: str) -> LabelSource:
    """The source of a label uploaded under ``tag``: model tags are the model's, the rest human."""
    if tag == ORIGINAL_TAG:
        return LabelSource.MODEL
    if tag == AUTO_TAG:
        return LabelSource.AUTO
    return LabelSource.HUMAN


@dataclass(frozen=True)
class Provenance:
    """Who made a label and how: recorded with its version.

    Attributes:
        source: human, model, auto, consensus or imported.
        author: the reader who drew it (human labels).
        reviewer: who accepted a model-made label as final (audits).
        seconds_spent: time the author reports spending on it.
        model_version: the model that made it (model-made labels).
        details: JSON-able extra facts (a consensus: its readers, inputs and inter-reader Dice).
    """

    source: LabelSource
    author: str | None = None
    reviewer: str | None = None
    seconds_spent: float | None = None
    model_version: int | None = None
    details: dict[str, Any] | None = field(default=None)


@dataclass(frozen=True)
class LabelVersion:
    """One stored label of one volume; ``version`` counts from 1 per volume."""

    image_id: str
    version: int
    tag: str
    source: LabelSource
    author: str | None
    reviewer: str | None
    created_at: float
    seconds_spent: float | None
    model_version: int | None
    sha256: str
    file: str
    details: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; the file's place on the server stays private."""
        data = asdict(self)
        data["source"] = self.source.value
        del data["file"]
        return data


_SCHEMA = """
CREATE TABLE IF NOT EXISTS label_versions (
    image_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    tag TEXT NOT NULL,
    source TEXT NOT NULL,
    author TEXT,
    reviewer TEXT,
    created_at REAL NOT NULL,
    seconds_spent REAL,
    model_version INTEGER,
    sha256 TEXT NOT NULL,
    file TEXT NOT NULL,
    details TEXT,
    PRIMARY KEY (image_id, version)
);
CREATE INDEX IF NOT EXISTS label_versions_by_author ON label_versions (author, tag, source);
"""

_COLUMNS = tuple(f.name for f in fields(LabelVersion))
"""The table's columns: the fields of :class:`LabelVersion`, by name."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _row(row: tuple[Any, ...]) -> LabelVersion:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["source"] = LabelSource(values["source"])
    values["details"] = json.loads(values["details"]) if values["details"] else None
    return LabelVersion(**values)


class LabelVersionStore:
    """Label versions of a project: files under ``root`` and their index in ``index``.

    Args:
        root: folder of the version files (one subfolder per image id).
        index: SQLite database file of the index.
    """

    def __init__(self, root: str | Path, *, index: str | Path) -> None:
        self.root = Path(root)
        self.database = SqliteFile(index, schema=_SCHEMA)

    def add(
        self,
        image_id: str,
        source_file: str | Path,
        *,
        tag: str,
        ext: str,
        provenance: Provenance,
        created_at: float | None = None,
    ) -> LabelVersion:
        """Copy ``source_file`` in as the next version of ``image_id`` and index it.

        The number is taken and the row committed in one exclusive transaction, so concurrent
        writers (server, batch-infer subprocess) never share a number; the file is complete
        on disk before the row that names it exists.
        """
        check_name(image_id, what="image id")
        with self.database.transaction() as db:
            db.execute("BEGIN IMMEDIATE")
            (latest,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM label_versions WHERE image_id = ?", (image_id,)
            ).fetchone()
            number = int(latest) + 1
            relative = f"{image_id}/v{number}{ext}"
            destination = self.root / relative
            atomic_write(destination, lambda tmp: shutil.copyfile(source_file, tmp))
            version = LabelVersion(
                image_id=image_id,
                version=number,
                tag=tag,
                source=provenance.source,
                author=provenance.author,
                reviewer=provenance.reviewer,
                created_at=time.time() if created_at is None else created_at,
                seconds_spent=provenance.seconds_spent,
                model_version=provenance.model_version,
                sha256=file_sha256(destination),
                file=relative,
                details=provenance.details,
            )
            row = asdict(version)
            row["source"] = version.source.value
            row["details"] = json.dumps(version.details, sort_keys=True) if version.details is not None else None
            names = ", ".join(_COLUMNS)
            db.execute(f"INSERT INTO label_versions ({names}) VALUES ({', '.join(':' + c for c in _COLUMNS)})", row)
        return version

    def keep_unrecorded(self, image_id: str, live_file: str | Path, *, tag: str, ext: str) -> LabelVersion | None:
        """Record the live label of ``tag`` as an imported version unless it is its tag's latest version.

        Called before a live label is replaced, so a label the server never stored (one shipped
        with the studies, or edited on disk) is kept too.
        """
        latest = self.latest(image_id, tag=tag)
        if latest is not None and latest.sha256 == file_sha256(live_file):
            return None
        return self.add(
            image_id,
            live_file,
            tag=tag,
            ext=ext,
            provenance=Provenance(source=LabelSource.IMPORTED),
            created_at=os.path.getmtime(live_file),
        )

    def path(self, version: LabelVersion) -> Path:
        """Where the version's file lies."""
        return self.root / version.file

    def versions(self, image_id: str) -> list[LabelVersion]:
        """All versions of ``image_id``, oldest first."""
        return self._select("WHERE image_id = ? ORDER BY version", (image_id,))

    def get(self, image_id: str, version: int) -> LabelVersion | None:
        """Version ``version`` of ``image_id``, or ``None``."""
        found = self._select("WHERE image_id = ? AND version = ?", (image_id, version))
        return found[0] if found else None

    def latest(self, image_id: str, *, tag: str, source: LabelSource | None = None) -> LabelVersion | None:
        """The newest version of ``image_id`` under ``tag`` (and from ``source`` when given)."""
        query, args = "WHERE image_id = ? AND tag = ?", [image_id, tag]
        if source is not None:
            query += " AND source = ?"
            args.append(source.value)
        found = self._select(query + " ORDER BY version DESC LIMIT 1", tuple(args))
        return found[0] if found else None

    def readings(self, image_id: str, *, tag: str = FINAL_TAG) -> dict[str, LabelVersion]:
        """Each reader's latest human label of ``image_id`` under ``tag``, by author."""
        rows = self._select(
            "WHERE image_id = ? AND tag = ? AND source = ? AND author IS NOT NULL ORDER BY version",
            (image_id, tag, LabelSource.HUMAN.value),
        )
        return {row.author: row for row in rows if row.author is not None}

    def reader_counts(self, *, tag: str = FINAL_TAG) -> dict[str, int]:
        """Distinct human authors per image id under ``tag``."""
        with self.database.transaction() as db:
            rows = db.execute(
                "SELECT image_id, COUNT(DISTINCT author) FROM label_versions"
                " WHERE tag = ? AND source = ? AND author IS NOT NULL GROUP BY image_id",
                (tag, LabelSource.HUMAN.value),
            ).fetchall()
        return {image_id: int(count) for image_id, count in rows}

    def images_read_by(self, author: str, *, tag: str = FINAL_TAG) -> set[str]:
        """Image ids for which ``author`` submitted a human label under ``tag``."""
        with self.database.transaction() as db:
            rows = db.execute(
                "SELECT DISTINCT image_id FROM label_versions WHERE author = ? AND tag = ? AND source = ?",
                (author, tag, LabelSource.HUMAN.value),
            ).fetchall()
        return {row[0] for row in rows}

    def consensus_versions(self) -> list[LabelVersion]:
        """The latest consensus version of every image that has one."""
        rows = self._select("WHERE source = ? ORDER BY version", (LabelSource.CONSENSUS.value,))
        return list({row.image_id: row for row in rows}.values())

    def _select(self, where: str, args: tuple[Any, ...]) -> list[LabelVersion]:
        with self.database.transaction() as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM label_versions {where}", args).fetchall()
        return [_row(row) for row in rows]
