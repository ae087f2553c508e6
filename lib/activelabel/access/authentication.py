"""Who sent a request: an ``Authorization`` header checked against the users file.

``Bearer <token>`` and HTTP ``Basic`` (user name with password or token) are accepted.  The
users file is re-read when it changes, so ``activelabel users add`` needs no restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import threading
from pathlib import Path

from activelabel.access.users import User, UsersFileError, UserStore
from activelabel.errors import ActiveLabelError

logger = logging.getLogger(__name__)

_CACHE_SIZE = 1024


class AuthenticationError(ActiveLabelError):
    """Missing or wrong credentials; the message is safe to show the caller."""


class Authenticator:
    """Checks credentials against one users file.

    Args:
        users_file: the JSON users file (see :mod:`activelabel.access.users`).

    Raises:
        UsersFileError: when the file cannot be read at start.
    """

    def __init__(self, users_file: str | Path) -> None:
        self.users_file = Path(users_file)
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._store = UserStore.load(self.users_file)
        self._verified: dict[str, User] = {}

    @property
    def users(self) -> UserStore:
        """The current users, re-read if the file changed."""
        self._reload_if_changed()
        return self._store

    def authenticate(self, authorization: str | None) -> User:
        """The user an ``Authorization`` header value proves to be.

        Raises:
            AuthenticationError: no header, an unknown scheme, or credentials that match nobody.
        """
        if not authorization or not authorization.strip():
            raise AuthenticationError("authentication required: send 'Authorization: Bearer <token>'")
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            user = self.users.by_token(value)
            if user is None:
                raise AuthenticationError("invalid or revoked token")
            return user
        if scheme.lower() == "basic":
            return self._basic(value)
        raise AuthenticationError(f"unsupported authorization scheme {scheme!r}: use Bearer or Basic")

    def _basic(self, value: str) -> User:
        try:
            name, sep, secret = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationError("malformed Basic credentials") from None
        if not sep:
            raise AuthenticationError("malformed Basic credentials: expected user:password")
        store = self.users
        key = hashlib.sha256(f"{name}\0{secret}".encode()).hexdigest()
        cached = self._verified.get(key)
        if cached is not None:
            return cached
        user = store.by_password(name, secret)
        if user is None:
            raise AuthenticationError("wrong user name or password")
        with self._lock:
            if len(self._verified) >= _CACHE_SIZE:
                self._verified.clear()
            self._verified[key] = user
        return user

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.users_file)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _reload_if_changed(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                store = UserStore.load(self.users_file)
            except UsersFileError as error:
                logger.warning("keeping the previous users: %s", error)
                self._stamp = stamp
                return
            self._store, self._stamp, self._verified = store, stamp, {}
            logger.info("access control: reloaded %d users from %s", len(store.users), self.users_file)
