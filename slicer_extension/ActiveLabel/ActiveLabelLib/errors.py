"""The one error type of the extension: a message fit to show a clinician, never a traceback."""

from __future__ import annotations

import json


class ActiveLabelError(Exception):
    """A failed step of the labeling loop, with a one-line readable message.

    Attributes:
        message: what went wrong, in one line.
        status: the HTTP status when the server answered with an error, else ``None``.
        detail: the server's own reason (FastAPI's ``detail``) when it gave one.
    """

    def __init__(self, message: str, *, status: int | None = None, detail: str | None = None) -> None:
        self.message = " ".join(message.split())
        self.status = status
        self.detail = detail
        super().__init__(self.message)

    @classmethod
    def from_http(cls, action: str, status: int, body: bytes) -> ActiveLabelError:
        """An error for a non-2xx answer; the message carries the server's ``detail``."""
        detail = server_detail(body)
        reason = f": {detail}" if detail else ""
        return cls(f"{action} failed: the server answered {status}{reason}", status=status, detail=detail)

    @classmethod
    def login_refused(cls, action: str, login_kind: str, body: bytes) -> ActiveLabelError:
        """An error for a 401: the server's reason and which login field to check.

        ``login_kind`` is :attr:`ActiveLabelLib.login.Login.kind` (``token``, ``password``, ``none``).
        """
        detail = server_detail(body) or "authentication required"
        advice = {
            "token": "check the token",
            "password": "check the user name and password",
        }.get(login_kind, "this server needs a login: enter a token, or a user name and password")
        message = f"{action} failed: the server refused the login (401: {detail}); {advice}"
        return cls(message, status=401, detail=detail)

    @classmethod
    def unreachable(cls, action: str, url: str, reason: object) -> ActiveLabelError:
        """An error for a server that cannot be reached (refused, unknown host, timeout)."""
        return cls(f"{action} failed: cannot reach the server at {url} ({reason})")


def server_detail(body: bytes, *, limit: int = 300) -> str:
    """The server's reason from an error body: FastAPI's ``detail`` or the start of the text.

    FastAPI answers ``{"detail": "..."}`` for HTTP errors and ``{"detail": [{"msg": ...}]}``
    for request validation errors; anything else is shown as text, cut to ``limit`` characters.
    """
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:limit]
    detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
    if isinstance(detail, list):
        messages = [str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail]
        detail = "; ".join(messages)
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    return " ".join(detail.split())[:limit]
