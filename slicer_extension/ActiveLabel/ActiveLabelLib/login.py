"""The login for a server with access control: an API token, or a user name and password.

The server (``activelabel.access``) takes ``Authorization: Bearer <token>`` or HTTP Basic
``user:password`` (a token also works as the Basic password).  It has no route that trades a
password for a token, so a password is sent as Basic on every request and lives only in
memory: :class:`Login` never writes it anywhere, and its ``repr`` hides both secrets.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from .errors import ActiveLabelError


@dataclass(frozen=True)
class Login:
    """Who the module says it is to the server.

    Attributes:
        user: the user name; sent as ``client_id`` and, with a password, as the Basic user.
        token: an API token (``activelabel users add`` prints it); wins over a password.
        password: the user's password, for this Slicer session only.
    """

    user: str = ""
    token: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    @classmethod
    def from_form(cls, *, user: str, token: str = "", password: str = "") -> Login:
        """The login from the panel's fields (surrounding blanks dropped).

        Raises:
            ActiveLabelError: a password without a user name, or both a token and a password.
        """
        login = cls(user=user.strip(), token=token.strip(), password=password)
        if login.token and login.password:
            raise ActiveLabelError("enter a token or a password, not both; clear one of the two fields")
        if login.password and not login.user:
            raise ActiveLabelError("a password needs the user name it belongs to; fill in the User field")
        return login

    @property
    def kind(self) -> str:
        """``token``, ``password`` or ``none``: how requests are authenticated."""
        if self.token:
            return "token"
        return "password" if self.password else "none"

    def authorization(self) -> str | None:
        """The ``Authorization`` header value; ``None`` without credentials (server without access control)."""
        if self.token:
            return f"Bearer {self.token}"
        if self.password:
            pair = f"{self.user}:{self.password}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return None

    @property
    def text(self) -> str:
        """What the panel says about the login, never a secret."""
        if self.kind == "token":
            return f"logged in as {self.user} with a token" if self.user else "logged in with a token"
        if self.kind == "password":
            return f"logged in as {self.user} with a password (kept in memory only)"
        return "no login (for servers without access control)"
