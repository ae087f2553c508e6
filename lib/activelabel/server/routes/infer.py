"""``POST /infer/{model}``: MONAI Label's route, answered with cache and model-version headers.

The route keeps MONAI Label's parameters and behaviour (it calls MONAI Label's own
``run_inference``); it runs in a worker thread instead of on the event loop, and its answer
carries two headers:

* ``X-ActiveLabel-Presegmentation``: ``hit`` when the pre-segmentation scoring made with the
  current model was served without a network pass, ``miss`` when it was computed;
* ``X-ActiveLabel-Model-Version``: the model version that made the label.

A network pass that finds the compute pool full ends in 503 with ``Retry-After`` (see
:func:`install_infer_route`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from monailabel.endpoints.infer import api_run_inference, run_inference

from activelabel.server.offload import find_route, like, replace_endpoint
from activelabel.tasks.infer import INFER_OUTCOME, InferOutcome
from activelabel.workers.compute import ComputeBusy

PRESEGMENTATION_HEADER = "X-ActiveLabel-Presegmentation"
MODEL_VERSION_HEADER = "X-ActiveLabel-Model-Version"


def _infer(**values: Any) -> Response:
    values.pop("user", None)  # resolved by the route's RBAC dependency; run_inference takes no user
    outcome = InferOutcome()
    token = INFER_OUTCOME.set(outcome)
    try:
        response = run_inference(**values)
    finally:
        INFER_OUTCOME.reset(token)
    if not isinstance(response, Response):
        response = JSONResponse(jsonable_encoder(response))
    if outcome.cache is not None:
        response.headers[PRESEGMENTATION_HEADER] = outcome.cache.value
    if outcome.model_version is not None:
        response.headers[MODEL_VERSION_HEADER] = str(outcome.model_version)
    return response


async def _busy(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ComputeBusy)
    return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": str(error.retry_after)})


def install_infer_route(app: FastAPI) -> None:
    """Replace MONAI Label's infer route by :func:`_infer` and answer :class:`ComputeBusy` with 503."""
    route = find_route(app, "/infer/{model}", "POST")
    replace_endpoint(app, route, like(api_run_inference, _infer))
    app.add_exception_handler(ComputeBusy, _busy)
