"""The ``activelabel`` command line: ``serve``, ``data``, ``simulate``, ``autolabel``, ``cost``, ``users``, ``score``.

Errors a user can fix (a missing folder, a bad setting) end the command with exit code 2
and one line on stderr starting with ``error:``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from activelabel import autolabel, score_command, users_command
from activelabel.access_mode import AccessConfigError, resolve_access
from activelabel.config import ConfigError, load_settings, setting
from activelabel.data import commands as data_commands
from activelabel.pacs import commands as pacs_commands
from activelabel.simulation import commands as simulation_commands
from activelabel.simulation import cost_command

DEFAULT_APP = Path(__file__).resolve().parent.parent / "apps" / "radiology_al"

# MONAI Label settings ActiveLabel changes unless the environment already sets them.
SERVER_ENV_DEFAULTS = {
    "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
    "MONAI_LABEL_TRACKING_ENABLED": "false",
}


class UsageError(Exception):
    """A mistake in the command's input, reported as one line."""


def _app_dir(value: str | None) -> Path:
    app = Path(value or os.environ.get("ACTIVELABEL_APP") or DEFAULT_APP).resolve()
    if not (app / "main.py").is_file():
        raise UsageError(f"no MONAI Label app at {app} (expected main.py); pass --app DIR")
    return app


def server_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The ``python -m monailabel.main start_server`` argv and environment for ``serve``."""
    app = _app_dir(args.app)
    studies = args.studies
    remote = studies.startswith(("http://", "https://"))
    if not remote:
        path = Path(studies).resolve()
        if not path.is_dir():
            raise UsageError(f"studies folder not found: {path}")
        studies = str(path)
    conf = dict(args.conf or [])
    try:
        load_settings(conf, studies=studies, app_dir=str(app))
        resolve_access(auth=setting("auth", conf=conf), users_file=setting("users_file", conf=conf), host=args.host)
    except (ConfigError, AccessConfigError) as error:
        raise UsageError(str(error)) from None
    argv = [
        sys.executable,
        "-m",
        "monailabel.main",
        "start_server",
        "--app",
        str(app),
        "--studies",
        studies,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--uvicorn_app",
        "activelabel.server:app",
        "--log_level",
        args.log_level,
    ]
    for key, value in conf.items():
        argv += ["--conf", key, value]
    env = {**SERVER_ENV_DEFAULTS, **os.environ}
    if remote:
        # MONAI Label's /proxy/dicom (the bundled OHIF viewer's way to the PACS) reads these.
        for key, name in (("pacs_user", "USERNAME"), ("pacs_password", "PASSWORD")):
            value = setting(key, conf=conf)
            if value:
                env.setdefault(f"MONAI_LABEL_DICOMWEB_{name}", str(value))
    return argv, env


def _serve(args: argparse.Namespace) -> int:
    argv, env = server_command(args)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"ActiveLabel server starting at http://{host}:{args.port} (studies: {args.studies})", flush=True)
    os.execve(argv[0], argv, env)
    return 0  # not reached: execve replaces this process


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="activelabel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the MONAI Label server with ActiveLabel's app and endpoints")
    serve.add_argument("--studies", required=True, help="datastore folder, or a DICOMweb URL")
    serve.add_argument("--app", default=None, help=f"MONAI Label app folder (default: {DEFAULT_APP})")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--conf",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        help="app setting, repeatable (see the README's configuration table)",
    )
    serve.set_defaults(func=_serve)

    data_commands.register(sub)
    pacs_commands.register(sub)
    simulation_commands.register(sub)
    autolabel.register(sub)
    cost_command.register(sub)
    users_command.register(sub)
    score_command.register(sub, app_dir=_app_dir)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
