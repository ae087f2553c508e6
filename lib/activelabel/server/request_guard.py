"""The ASGI middleware in front of every route: credentials, roles, ids and upload size.

It covers MONAI Label's own routes and ours alike, because it wraps the whole app.  The
rules live elsewhere (:mod:`activelabel.access.policy`, :mod:`activelabel.store.identifiers`); this
module only reads requests and writes the 4xx answers:

* 401 (with ``WWW-Authenticate``) without valid credentials, 403 when the role is too low;
* 400 for ids, tags, paths or upload file names that could leave the datastore;
* 413 for a body larger than ``max_upload_mb``: at once from ``Content-Length``, and by
  counting the bytes of a streamed body;
* 408 for a body that stalls (nothing for ``upload_stall_seconds``) or trickles (slower on
  average than ``upload_min_kib_s`` once ``upload_stall_seconds`` have passed), so slow
  clients cannot hold the server's connections and upload buffers for ever.
"""

from __future__ import annotations

import logging
import sys
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio
from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from activelabel.access.authentication import AuthenticationError, Authenticator
from activelabel.access.mode import bind_host_from_argv, resolve_access
from activelabel.access.policy import allowed, required_role
from activelabel.access.request_user import reset_authenticated_user, set_authenticated_user
from activelabel.access.users import User
from activelabel.config import setting
from activelabel.server.multipart_scan import FilenameScanner
from activelabel.store.identifiers import ID_PARAMETERS, check_name, check_upload_filename, check_url_path
from activelabel.store.validation import InputRejected

logger = logging.getLogger(__name__)

CHALLENGES = ('Bearer realm="ActiveLabel"', 'Basic realm="ActiveLabel"')
"""One ``WWW-Authenticate`` header each: browsers (chromium) read one challenge per header and
would not see ``Basic`` after ``Bearer`` in the same one, so they never asked the user to sign in."""
DRAIN_BYTES = 4 * 1024 * 1024
DRAIN_SECONDS = 5.0
"""After rejecting a body, read (and drop) at most this much more, for at most this long, so the
client has sent its request before it reads the answer (closing on unread data resets the connection)."""


class BodyRejected(HTTPException):
    """Raised from ``receive`` when a streamed body breaks a rule; carries the 4xx answer."""


def _answer(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    response = JSONResponse({"detail": detail}, status_code=status, headers=dict(headers or {}))
    if status == 401:
        response.raw_headers.extend((b"www-authenticate", challenge.encode()) for challenge in CHALLENGES)
    return response


def _query_pairs(scope: Scope) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)


def check_request_names(path: str, query: Sequence[tuple[str, str]]) -> None:
    """The path and every id-like query value must stay inside the datastore (400 otherwise)."""
    check_url_path(path)
    for key, value in query:
        if key in ID_PARAMETERS and value:
            check_name(value, what="label tag" if key == "tag" else f"{key} id" if key != "id" else "id")


@dataclass
class _BodyState:
    """What one request's body did so far."""

    received: int = 0
    started_at: float = 0.0
    complete: bool = False
    rejection: InputRejected | None = None
    started: bool = False
    replaced: bool = False


class RequestGuard:
    """ASGI middleware: authenticate, authorize, check names and bound the body of each HTTP request.

    Args:
        app: the wrapped ASGI app.
        authenticator: checks credentials; ``None`` turns access control off.
        max_body_bytes: largest request body accepted.
        stall_seconds: longest wait for the next part of a body; also the grace period before
            ``min_bytes_per_second`` applies.
        min_bytes_per_second: slowest average body rate accepted after ``stall_seconds``
            (0 turns the rate rule off).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator | None,
        max_body_bytes: int,
        stall_seconds: float = 30.0,
        min_bytes_per_second: float = 16 * 1024,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.max_body_bytes = max_body_bytes
        self.stall_seconds = stall_seconds
        self.min_bytes_per_second = min_bytes_per_second

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        query = _query_pairs(scope)
        try:
            user = self._authorize(scope, headers, dict(query))
            check_request_names(scope["path"], query)
            self._check_declared_length(headers)
        except InputRejected as error:
            declared = headers.get("content-length", "")
            small = not declared.isdigit() or int(declared) <= DRAIN_BYTES  # a large body is not read at all
            await self._reject(error.status, str(error), scope, receive, send, drain=small)
            return
        token = set_authenticated_user(user)
        try:
            await self._call_bounded(scope, receive, send, headers)
        finally:
            reset_authenticated_user(token)

    def _authorize(self, scope: Scope, headers: Headers, query: Mapping[str, str]) -> User | None:
        """The caller, when the route needs one; 401 or 403 as :class:`InputRejected` otherwise."""
        method, path = scope["method"], scope["path"]
        needed = required_role(method, path, query)
        if self.authenticator is None or needed is None:
            return None
        try:
            user = self.authenticator.authenticate(headers.get("authorization"))
        except AuthenticationError as error:
            raise InputRejected(str(error), status=401) from None
        if not allowed(user.role, needed):
            detail = f"user {user.name!r} ({user.role.value}) may not {method} {path}: it needs the {needed.value} role"
            logger.warning("access denied: %s", detail)
            raise InputRejected(detail, status=403)
        return user

    def _check_declared_length(self, headers: Headers) -> None:
        declared = headers.get("content-length")
        if declared is None:
            return
        if not declared.strip().isdigit():
            raise InputRejected(f"invalid Content-Length {declared!r}", status=400)
        if int(declared) > self.max_body_bytes:
            raise InputRejected(self._too_large(int(declared)), status=413)

    def _too_large(self, size: int | None = None) -> str:
        limit = f"{self.max_body_bytes / 2**20:g} MiB"
        if size is None:
            return f"the request body is larger than the server's limit of {limit} (setting max_upload_mb)"
        return f"the request body ({size / 2**20:.1f} MiB) is larger than the server's limit of {limit} (max_upload_mb)"

    def _check_rate(self, body: _BodyState) -> None:
        """408 when a body still arriving is slower on average than allowed, once the grace period is over."""
        elapsed = time.monotonic() - body.started_at
        if self.min_bytes_per_second <= 0 or elapsed <= self.stall_seconds:
            return
        rate = body.received / elapsed
        if rate < self.min_bytes_per_second:
            raise InputRejected(
                f"the request body arrives at {rate / 1024:.2f} KiB/s after {elapsed:.0f} s, slower than the "
                f"server's limit of {self.min_bytes_per_second / 1024:g} KiB/s (setting upload_min_kib_s)",
                status=408,
            )

    async def _call_bounded(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        """Run the app with a ``receive`` that counts bytes and checks upload file names."""
        scanner = FilenameScanner(headers.get("content-type", ""))
        body = _BodyState()

        body.started_at = time.monotonic()

        async def checked_receive() -> Message:
            if body.complete or body.rejection is not None:
                return await receive()  # after the body: e.g. waiting for the client to disconnect
            try:
                with anyio.fail_after(self.stall_seconds):
                    message = await receive()
            except TimeoutError:
                detail = f"the request body sent nothing for {self.stall_seconds:g} s (setting upload_stall_seconds)"
                body.rejection = InputRejected(detail, status=408)
                raise BodyRejected(status_code=408, detail=detail) from None
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            body.received += len(chunk)
            body.complete = not message.get("more_body", False)
            try:
                if body.received > self.max_body_bytes:
                    raise InputRejected(self._too_large(), status=413)
                if not body.complete:
                    self._check_rate(body)
                for name in scanner.feed(chunk):
                    check_upload_filename(name)
            except InputRejected as error:
                body.rejection = error
                raise BodyRejected(status_code=error.status, detail=str(error)) from None
            return message

        async def answer_rejection() -> None:
            assert body.rejection is not None
            body.started = body.replaced = True
            error = body.rejection
            await self._reject(error.status, str(error), scope, receive, send, drain=not body.complete)

        async def checked_send(message: Message) -> None:
            if body.replaced:
                return
            if body.rejection is not None and not body.started:  # the app answered the rejection its own way
                await answer_rejection()
                return
            body.started = body.started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, checked_receive, checked_send)
        except BodyRejected:
            if body.started:
                if body.replaced:
                    return
                raise
            await answer_rejection()

    async def _reject(
        self,
        status: int,
        detail: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        headers: Mapping[str, str] | None = None,
        drain: bool = True,
    ) -> None:
        """Answer ``status``, first reading (with ``drain``) a bounded rest of the body so the client reads it."""
        if drain:
            with anyio.move_on_after(DRAIN_SECONDS):
                drained = 0
                while drained <= DRAIN_BYTES:
                    message = await receive()
                    if message["type"] != "http.request":
                        break
                    drained += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        await _answer(status, detail, headers)(scope, receive, send)


def install_guard(
    app: FastAPI,
    *,
    conf: Mapping[str, str],
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Authenticator | None:
    """Add :class:`RequestGuard` to ``app`` from the server's settings and bind address; log the mode.

    Raises:
        AccessConfigError: no access control on a public address.
        UsersFileError: an unreadable users file.
        ConfigError: a setting that does not parse.
    """
    plan = resolve_access(
        auth=setting("auth", conf=conf, env=env),
        users_file=setting("users_file", conf=conf, env=env),
        host=bind_host_from_argv(sys.argv if argv is None else argv),
    )
    authenticator = Authenticator(plan.users_file) if plan.users_file is not None else None
    max_mb = setting("max_upload_mb", conf=conf, env=env)
    if authenticator is None:
        logger.info(plan.description)
    else:
        users = len(authenticator.users.users)
        logger.info("access control: on: %d users from %s", users, authenticator.users_file)
    # Inside CORS (which app.add_middleware would not do), so preflights and 4xx answers carry its headers.
    app.user_middleware.append(
        Middleware(
            RequestGuard,
            authenticator=authenticator,
            max_body_bytes=int(max_mb) * 2**20,
            stall_seconds=float(setting("upload_stall_seconds", conf=conf, env=env)),
            min_bytes_per_second=float(setting("upload_min_kib_s", conf=conf, env=env)) * 1024,
        )
    )
    return authenticator
