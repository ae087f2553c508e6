"""One training (and one scoring) task at a time, also while the first is still queued.

MONAI Label refuses a second task only once the first one's process has started; a request
arriving between queueing and start is queued behind it instead.  This guard answers such
requests with 429, unless the client asks to queue (``enqueue=true``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from monailabel.utils.async_tasks.utils import processes, tasks

PENDING_STATES = frozenset({"SUBMITTED", "RUNNING"})
"""MONAI Label task states of a task that has not finished."""

GUARDED = {"train": "training", "scoring": "scoring"}
"""MONAI Label task kinds (first path segment) and how messages name them."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def task_pending(method: str) -> bool:
    """Whether a ``method`` task (``train``, ``scoring``, ...) is queued or running."""
    return bool(processes(method)) or any(task.get("status") in PENDING_STATES for task in tasks(method))


def guarded_kind(method: str, path: str, query: bytes) -> str | None:
    """The task kind a request would start, when the guard applies to it."""
    parts = [part for part in path.split("/") if part]
    if method != "POST" or not parts or parts[0] not in GUARDED:
        return None
    enqueue = parse_qs(query.decode("latin-1")).get("enqueue", ["false"])[-1].lower()
    return None if enqueue in ("1", "true", "yes") else parts[0]


class OneTaskAtATime:
    """ASGI middleware: a start request for a task kind that is pending gets HTTP 429.

    Start requests of a guarded kind are handled one after another, so the check and the
    queueing of a task cannot interleave between two requests.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self._locks = {kind: asyncio.Lock() for kind in GUARDED}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = guarded_kind(scope.get("method", ""), scope.get("path", ""), scope.get("query_string", b""))
        if scope["type"] != "http" or kind is None:
            await self.app(scope, receive, send)
            return
        async with self._locks[kind]:
            if task_pending(kind):
                await _refuse(send, f"{GUARDED[kind]} is already running or queued; wait for it or stop it first")
                return
            await self.app(scope, receive, send)


async def _refuse(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
