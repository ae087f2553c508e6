"""MONAI Label's endpoints moved off the event loop, so no request waits behind another's work.

MONAI Label declares its endpoints ``async def`` but does blocking work inside them (reading
uploads, writing labels, running the network), so while one runs the event loop serves
nothing else: a next-sample request waited behind every inference.  Each such route is
replaced here by an identical one (same path, methods, parameters, dependencies and OpenAPI
description) whose endpoint is a plain function; FastAPI runs plain endpoints in its worker
threads, and the original coroutine runs there on an event loop of its own.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.requests import HTTPConnection

MONAI_LABEL_ENDPOINTS = "monailabel.endpoints"

_ROUTE_FIELDS = (
    "response_model",
    "status_code",
    "tags",
    "dependencies",
    "summary",
    "description",
    "response_description",
    "responses",
    "deprecated",
    "methods",
    "operation_id",
    "response_model_include",
    "response_model_exclude",
    "response_model_by_alias",
    "response_model_exclude_unset",
    "response_model_exclude_defaults",
    "response_model_exclude_none",
    "include_in_schema",
    "response_class",
    "name",
    "callbacks",
    "openapi_extra",
    "generate_unique_id_function",
    "dependency_overrides_provider",
    "strict_content_type",
    "max_body_size",
)


def in_worker_thread(endpoint: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """A plain function with ``endpoint``'s signature that runs the coroutine to completion in its own loop."""

    def run(**values: Any) -> Any:
        return asyncio.run(endpoint(**values))

    return like(endpoint, run)


def like(endpoint: Callable[..., Any], function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` given ``endpoint``'s signature, name and docstring, so FastAPI reads the same parameters.

    Not ``functools.wraps``: FastAPI unwraps ``__wrapped__`` and would await the plain function.
    """
    function.__signature__ = inspect.signature(endpoint)  # type: ignore[attr-defined]
    function.__name__ = endpoint.__name__
    function.__qualname__ = endpoint.__qualname__
    function.__doc__ = endpoint.__doc__
    return function


def api_routes(router: APIRouter) -> Iterator[tuple[APIRouter, APIRoute]]:
    """Every API route under ``router`` with the router that holds it, included routers too.

    FastAPI keeps an included router as a reference to the original (``original_router``),
    its routes resolved on the first request, so routes changed before that are served.
    """
    for route in router.routes:
        if isinstance(route, APIRoute):
            yield router, route
        included = getattr(route, "original_router", None)
        if isinstance(included, APIRouter):
            yield from api_routes(included)


def replace_endpoint(app: FastAPI, route: APIRoute, endpoint: Callable[..., Any]) -> APIRoute:
    """Put a route with ``endpoint`` in place of ``route``, every other field of the route kept."""
    fields = {name: getattr(route, name) for name in _ROUTE_FIELDS if hasattr(route, name)}
    replacement = APIRoute(route.path, endpoint, **fields)
    for router, candidate in api_routes(app.router):
        if candidate is route:
            router.routes[router.routes.index(route)] = replacement
            mark_changed = getattr(router, "_mark_routes_changed", None)
            if callable(mark_changed):
                mark_changed()
            app.openapi_schema = None
            return replacement
    raise LookupError(f"route {route.path} is not in the app")


def find_route(app: FastAPI, path: str, method: str) -> APIRoute:
    """The API route serving ``method path``.

    Raises:
        LookupError: when no route does (the MONAI Label version changed its routes).
    """
    for _, route in api_routes(app.router):
        if route.path == path and method.upper() in route.methods:
            return route
    raise LookupError(f"no route {method.upper()} {path} in the app")


def offload_blocking_endpoints(app: FastAPI, *, module: str = MONAI_LABEL_ENDPOINTS) -> list[str]:
    """Run every ``async def`` endpoint defined under ``module`` in FastAPI's worker threads.

    Endpoints that take the ``Request`` itself stay on the event loop: they may await its body,
    which only the server's own loop can read (MONAI Label's DICOMweb proxy does).

    Returns ``"METHOD path"`` of each route changed.
    """
    changed = []
    for _, route in list(api_routes(app.router)):
        if not inspect.iscoroutinefunction(route.endpoint) or _takes_request(route.endpoint):
            continue
        if not (route.endpoint.__module__ or "").startswith(module):
            continue
        replace_endpoint(app, route, in_worker_thread(route.endpoint))
        changed += [f"{method} {route.path}" for method in sorted(route.methods)]
    return changed


def _takes_request(endpoint: Callable[..., Any]) -> bool:
    """Whether a parameter of ``endpoint`` is the request (or websocket) itself."""
    try:
        hints = typing.get_type_hints(endpoint)
    except (NameError, TypeError):  # an annotation that does not resolve: judge by the raw ones
        hints = {p.name: p.annotation for p in inspect.signature(endpoint).parameters.values()}
    hints.pop("return", None)
    return any(isinstance(hint, type) and issubclass(hint, HTTPConnection) for hint in hints.values())
