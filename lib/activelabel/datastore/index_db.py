"""SQLite persistence of a folder datastore's entries, one row per image.

MONAI Label's local datastore keeps every image and label entry in one JSON file and
rewrites all of it on each change: with 100k images a label save or a served sample writes
tens of megabytes.  Here each entry is one row (its JSON body), a change writes only the
rows it touched, and every write carries a sequence number so another process (a task
subprocess) catches up by reading only the rows written since it last looked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from activelabel.store.sqlite_file import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    image_id TEXT PRIMARY KEY,
    body TEXT,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_seq ON entries(seq);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_SEQ = "seq"


@dataclass(frozen=True)
class Snapshot:
    """Rows read from the database.

    Attributes:
        entries: image id -> JSON body; ``None`` marks an image removed since the reader looked.
        meta: datastore-wide values (name, description, folders).
        seq: the newest sequence number included; pass it to :meth:`DatastoreDatabase.changes`.
    """

    entries: dict[str, str | None]
    meta: dict[str, str]
    seq: int


class DatastoreDatabase:
    """Entries of one datastore in a SQLite file.

    Removed images keep a row with a ``NULL`` body (a tombstone), so readers that catch up
    incrementally learn about removals too.

    Args:
        path: database file; created when missing.
    """

    def __init__(self, path: str | Path) -> None:
        # Not fsynced per commit: the image and label files are the truth, reconciled at every start.
        self.database = SqliteFile(
            path, schema=_SCHEMA, durable=False, rebuild="the datastore index is rebuilt from the image and label files"
        )
        self.path = self.database.path

    def is_empty(self) -> bool:
        """Whether nothing was ever written (a new datastore, or one still to import)."""
        with self.database.transaction() as db:
            return db.execute("SELECT 1 FROM meta WHERE key = ?", (_SEQ,)).fetchone() is None

    def load(self) -> Snapshot:
        """Every live entry and the metadata."""
        with self.database.transaction() as db:
            rows = db.execute("SELECT image_id, body FROM entries WHERE body IS NOT NULL").fetchall()
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        return Snapshot(entries=dict(rows), meta=meta, seq=int(meta.pop(_SEQ, 0)))

    def changes(self, since: int) -> Snapshot:
        """Entries written after sequence number ``since`` (removals as ``None``)."""
        with self.database.transaction() as db:
            rows = db.execute("SELECT image_id, body FROM entries WHERE seq > ?", (since,)).fetchall()
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        return Snapshot(entries=dict(rows), meta=meta, seq=int(meta.pop(_SEQ, since)))

    def write(self, entries: Mapping[str, str | None], *, meta: Mapping[str, str] | None = None) -> int:
        """Store ``entries`` (``None`` removes) and ``meta`` in one transaction; returns its sequence number."""
        with self.database.transaction() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT value FROM meta WHERE key = ?", (_SEQ,)).fetchone()
            seq = int(row[0]) + 1 if row else 1
            db.executemany(
                "INSERT OR REPLACE INTO entries (image_id, body, seq) VALUES (?, ?, ?)",
                [(image_id, body, seq) for image_id, body in entries.items()],
            )
            values = {**(meta or {}), _SEQ: str(seq)}
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(values.items()))
        return seq
