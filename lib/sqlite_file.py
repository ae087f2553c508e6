"""A small SQLite database file shared by processes (server, task subprocesses)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SqliteFile:
    """Opens short transactions on one database file created with ``schema``.

    Write-ahead logging lets the server read while a scoring subprocess writes; each
    :meth:`transaction` commits on success and rolls back on error.

    Args:
        path: database file; its directory is created when missing.
        schema: ``CREATE ... IF NOT EXISTS`` statements run once at construction.
    """

    def __init__(self, path: str | Path, *, schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.transaction() as db:
            db.executescript(schema)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                yield db
        finally:
            db.close()
