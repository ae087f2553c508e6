"""Whether the server checks credentials: from the ``auth`` and ``users_file`` settings and the bind address.

Access control may be off by default only on a loopback address, where nobody else can
connect; a server on any other address needs a users file or an explicit ``auth = off``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from activelabel.errors import ActiveLabelError


class AuthSetting(str, Enum):
    """The ``auth`` setting: ``auto`` (on with a users file, off on loopback), ``on`` or ``off``."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class AccessConfigError(ActiveLabelError, ValueError):
    """A combination of settings the server must not start with; the message says what to do."""


@dataclass(frozen=True)
class AccessPlan:
    """The resolved mode: ``users_file`` is set exactly when access control is on; ``description`` is a log line."""

    users_file: Path | None
    description: str

    @property
    def enabled(self) -> bool:
        return self.users_file is not None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost`` (nothing off this machine can connect)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def resolve_access(*, auth: AuthSetting, users_file: str | None, host: str) -> AccessPlan:
    """Decide the access mode of a server binding to ``host``.

    Raises:
        AccessConfigError: access control would be off on a non-loopback address, or ``auth = on``
            without a users file.
    """
    if auth is AuthSetting.OFF:
        return AccessPlan(None, "access control: off (auth = off)")
    if users_file:
        path = Path(users_file).expanduser().resolve()
        return AccessPlan(path, f"access control: on (users from {path})")
    if auth is AuthSetting.ON:
        raise AccessConfigError(
            "auth = on needs a users file: create one with 'activelabel users add NAME --role admin --file FILE' "
            "and pass --conf users_file FILE"
        )
    if is_loopback(host):
        return AccessPlan(None, "access control: off (loopback only)")
    raise AccessConfigError(
        f"refusing to serve on {host} without access control: pass --conf users_file FILE "
        "(see 'activelabel users add'), bind to 127.0.0.1, or pass --conf auth off"
    )


def bind_host_from_argv(argv: Sequence[str], *, default: str = "0.0.0.0") -> str:
    """The ``--host``/``-i`` value in a server's command line (monailabel's and uvicorn's).

    ``default`` is MONAI Label's own default address, so an unknown address counts as public.
    """
    for index, arg in enumerate(argv):
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
        if arg in ("--host", "-i") and index + 1 < len(argv):
            return argv[index + 1]
    return default
