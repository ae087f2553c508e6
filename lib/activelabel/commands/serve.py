"""``activelabel serve``: start MONAI Label's server with ActiveLabel's app, routes and defaults.

The command checks the studies location, the settings and the access mode first, so a
mistake ends it with one line instead of a server that fails while starting, then replaces
itself with ``python -m monailabel.main start_server`` serving :mod:`activelabel.server.app`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from activelabel.access.mode import resolve_access
from activelabel.commands.model import import_model
from activelabel.config import DEFAULT_APP_DIR, is_remote, load_settings, resolve_studies, setting
from activelabel.errors import UsageError

# MONAI Label settings ActiveLabel changes unless the environment already sets them.
SERVER_ENV_DEFAULTS = {
    "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
    "MONAI_LABEL_TRACKING_ENABLED": "false",
}


def app_directory(value: str | None) -> Path:
    """The MONAI Label app folder: ``value``, else ``$ACTIVELABEL_APP``, else the bundled app.

    Raises:
        UsageError: when the folder holds no ``main.py``.
    """
    app = Path(value or os.environ.get("ACTIVELABEL_APP") or DEFAULT_APP_DIR).resolve()
    if not (app / "main.py").is_file():
        raise UsageError(f"no MONAI Label app at {app} (expected main.py); pass --app DIR")
    return app


def server_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The ``python -m monailabel.main start_server`` argv and environment for ``serve``."""
    app = app_directory(args.app)
    studies = resolve_studies(args.studies)
    conf = dict(args.conf or [])
    load_settings(conf, studies=studies, app_dir=str(app))
    resolve_access(auth=setting("auth", conf=conf), users_file=setting("users_file", conf=conf), host=args.host)
    if getattr(args, "model", None) is not None:
        imported = import_model(args.model, studies=studies, conf=conf)
        if imported is not None:
            print(f"imported {args.model} as model version {imported.version}", flush=True)
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
        "activelabel.server.app:app",
        "--log_level",
        args.log_level,
    ]
    for key, value in conf.items():
        argv += ["--conf", key, value]
    env = {**SERVER_ENV_DEFAULTS, **os.environ}
    if is_remote(studies):
        # MONAI Label's /proxy/dicom (the bundled OHIF viewer's way to the PACS) reads these.
        for key, name in (("pacs_user", "USERNAME"), ("pacs_password", "PASSWORD")):
            value = setting(key, conf=conf)
            if value:
                env.setdefault(f"MONAI_LABEL_DICOMWEB_{name}", str(value))
    return argv, env


def run_serve(args: argparse.Namespace) -> int:
    """Replace this process with the MONAI Label server (``execve``: it does not return)."""
    argv, env = server_command(args)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"ActiveLabel server starting at http://{host}:{args.port} (studies: {args.studies})", flush=True)
    os.execve(argv[0], argv, env)
    return 0  # not reached: execve replaces this process


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``activelabel`` command line."""
    serve = subparsers.add_parser("serve", help="start the MONAI Label server with ActiveLabel's app and endpoints")
    serve.add_argument("--studies", required=True, help="datastore folder, or a DICOMweb URL")
    serve.add_argument("--app", default=None, help=f"MONAI Label app folder (default: {DEFAULT_APP_DIR})")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument(
        "--model",
        type=Path,
        default=None,
        help="checkpoint to start from (`activelabel model export` writes one); imported once, as the next version",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--conf",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        help="app setting, repeatable (see the README's configuration table)",
    )
    serve.set_defaults(func=run_serve)
