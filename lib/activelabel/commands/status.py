"""``activelabel status``: a running server's project numbers and how it is serving requests.

Prints labeled volumes, the model, score freshness, the stop advice, the compute pool's
queue and the pre-segmentation cache (hits, misses, volumes ready), one line each; ``--json``
prints the server's whole answer instead.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import requests

from activelabel.commands.server_options import add_server_options
from activelabel.errors import ActiveLabelError


class StatusError(ActiveLabelError, RuntimeError):
    """The server could not be reached or refused the request."""


def fetch_status(server: str, *, token: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """``GET /activelabel/status`` of ``server``."""
    base = server.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.get(f"{base}/activelabel/status", headers=headers, timeout=timeout)
    except requests.RequestException as error:
        raise StatusError(f"cannot reach the server at {base}: {error.__class__.__name__}") from None
    if response.status_code != 200:
        raise StatusError(f"the server refused the status request ({response.status_code}): {response.text[:200]}")
    return response.json()


def status_lines(status: dict[str, Any]) -> list[str]:
    """The summary lines ``activelabel status`` prints."""
    images, model, scores = status["images"], status["model"], status["scores"]
    lines = [
        f"images: {images['labeled']} of {images['total']} labeled ({images['labeled_fraction']:.1%})",
        f"model: version {model['version']}"
        + (f", validation mean Dice {model['val_mean_dice']:.3f}" if model.get("val_mean_dice") is not None else "")
        + (", training now" if status.get("training", {}).get("running") else ""),
        f"scores: {scores['fresh']} fresh, {scores['stale']} stale, {scores['unscored']} unscored",
    ]
    stop = status.get("stop") or {}
    if stop:
        lines.append(f"stop: {'recommended' if stop.get('stop_recommended') else 'not yet'} ({stop.get('reason')})")
    serving = status.get("serving")
    if serving:
        compute, cache = serving["compute"], serving["presegmentations"]
        lines.append(
            f"compute: {compute['running']} running, {compute['queued']} queued (limit {compute['queue_limit']}), "
            f"{compute['rejected']} refused with 503, {compute['completed']} done"
        )
        rate = cache.get("hit_rate")
        lines.append(
            f"pre-segmentations: {cache['ready']} ready for model version {cache['model_version']}; "
            f"{cache['hits']} hits, {cache['misses']} misses" + (f" ({rate:.0%} hits)" if rate is not None else "")
        )
    return lines


def run_status(args: argparse.Namespace) -> int:
    status = fetch_status(args.server, token=args.token)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print("\n".join(status_lines(status)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``status`` to the ``activelabel`` command line."""
    parser = subparsers.add_parser("status", help="a running server's project numbers, queue and cache")
    parser.add_argument("--json", action="store_true", help="print the server's whole answer as JSON")
    add_server_options(parser, token_of="an")
    parser.set_defaults(func=run_status)
