"""The users file: names, roles and credential hashes, never a secret in clear.

Format (JSON)::

    {"users": {"reader-1": {"role": "annotator", "token_sha256": "<hex>"},
               "lead-1": {"role": "admin", "token_sha256": "<hex>", "password": "scrypt$16384$8$1$<salt>$<hash>"}}}

Tokens are long random strings, so their SHA-256 is enough; passwords are hashed with
scrypt and a random salt.  A user may have a token, a password or both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from activelabel.access.policy import Role
from activelabel.errors import ActiveLabelError
from activelabel.fsutil import atomic_write

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class UsersFileError(ActiveLabelError, ValueError):
    """A users file that cannot be read or a change that cannot be made; the message says why."""


def new_token() -> str:
    """A fresh random API token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The stored form of a token: hex SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def password_hash(password: str, *, salt: bytes | None = None) -> str:
    """The stored form of a password: ``scrypt$N$r$p$<salt b64>$<hash b64>``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    encode = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`password_hash` string (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def check_user_name(name: str) -> str:
    """A user name: 1-64 letters, digits, ``. _ @ -``, starting with a letter or digit."""
    if not _NAME.fullmatch(name):
        raise UsersFileError(
            f"user name {name!r} is not allowed: use 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class User:
    """One user of the server and the hashes of their credentials."""

    name: str
    role: Role
    token_sha256: str | None = None
    password: str | None = None

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"role": self.role.value}
        if self.token_sha256:
            entry["token_sha256"] = self.token_sha256
        if self.password:
            entry["password"] = self.password
        return entry


def _parse_user(name: str, entry: Any, *, path: Path) -> User:
    if not isinstance(entry, Mapping):
        raise UsersFileError(f"{path}: user {name!r} must be an object with a role")
    try:
        role = Role(str(entry.get("role", "")).lower())
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise UsersFileError(f"{path}: user {name!r} has role {entry.get('role')!r}; choose one of {roles}") from None
    token, password = entry.get("token_sha256"), entry.get("password")
    if token is not None and not re.fullmatch(r"[0-9a-f]{64}", str(token)):
        raise UsersFileError(f"{path}: user {name!r} has a token_sha256 that is not 64 hex digits")
    if not token and not password:
        raise UsersFileError(f"{path}: user {name!r} has neither token_sha256 nor password")
    return User(name=check_user_name(name), role=role, token_sha256=token, password=password)


@dataclass(frozen=True)
class UserStore:
    """The users of one users file, looked up by token hash or by name."""

    users: tuple[User, ...] = ()

    @classmethod
    def load(cls, path: str | Path) -> UserStore:
        """Read and check a users file.

        Raises:
            UsersFileError: when the file is missing, not JSON, or holds a malformed entry.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsersFileError(f"users file not found: {path}") from None
        except (OSError, ValueError) as error:
            raise UsersFileError(f"users file {path} is not readable JSON: {error}") from None
        entries = data.get("users") if isinstance(data, Mapping) else None
        if not isinstance(entries, Mapping):
            raise UsersFileError(f'{path}: expected {{"users": {{NAME: {{"role": ...}}}}}}')
        return cls(tuple(_parse_user(str(name), entry, path=path) for name, entry in entries.items()))

    def save(self, path: str | Path) -> None:
        """Write the users file atomically, readable by its owner only."""
        data = {"users": {user.name: user.to_dict() for user in self.users}}
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"

        def write(tmp: Path) -> None:
            tmp.write_text(text)
            os.chmod(tmp, 0o600)

        atomic_write(path, write)

    def get(self, name: str) -> User | None:
        return next((user for user in self.users if user.name == name), None)

    def with_user(self, user: User) -> UserStore:
        """A store with ``user`` added; a name that exists already is an error."""
        if self.get(user.name) is not None:
            raise UsersFileError(f"user {user.name!r} exists already (remove it first)")
        return replace(self, users=(*self.users, user))

    def without_user(self, name: str) -> UserStore:
        """A store without ``name``; an unknown name is an error."""
        if self.get(name) is None:
            raise UsersFileError(f"no user named {name!r}")
        return replace(self, users=tuple(user for user in self.users if user.name != name))

    def by_token(self, token: str) -> User | None:
        """The user whose token this is, if any."""
        digest = token_hash(token)
        for user in self.users:
            if user.token_sha256 and hmac.compare_digest(user.token_sha256, digest):
                return user
        return None

    def by_password(self, name: str, secret: str) -> User | None:
        """The user ``name`` if ``secret`` is their password or their token."""
        user = self.get(name)
        if user is None:
            return None
        if user.password and verify_password(secret, user.password):
            return user
        if user.token_sha256 and hmac.compare_digest(user.token_sha256, token_hash(secret)):
            return user
        return None
