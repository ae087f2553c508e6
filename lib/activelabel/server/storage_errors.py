"""A full disk answers 507 Insufficient Storage with the reason, never a 500.

Every write of the server (label versions, live labels, SQLite state) goes through temporary
files or transactions, so a write cut short by a full disk or an exhausted quota leaves the
previous state whole; the client is told the label was not stored and why, and may send it
again once there is space.  Any other ``OSError`` or SQLite error stays a 500: it is a bug or
a fault this module does not know how to explain.
"""

from __future__ import annotations

import errno
import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from activelabel.store.sqlite_file import is_disk_full

logger = logging.getLogger(__name__)

INSUFFICIENT_STORAGE = 507
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_exhausted(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, is a full disk or an exhausted quota."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if is_disk_full(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename:
        return f"{error.strerror} writing {error.filename}"
    return str(error)


async def _insufficient_storage(request: Request, error: Exception) -> JSONResponse:
    if not storage_exhausted(error):
        raise error
    reason = _reason(error)
    logger.error("%s %s: not stored, the disk is full (%s)", request.method, request.url.path, reason)
    return JSONResponse(
        {
            "detail": f"not stored: the server's disk is full or over quota, got '{reason}'; "
            "nothing was changed, send it again once space is freed"
        },
        status_code=INSUFFICIENT_STORAGE,
    )


def install_storage_errors(app: FastAPI) -> None:
    """Answer ``ENOSPC``/``EDQUOT`` and SQLite's "database or disk is full" with 507 and the reason."""
    app.add_exception_handler(OSError, _insufficient_storage)
    app.add_exception_handler(sqlite3.DatabaseError, _insufficient_storage)
