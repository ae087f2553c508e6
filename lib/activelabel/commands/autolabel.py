"""``activelabel autolabel``: ask a running server to label every unlabeled volume.

The server runs MONAI Label's batch inference as a background job and stores each result
under the label tag ``auto``, which marks it as made by the model (not a human label, not
used for training) so auditors can review it.  Each auto-label carries its predicted quality
(MC-dropout sample agreement) and triage: below the threshold calibrated on the model's
validation volumes it is sent back to the labeling pool instead of counting as automated.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import requests

from activelabel.commands.server_options import add_server_options
from activelabel.errors import ActiveLabelError
from activelabel.server.status import AUTO_TAG


class AutolabelError(ActiveLabelError, RuntimeError):
    """The server refused the job or it failed."""


def request_autolabel(
    server: str,
    *,
    model: str = "segmentation",
    wait: bool = True,
    timeout: float = 3600.0,
    poll: float = 2.0,
    token: str | None = None,
) -> dict[str, Any]:
    """Start the batch job and (with ``wait``) return the server's status once it finished.

    ``token`` is an admin's API token, sent as ``Authorization: Bearer``, for a server with access control.
    """
    base = server.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # multi_gpu off: MONAI Label would otherwise spread the job over zero GPUs on a CPU machine.
    params = {"label_tag": AUTO_TAG, "max_workers": 1, "logging": "WARNING", "multi_gpu": False}
    try:
        response = requests.post(
            f"{base}/batch/infer/{model}", params={"images": "unlabeled"}, json=params, headers=headers, timeout=60
        )
    except requests.ConnectionError as error:
        raise AutolabelError(f"cannot reach the server at {base}: {error.__class__.__name__}") from None
    if response.status_code != 200:
        raise AutolabelError(f"the server refused the job ({response.status_code}): {response.text[:200]}")
    if not wait:
        return {"started": True}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = requests.get(f"{base}/batch/infer/", headers=headers, timeout=60)
        if answer.status_code in (401, 403):
            raise AutolabelError(f"the server refused the status request ({answer.status_code}): {answer.text[:200]}")
        task = answer.json()
        if task.get("status") == "ERROR":
            raise AutolabelError("the auto-label job failed; see the server log")
        if task.get("status") == "DONE":
            return requests.get(f"{base}/activelabel/status", headers=headers, timeout=60).json()
        time.sleep(poll)
    raise AutolabelError(f"the auto-label job did not finish within {timeout:.0f}s")


def run_autolabel(args: argparse.Namespace) -> int:
    status = request_autolabel(
        args.server, model=args.model, wait=not args.no_wait, timeout=args.timeout, token=args.token
    )
    if args.no_wait:
        print("auto-label job started")
        return 0
    automation = status["automation"]
    print(
        f"auto-labeled {automation['auto_labeled']} of {status['images']['total']} volumes "
        f"(automation {automation['automation']:.1%}, model version {status['model']['version']})"
    )
    if automation.get("quality_threshold") is not None:
        expected = automation.get("expected_accuracy")
        print(
            f"triage: {automation['sent_back']} sent back to the labeling pool (predicted quality below "
            f"{automation['quality_threshold']:.3f}); expected audit accuracy of the accepted: "
            + (f"{expected:.1%}" if expected is not None else "unknown")
            + f" (calibrated on {automation['calibration_volumes']} validation volumes)"
        )
    else:
        print("triage: the model has no calibration (no validation volumes); every auto-label is accepted")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``autolabel`` to the ``activelabel`` command line."""
    parser = subparsers.add_parser("autolabel", help="label every unlabeled volume with the current model")
    parser.add_argument("--model", default="segmentation", help="infer task (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job")
    parser.add_argument("--no-wait", action="store_true", help="start the job and return")
    add_server_options(parser, token_of="an admin's")
    parser.set_defaults(func=run_autolabel)
