"""The options of every subcommand that talks to a running server: its address and an API token."""

from __future__ import annotations

import argparse
import os

DEFAULT_SERVER = "http://127.0.0.1:8000"


def add_server_options(parser: argparse.ArgumentParser, *, token_of: str) -> None:
    """Add ``--server URL`` and ``--token`` (default ``$ACTIVELABEL_TOKEN``); ``token_of`` names whose token."""
    parser.add_argument("--server", default=DEFAULT_SERVER, help="server URL (default: %(default)s)")
    parser.add_argument(
        "--token",
        default=os.environ.get("ACTIVELABEL_TOKEN"),
        help=f"{token_of} API token for a server with access control (default: $ACTIVELABEL_TOKEN)",
    )
