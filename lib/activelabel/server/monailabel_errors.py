"""MONAI Label's errors answered for what they are: the caller's fault a 4xx with the reason, a server fault a 5xx.

MONAI Label raises :class:`MONAILabelException` for an unknown strategy or model, an image or
label that does not exist, and answers several inputs it cannot use with ``HTTPException(500)``;
without help every one of them reaches the client as a bare "Internal Server Error".  Here:

* :class:`MONAILabelException` is answered by its kind: ``ImageNotFoundException`` and
  ``LabelNotFoundException`` 404, ``INVALID_INPUT`` 422, any other kind stays a 500 (with the
  message, and logged: it is the app's or the server's fault, not the request's);
* the routes that read JSON out of a form field (``params``, ``info``, ``wsi``) check it first:
  anything but a JSON object is a 422 naming the field (MONAI Label would fail on it with a 500);
* MONAI Label's 500s that are the caller's fault (no image given, weights sent for a model that
  does not exist) are rewritten to 422/404 with a reason;
* integer query parameters MONAI Label passes on unchecked (``GET /logs/?lines=``, which ends in an
  ``OverflowError`` past the machine's integers) are a 422 outside their range;
* ``PUT /session/?uncompress=true`` with an upload that is no archive (or a broken one) is a 422;
* ``GET /logs/gpu`` on a machine without ``nvidia-smi`` answers 200 with that explanation.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from monailabel.endpoints.wsi_infer import WSIInput
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)
from pydantic import BaseModel, ValidationError

from activelabel.server.offload import find_route, like, replace_endpoint

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: Mapping[MONAILabelError, int] = {MONAILabelError.INVALID_INPUT: 422}
"""The status of each :class:`MONAILabelError` kind that is the caller's fault; any other kind is a 500."""

JSON_FORM_FIELDS: Mapping[tuple[str, str], Mapping[str, type[BaseModel] | None]] = {
    ("POST", "/infer/{model}"): {"params": None},
    ("POST", "/infer/wsi_v2/{model}"): {"wsi": WSIInput},
    ("PUT", "/datastore/image"): {"params": None},
    ("PUT", "/datastore/label"): {"params": None},
    ("PUT", "/datastore/image/info"): {"info": None},
    ("PUT", "/datastore/label/info"): {"info": None},
}
"""MONAI Label routes whose form fields carry a JSON object (checked against a model where one is named)."""

CALLER_FAULT_ROUTES = (("POST", "/infer/{model}"), ("POST", "/infer/wsi_v2/{model}"), ("PUT", "/model/{model}"))
"""MONAI Label routes that answer some of the caller's mistakes with a 500 (see :data:`CALLER_FAULTS`)."""

INTEGER_RANGES: Mapping[tuple[str, str], Mapping[str, tuple[int, int]]] = {
    ("GET", "/logs/"): {"lines": (-1_000_000, 1_000_000), "refresh": (-86_400, 86_400)},
}
"""Integer query parameters of MONAI Label routes and the range each accepts (inclusive)."""

BAD_ARCHIVE_ERRORS = (shutil.ReadError, zipfile.BadZipFile, tarfile.TarError, EOFError)
"""What unpacking an upload that is no archive, or a truncated one, raises."""

BAD_UPLOAD_ROUTES: Mapping[tuple[str, str], tuple[tuple[type[Exception], ...], str]] = {
    ("PUT", "/session/"): (
        BAD_ARCHIVE_ERRORS,
        "with uncompress=true the upload must be a .zip, .tar, .tar.gz, .tar.bz2 or .tar.xz archive, got {error}.",
    ),
}
"""MONAI Label routes that fail with a 500 on an upload they cannot read: the errors and the 422's reason."""


@dataclass(frozen=True)
class CallerFault:
    """One of MONAI Label's 500 details that is really the caller's fault, and what to answer instead."""

    detail: re.Pattern[str]
    status: int
    reason: str
    """The new detail; ``{name}`` fields are filled from the pattern's groups."""


CALLER_FAULTS = (
    CallerFault(
        re.compile(r"Neither Image nor File not Session ID input is provided"),
        422,
        "no image to run on: send an image id (query 'image'), an image file (form field 'file') "
        "or a session id (query 'session_id'), got none of them.",
    ),
    CallerFault(
        re.compile(r"Model File Name NOT configured for (?P<model>.*)"),
        404,
        "no model of this app takes weights under that name, got '{model}'; GET /info/ lists the models.",
    ),
    CallerFault(
        re.compile(r"DICOM SEG format is not supported in a non-DICOM datastore"),
        422,
        "output 'dicom_seg' needs a DICOMweb datastore, got a local one; ask for output 'image' or 'json'.",
    ),
)

NO_GPU = (
    "no GPU information: nvidia-smi is not installed on this server, so it has no NVIDIA GPU (or no driver "
    "for it); training, scoring and inference run on the CPU.\n"
)
NVIDIA_SMI_TIMEOUT_S = 30.0


def status_of(error: MONAILabelException) -> int:
    """The HTTP status that answers ``error``: 404 for a missing image or label, 422 for bad input, else 500."""
    if isinstance(error, ImageNotFoundException | LabelNotFoundException):
        return 404
    return STATUS_BY_ERROR.get(error.error, 500)


async def _monailabel_exception(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, MONAILabelException)
    status = status_of(error)
    if status >= 500:
        logger.error("%s %s: %s: %s", request.method, request.url.path, error.error.value, error.msg, exc_info=error)
        detail = f"{error.error.value}: {error.msg}"
    else:
        detail = str(error.msg)
    return JSONResponse({"detail": detail}, status_code=status)


def caller_fault(error: HTTPException) -> HTTPException | None:
    """The 4xx that should have answered MONAI Label's ``error``, or ``None`` when it is a genuine 500."""
    if error.status_code != 500 or not isinstance(error.detail, str):
        return None
    for fault in CALLER_FAULTS:
        match = fault.detail.fullmatch(error.detail)
        if match is not None:
            return HTTPException(status_code=fault.status, detail=fault.reason.format(**match.groupdict()))
    return None


def check_json_object(name: str, value: object, model: type[BaseModel] | None = None) -> None:
    """Raise a 422 unless the form field ``name`` is empty or a JSON object (valid for ``model`` when given).

    Raises:
        HTTPException: 422 with the field, what it must be and what it got.
    """
    if value is None or value == "":
        return
    shown = repr(value if not isinstance(value, str) or len(value) <= 80 else value[:80] + "...")
    if not isinstance(value, str):
        raise HTTPException(status_code=422, detail=f"form field '{name}' must be a JSON object, got {shown}.")
    try:
        parsed = json.loads(value)
    except ValueError as error:
        raise HTTPException(
            status_code=422, detail=f"form field '{name}' must be a JSON object, got {shown} ({error})."
        ) from None
    if not isinstance(parsed, dict):
        raise HTTPException(
            status_code=422,
            detail=f"form field '{name}' must be a JSON object, got a JSON {type(parsed).__name__}: {shown}.",
        )
    if model is not None:
        try:
            model.model_validate(parsed)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in problem['loc']) or name}: {problem['msg']}"
                for problem in error.errors()
            )
            raise HTTPException(
                status_code=422, detail=f"form field '{name}' is not a valid {model.__name__}, got {problems}."
            ) from None


def check_range(name: str, value: object, low: int, high: int) -> None:
    """Raise a 422 unless the integer parameter ``name`` is absent or within ``low``..``high``.

    Raises:
        HTTPException: 422 with the parameter, its range and what it got.
    """
    if isinstance(value, int) and not low <= value <= high:
        raise HTTPException(status_code=422, detail=f"'{name}' must be from {low} to {high}, got {value}.")


def checked(
    endpoint: Callable[..., Any],
    *,
    json_fields: Mapping[str, type[BaseModel] | None] | None = None,
    ranges: Mapping[str, tuple[int, int]] | None = None,
    bad_upload: tuple[tuple[type[Exception], ...], str] | None = None,
) -> Callable[..., Any]:
    """``endpoint`` with its JSON form fields and integer ranges checked first, its caller-fault 500s answered as 4xx.

    ``bad_upload``: the errors that mean an upload could not be read, and the reason of the 422
    that answers them (``{error}`` is the error's text).
    """
    fields = dict(json_fields or {})
    bounds = dict(ranges or {})
    upload_errors, upload_reason = bad_upload if bad_upload is not None else ((), "")

    def run(**values: Any) -> Any:
        for name, model in fields.items():
            check_json_object(name, values.get(name), model)
        for name, (low, high) in bounds.items():
            check_range(name, values.get(name), low, high)
        try:
            result = endpoint(**values)
            return asyncio.run(result) if inspect.iscoroutine(result) else result
        except HTTPException as error:
            fault = caller_fault(error)
            if fault is None:
                raise
            raise fault from None
        except upload_errors as error:
            raise HTTPException(status_code=422, detail=upload_reason.format(error=repr(str(error)))) from None

    return like(endpoint, run)


def gpu_info(original: Callable[..., Any]) -> Callable[..., Any]:
    """``GET /logs/gpu``: ``nvidia-smi``'s report, or why there is none (200 either way, never a 500)."""

    def run(**_values: Any) -> Response:
        executable = shutil.which("nvidia-smi")
        if executable is None:
            return PlainTextResponse(NO_GPU)
        try:
            result = subprocess.run(
                [executable], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise HTTPException(
                status_code=504, detail=f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT_S:.0f} s."
            ) from None
        if result.returncode != 0:
            return PlainTextResponse(
                f"no GPU information: nvidia-smi exited with {result.returncode}, got '{result.stderr.strip()}'.\n"
                f"{result.stdout}"
            )
        return PlainTextResponse(result.stdout)

    return like(original, run)


def install_monailabel_errors(app: FastAPI) -> None:
    """Answer MONAI Label's exceptions by kind and wrap its routes that answer the caller's mistakes with a 500."""
    app.add_exception_handler(MONAILabelException, _monailabel_exception)
    routes = set(JSON_FORM_FIELDS) | set(CALLER_FAULT_ROUTES) | set(INTEGER_RANGES) | set(BAD_UPLOAD_ROUTES)
    for method, path in sorted(routes):
        route = find_route(app, path, method)
        wrapped = checked(
            route.endpoint,
            json_fields=JSON_FORM_FIELDS.get((method, path)),
            ranges=INTEGER_RANGES.get((method, path)),
            bad_upload=BAD_UPLOAD_ROUTES.get((method, path)),
        )
        replace_endpoint(app, route, wrapped)
    route = find_route(app, "/logs/gpu", "GET")
    replace_endpoint(app, route, gpu_info(route.endpoint))


__all__ = [
    "CALLER_FAULTS",
    "INTEGER_RANGES",
    "JSON_FORM_FIELDS",
    "caller_fault",
    "check_json_object",
    "check_range",
    "install_monailabel_errors",
]
