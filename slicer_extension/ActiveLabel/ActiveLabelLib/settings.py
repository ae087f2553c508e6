"""The module's settings and their persistence in a key-value store (Slicer's QSettings or a JSON file)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Protocol

from .login import Login

HISTORY_LENGTH = 10
"""How many server addresses the connect box remembers."""


class KeyValueStore(Protocol):
    """Where settings live: strings by key (QSettings inside Slicer, a JSON file elsewhere)."""

    def get(self, key: str) -> str | None:
        """The stored string, or ``None`` when the key was never set."""

    def put(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``."""


class JsonFileStore:
    """A :class:`KeyValueStore` in one JSON file (tests, scripts, Slicer without QSettings)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def get(self, key: str) -> str | None:
        value = self._read().get(key)
        return value if isinstance(value, str) else None

    def put(self, key: str, value: str) -> None:
        data = self._read()
        data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(data, indent=1, sort_keys=True))

    def _read(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Settings:
    """What the module remembers between Slicer sessions.

    A password is never among them: a user name and password login keeps the password in
    memory for the Slicer session only (:class:`~ActiveLabelLib.login.Login`); an API token
    is remembered, because it is made for that (revoke it with ``activelabel users remove``).

    Attributes:
        server_url: the server to connect to.
        server_history: recently used server addresses, most recent first.
        user: the name sent as ``client_id``; the server records it as the label's author.
        token: the API token for a server with access control (empty: none, or a password login).
        strategy: the active-learning strategy that picks the next sample.
        auto_fetch_next: after a submission, fetch the next sample at once.
        auto_segment: run the server's segmentation when a sample is loaded.
        show_uncertainty_map: fetch the sample's voxel uncertainty map and overlay it.
        prefetch_next: while a sample is edited, fetch the next one and its pre-segmentation
            in the background, so Next shows it at once.
        auto_refine: send the clicks to the server's refine task as soon as one is placed.
    """

    server_url: str = "http://127.0.0.1:8000"
    server_history: tuple[str, ...] = ()
    user: str = ""
    token: str = ""
    strategy: str = "most_uncertain"
    auto_fetch_next: bool = True
    auto_segment: bool = True
    show_uncertainty_map: bool = False
    prefetch_next: bool = True
    auto_refine: bool = False

    PREFIX = "ActiveLabel/"

    @classmethod
    def load(cls, store: KeyValueStore) -> Settings:
        """Read the settings; keys that are missing or unreadable keep their defaults."""
        defaults = cls()
        values: dict[str, object] = {}
        for item in fields(cls):
            raw = store.get(cls.PREFIX + item.name)
            if raw is None:
                continue
            default = getattr(defaults, item.name)
            if isinstance(default, bool):
                values[item.name] = raw.strip().lower() in ("1", "true", "yes")
            elif isinstance(default, tuple):
                values[item.name] = _string_tuple(raw)
            else:
                values[item.name] = raw
        return replace(defaults, **values)

    def save(self, store: KeyValueStore) -> None:
        """Write every setting as a string."""
        for name, value in asdict(self).items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, (tuple, list)):
                text = json.dumps(list(value))
            else:
                text = str(value)
            store.put(self.PREFIX + name, text)

    def with_login(self, login: Login) -> Settings:
        """These settings with the login's user name and token; its password is not kept."""
        return replace(self, user=login.user, token=login.token)

    def with_server(self, url: str) -> Settings:
        """These settings with ``url`` as the server, first in the history (no duplicates)."""
        url = url.strip().rstrip("/")
        history = (url, *(old for old in self.server_history if old != url))[:HISTORY_LENGTH]
        return replace(self, server_url=url, server_history=history)


def _string_tuple(raw: str) -> tuple[str, ...]:
    try:
        value = json.loads(raw)
    except ValueError:
        return ()
    return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list) else ()
