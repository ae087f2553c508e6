"""Leases: a volume handed to one clinician is not handed to another until released or expired.

Next-sample selection runs under one lock (in the server process) so two concurrent
requests can never be given the same volume; a submission or a skip releases the lease, and
an expired lease simply stops counting.  Leases live in SQLite so every process sees them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from activelabel.store.sqlite_file import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    image_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    granted_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Lease:
    """One volume leased to one client until ``expires_at`` (seconds since the epoch)."""

    image_id: str
    client_id: str
    granted_at: float
    expires_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LeaseStore:
    """Active leases of a project.

    Args:
        path: database file.
        seconds: how long a lease lasts unless released.
    """

    def __init__(self, path: str | Path, *, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"lease seconds must be > 0, got {seconds}")
        # Leases expire anyway: not fsynced per commit, and a damaged file starts over empty.
        self.database = SqliteFile(
            path,
            schema=_SCHEMA,
            durable=False,
            rebuild="leases start empty: volumes handed out before may be handed out again",
        )
        self.seconds = seconds
        self._selection = threading.Lock()

    @contextmanager
    def selecting(self) -> Iterator[None]:
        """Serialize choose-then-lease so concurrent requests cannot pick the same volume."""
        with self._selection:
            yield

    def active(self, *, now: float | None = None) -> dict[str, Lease]:
        """Unexpired leases by image id."""
        now = time.time() if now is None else now
        with self.database.transaction() as db:
            rows = db.execute("SELECT * FROM leases WHERE expires_at > ?", (now,)).fetchall()
        return {row[0]: Lease(*row) for row in rows}

    def held_by_others(self, client_id: str, *, now: float | None = None) -> set[str]:
        """Image ids leased to anyone but ``client_id``."""
        return {image_id for image_id, lease in self.active(now=now).items() if lease.client_id != client_id}

    def grant(self, image_id: str, client_id: str, *, now: float | None = None) -> Lease:
        """Lease ``image_id`` to ``client_id`` (renewing it when the client already holds it)."""
        now = time.time() if now is None else now
        lease = Lease(image_id, client_id, now, now + self.seconds)
        with self.database.transaction() as db:
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)", tuple(asdict(lease).values()))
        return lease

    def release(self, image_id: str, *, client_id: str | None = None) -> bool:
        """End the lease of ``image_id`` (only if held by ``client_id`` when given)."""
        query, args = "DELETE FROM leases WHERE image_id = ?", [image_id]
        if client_id is not None:
            query += " AND client_id = ?"
            args.append(client_id)
        with self.database.transaction() as db:
            return db.execute(query, args).rowcount > 0


def unlabeled_check(datastore: Any) -> Callable[[str], bool]:
    """A test "is this image in ``datastore`` and unlabeled?" for ranking walks.

    Datastores that keep an index answer it in O(1) (``is_unlabeled``); for others the
    unlabeled images are listed once, when the test is made.
    """
    check = getattr(datastore, "is_unlabeled", None)
    if callable(check):
        return check
    return set(datastore.get_unlabeled_images()).__contains__


class LeasedDatastoreView:
    """A datastore as one client sees it: volumes leased to others are not unlabeled for it.

    Strategies only call datastore methods, so they respect leases without knowing them.
    Every other attribute is the wrapped datastore's.
    """

    def __init__(self, datastore: Any, *, excluded: set[str]) -> None:
        self._datastore = datastore
        self._excluded = excluded
        self._check: Callable[[str], bool] | None = None

    def get_unlabeled_images(self, *args: Any, **kwargs: Any) -> list[str]:
        return [i for i in self._datastore.get_unlabeled_images(*args, **kwargs) if i not in self._excluded]

    def is_unlabeled(self, image_id: str) -> bool:
        """Whether ``image_id`` is unlabeled and not leased to another client."""
        if self._check is None:
            self._check = unlabeled_check(self._datastore)
        return image_id not in self._excluded and self._check(image_id)

    def is_available(self, image_id: str) -> bool:
        """Whether ``image_id`` is not leased to another client (labeled or not)."""
        return image_id not in self._excluded

    def __getattr__(self, name: str) -> Any:
        return getattr(self._datastore, name)
