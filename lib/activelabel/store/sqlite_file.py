"""A small SQLite database file shared by processes (server, task subprocesses).

A file found corrupt or truncated when it is opened is either rebuilt (state derivable from
elsewhere: the datastore index, leases, scores) or refused with one line that names it and
says how to restore it (history nothing else holds: label versions, submissions, audits).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from activelabel.errors import ActiveLabelError

logger = logging.getLogger(__name__)

_CORRUPT_CODES = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_FULL_CODES = frozenset({"SQLITE_FULL"})
_SIDE_FILES = ("-wal", "-shm")
_HEADER = b"SQLite format 3\x00"


class _Damaged(Exception):
    """A damage SQLite itself does not raise on: an emptied file, a failed integrity check."""


class CorruptDatabaseError(ActiveLabelError, RuntimeError):
    """A database file that is not a whole SQLite database and cannot be rebuilt."""


def is_corruption(error: sqlite3.DatabaseError) -> bool:
    """Whether ``error`` says the file is damaged (not a database, malformed), not busy or full."""
    name = getattr(error, "sqlite_errorname", None)
    if name is not None:
        return name in _CORRUPT_CODES
    text = str(error)
    return "malformed" in text or "not a database" in text


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is SQLite's "database or disk is full"."""
    return isinstance(error, sqlite3.DatabaseError) and getattr(error, "sqlite_errorname", None) in _FULL_CODES


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
        rebuild: how the content comes back when the file is found corrupt: such a file is
            moved aside (``<name>.corrupt-<time>``), an empty one made, and this logged.
            ``None`` (history nothing else holds): a corrupt file raises
            :class:`CorruptDatabaseError` instead.

    Raises:
        CorruptDatabaseError: the file is corrupt or truncated and ``rebuild`` is ``None``.
    """

    def __init__(self, path: str | Path, *, schema: str, durable: bool = True, rebuild: str | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        try:
            self._create(schema)
        except (sqlite3.DatabaseError, _Damaged) as error:
            if isinstance(error, sqlite3.DatabaseError) and not is_corruption(error):
                raise
            self._close_thread_connection()
            if rebuild is None:
                raise CorruptDatabaseError(
                    f"{self.path} is not a whole SQLite database, got '{error!s}': stop the server, restore the file"
                    f" from a backup and delete {self.path.name}-wal and {self.path.name}-shm beside it"
                ) from None
            aside = self._move_aside()
            logger.warning("%s was corrupt (%s): moved to %s; %s", self.path, error, aside, rebuild)
            self._create(schema)

    def _create(self, schema: str) -> None:
        """Run ``schema`` and check the file: a truncated or damaged one raises SQLITE_CORRUPT/NOTADB."""
        if self.path.is_file():  # checked before SQLite opens it: recovery would write into a damaged file
            with self.path.open("rb") as handle:
                header = handle.read(len(_HEADER))
            wal = Path(f"{self.path}-wal")
            if not header and (not wal.is_file() or wal.stat().st_size == 0):
                # An opened database is never empty (WAL mode writes its header): cut to 0 bytes.
                raise _Damaged("an empty file (truncated)")
            if header and header != _HEADER:
                raise _Damaged("a file without the SQLite header")
        with self.transaction() as db:
            db.executescript(schema)
            (result,) = db.execute("PRAGMA quick_check(1)").fetchone()
        if result != "ok":
            raise _Damaged(f"a failed integrity check ({result})")

    def _close_thread_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local = threading.local()

    def _move_aside(self) -> Path:
        """Rename the damaged file (kept for inspection) and drop its log files."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(self.path, aside)
        for side in _SIDE_FILES:
            Path(f"{self.path}{side}").unlink(missing_ok=True)
        return aside

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
