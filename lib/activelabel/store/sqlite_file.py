"""A small SQLite database file shared by processes (server, task subprocesses)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SqliteFile:
    """Opens short transactions on one database file created with ``schema``.

    Write-ahead logging lets the server read while a scoring subprocess writes; each
    :meth:`transaction` commits on success and rolls back on error.  Each thread keeps one
    open connection (per process: a forked child opens its own), because opening and
    closing a connection per transaction costs more than the transaction itself: the last
    connection to close checkpoints the log and deletes it.

    Args:
        path: database file; its directory is created when missing.
        schema: ``CREATE ... IF NOT EXISTS`` statements run once at construction.
        durable: each commit reaches the disk before returning (``synchronous=FULL``).  Without
            it a commit survives a crash of the process but not of the machine
            (``synchronous=NORMAL``, no fsync per commit): for state that can be rebuilt
            from files or that expires anyway, such as the datastore index or leases.
    """

    def __init__(self, path: str | Path, *, schema: str, durable: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        with self.transaction() as db:
            db.executescript(schema)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        return db

    def _thread_connection(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.connection, local.pid, local.depth = self._open(), os.getpid(), 0
        return local.connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._thread_connection()
        local = self._local
        if local.depth:  # nested in this thread's open transaction: keep the two apart
            nested = self._open()
            try:
                with nested:
                    yield nested
            finally:
                nested.close()
            return
        local.depth += 1
        try:
            with db:
                yield db
        finally:
            local.depth -= 1
