"""The ``activelabel pacs`` command: start, stop and load the project's Orthanc.

Credentials come from ``--user``/``--password`` or ``ACTIVELABEL_PACS_USER`` /
``ACTIVELABEL_PACS_PASSWORD`` (the variables the server reads too), else the defaults.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from activelabel.pacs.orthanc import (
    DEFAULT_PASSWORD,
    DEFAULT_PORT,
    DEFAULT_USER,
    OrthancConfig,
    ping,
    running_pid,
    start_orthanc,
    stop_orthanc,
    upload,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pacs start``, ``pacs stop`` and ``pacs upload`` to the main parser's sub-commands."""
    pacs = subparsers.add_parser("pacs", help="run the project's Orthanc PACS (DICOMweb) and load DICOM into it")
    actions = pacs.add_subparsers(dest="pacs_command", required=True, metavar="{start,stop,upload}")

    start = actions.add_parser("start", help="start Orthanc in the background and wait until it answers")
    _common(start)
    start.add_argument("--data", type=Path, required=True, help="Orthanc's data directory (storage, config, log)")
    start.set_defaults(func=run_start)

    stop = actions.add_parser("stop", help="stop the Orthanc started with the same --data")
    stop.add_argument("--data", type=Path, required=True, help="the data directory given to start")
    stop.set_defaults(func=run_stop)

    load = actions.add_parser("upload", help="upload DICOM files or folders (REST POST /instances)")
    _common(load)
    load.add_argument("paths", type=Path, nargs="+", help="DICOM files or folders (searched recursively)")
    load.set_defaults(func=run_upload)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default: {DEFAULT_PORT})")
    parser.add_argument("--user", default=None, help="user name (default: $ACTIVELABEL_PACS_USER or activelabel)")
    parser.add_argument("--password", default=None, help="password (default: $ACTIVELABEL_PACS_PASSWORD)")


def _config(args: argparse.Namespace, data: Path) -> OrthancConfig:
    return OrthancConfig(
        data_dir=data.resolve(),
        port=args.port,
        user=args.user or os.environ.get("ACTIVELABEL_PACS_USER") or DEFAULT_USER,
        password=args.password or os.environ.get("ACTIVELABEL_PACS_PASSWORD") or DEFAULT_PASSWORD,
    )


def run_start(args: argparse.Namespace) -> int:
    """Handle ``pacs start``."""
    config = _config(args, args.data)
    if running_pid(config.data_dir) is not None and ping(config):
        print(f"Orthanc already running: DICOMweb at {config.dicomweb_url}, data in {config.data_dir}")
        return 0
    running = start_orthanc(config)
    print(f"Orthanc running (pid {running.pid}): DICOMweb at {config.dicomweb_url}, data in {config.data_dir}")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    """Handle ``pacs stop``."""
    stopped = stop_orthanc(args.data.resolve())
    print("Orthanc stopped" if stopped else f"no Orthanc running from {args.data}")
    return 0


def run_upload(args: argparse.Namespace) -> int:
    """Handle ``pacs upload``."""
    config = _config(args, Path("."))
    ids = upload(config, args.paths)
    print(f"uploaded {len(ids)} DICOM instances to {config.url}")
    return 0
