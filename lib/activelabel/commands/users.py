"""``activelabel users add | list | remove``: manage the users file of a server.

The file is given by ``--file`` or the ``ACTIVELABEL_USERS_FILE`` environment variable (the
``users_file`` setting).  ``add`` prints the new user's token once; only its hash is stored.
A running server picks up changes on the next request.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from activelabel.access.policy import Role
from activelabel.access.users import (
    User,
    UsersFileError,
    UserStore,
    check_user_name,
    new_token,
    password_hash,
    token_hash,
)
from activelabel.config import ENV_PREFIX

MIN_PASSWORD_LENGTH = 8


def _users_file(args: argparse.Namespace) -> Path:
    value = args.file or os.environ.get(ENV_PREFIX + "USERS_FILE")
    if not value:
        raise UsersFileError(f"no users file: pass --file FILE or set {ENV_PREFIX}USERS_FILE")
    return Path(value)


def _load_or_empty(path: Path) -> UserStore:
    return UserStore.load(path) if path.exists() else UserStore()


def _read_password(args: argparse.Namespace) -> str | None:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise UsersFileError("the two passwords differ")
    else:
        return None
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsersFileError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    return password


def add_user(args: argparse.Namespace) -> int:
    path = _users_file(args)
    store = _load_or_empty(path)
    password = _read_password(args)
    token = None if args.no_token else new_token()
    if token is None and password is None:
        raise UsersFileError("--no-token needs --password or --password-stdin (a user needs a credential)")
    user = User(
        name=check_user_name(args.name),
        role=Role(args.role),
        token_sha256=token_hash(token) if token else None,
        password=password_hash(password) if password else None,
    )
    store.with_user(user).save(path)
    print(f"added {user.name} ({user.role.value}) to {path}", file=sys.stderr)
    if token:
        print("token (shown once, store it safely):", file=sys.stderr)
        print(token)
    return 0


def list_users(args: argparse.Namespace) -> int:
    path = _users_file(args)
    store = UserStore.load(path)
    print(f"{'name':<24}{'role':<12}credentials")
    for user in sorted(store.users, key=lambda u: u.name):
        kinds = [kind for kind, present in (("token", user.token_sha256), ("password", user.password)) if present]
        print(f"{user.name:<24}{user.role.value:<12}{', '.join(kinds)}")
    return 0


def remove_user(args: argparse.Namespace) -> int:
    path = _users_file(args)
    UserStore.load(path).without_user(args.name).save(path)
    print(f"removed {args.name} from {path}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    return int(args.users_func(args))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``users`` to the ``activelabel`` command line."""
    parser = subparsers.add_parser("users", help="add, list or remove the users of a server (access control)")
    parser.set_defaults(func=_run)
    sub = parser.add_subparsers(dest="users_command", required=True)
    file_help = f"users file (default: ${ENV_PREFIX}USERS_FILE)"

    add = sub.add_parser("add", help="add a user and print their new token once")
    add.add_argument("name", help="user name (recorded as the author of their labels)")
    add.add_argument("--role", required=True, choices=[r.value for r in Role], help="what the user may do")
    add.add_argument("--file", default=None, help=file_help)
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--password", action="store_true", help="also set a password (prompted) for HTTP Basic")
    secret.add_argument("--password-stdin", action="store_true", help="also set a password read from stdin")
    add.add_argument("--no-token", action="store_true", help="password only, no API token")
    add.set_defaults(users_func=add_user)

    listing = sub.add_parser("list", help="list users, roles and credential kinds (never secrets)")
    listing.add_argument("--file", default=None, help=file_help)
    listing.set_defaults(users_func=list_users)

    remove = sub.add_parser("remove", help="remove a user (their token stops working at once)")
    remove.add_argument("name")
    remove.add_argument("--file", default=None, help=file_help)
    remove.set_defaults(users_func=remove_user)
