"""Slow calls off the UI thread: a worker thread runs them, the UI thread collects the results.

Qt widgets may only be touched from the thread that owns them, so results are not handed
over from the worker: the widget calls :meth:`BackgroundCalls.poll` from a timer on its own
thread, which runs the callbacks there.  Plain Python, so it is tested without Qt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import ActiveLabelError

T = TypeVar("T")

logger = logging.getLogger(__name__)


@dataclass
class _Pending(Generic[T]):
    future: Future[T]
    on_done: Callable[[T], None]
    on_error: Callable[[ActiveLabelError], None]


class BackgroundCalls:
    """Runs calls one after another on a worker thread; :meth:`poll` delivers their outcomes.

    Outcomes are delivered in submission order.  Any exception, from the call or from its
    ``on_done`` callback, reaches ``on_error`` as an :class:`ActiveLabelError` (unexpected ones
    are logged with their traceback), so a failure never escapes into the UI event loop.
    """

    def __init__(self, *, name: str = "activelabel") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: list[_Pending[Any]] = []

    @property
    def busy(self) -> bool:
        """Whether a call has not been delivered yet."""
        return bool(self._pending)

    def submit(
        self,
        call: Callable[[], T],
        *,
        on_done: Callable[[T], None],
        on_error: Callable[[ActiveLabelError], None],
    ) -> None:
        """Queue ``call``; its result goes to ``on_done``, its failure to ``on_error``."""
        self._pending.append(_Pending(self._executor.submit(call), on_done, on_error))

    def poll(self) -> int:
        """Deliver the finished calls at the head of the queue, on the calling thread; how many."""
        delivered = 0
        while self._pending and self._pending[0].future.done():
            pending = self._pending.pop(0)
            try:
                pending.on_done(pending.future.result())
            except ActiveLabelError as error:
                pending.on_error(error)
            except Exception as error:  # a bug, not a server answer: keep the UI alive and say so
                logger.exception("unexpected error in a background call")
                pending.on_error(ActiveLabelError(f"unexpected error: {type(error).__name__}: {error}"))
            delivered += 1
        return delivered

    def shutdown(self) -> None:
        """Stop accepting calls; the running one finishes in the background."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._pending.clear()
