"""The authenticated user of the request being served, for code below the HTTP layer.

The request guard sets it for the duration of one request; MONAI Label's endpoints call the
app and the datastore in the same context (or a copy of it, in worker threads), so they can
read it without the user being passed through MONAI Label's signatures.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from activelabel.access.users import User

_current: ContextVar[User | None] = ContextVar("activelabel_user", default=None)


def authenticated_user() -> User | None:
    """The user who sent the current request; ``None`` when access control is off."""
    return _current.get()


def set_authenticated_user(user: User | None) -> Token[User | None]:
    """Make ``user`` the current request's user; pass the result to :func:`reset_authenticated_user`."""
    return _current.set(user)


def reset_authenticated_user(token: Token[User | None]) -> None:
    _current.reset(token)


def caller_name(claimed: object, *, default: str = "anonymous") -> str:
    """The name to record for the caller: the authenticated user wins over a claimed ``client_id``."""
    user = authenticated_user()
    if user is not None:
        return user.name
    return str(claimed or default)
