"""``/openapi.json`` describing what the routes really accept, so clients and the fuzzer send real inputs.

FastAPI derives the document from MONAI Label's signatures, which misdescribe three things:

* every MONAI Label operation lists a ``token`` query parameter: the placeholder of MONAI Label's
  own (disabled) authentication, which nothing reads; ``activelabel serve`` takes credentials
  from the ``Authorization`` header only, so the parameter is dropped;
* the form fields ``params``, ``info`` and ``wsi`` are declared as free strings, while the routes
  parse them as a JSON object (and answer anything else with 422): they are declared as JSON
  (``contentMediaType: application/json``) holding an object;
* integer query parameters without bounds (``GET /logs/?lines=``) get the range the server accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from monailabel.endpoints.wsi_infer import WSIInput

from activelabel.server.monailabel_errors import INTEGER_RANGES, JSON_FORM_FIELDS

IGNORED_QUERY_PARAMETERS = frozenset({"token"})
"""Query parameters MONAI Label's signatures declare but no code reads."""

JSON_DESCRIPTIONS = {
    "params": "a JSON object of request parameters (empty: none)",
    "info": "a JSON object of fields to merge into the stored info (empty: none)",
    "wsi": "a JSON object: the region and tiling of the whole-slide inference",
}
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _resolve(document: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    reference = schema.get("$ref")
    if not isinstance(reference, str) or not reference.startswith("#/"):
        return schema
    node: Any = document
    for part in reference[2:].split("/"):
        node = node[part]
    return node


def _content_schema(model: type[Any] | None) -> dict[str, Any]:
    if model is WSIInput:
        schema = WSIInput.model_json_schema()
        schema.pop("title", None)
        return schema
    return {"type": "object"}


def _bound(schema: dict[str, Any], low: int, high: int) -> None:
    """Give the integer options of a parameter's schema (``anyOf`` included) their range."""
    for option in schema.get("anyOf", [schema]):
        if isinstance(option, dict) and option.get("type") == "integer":
            option["minimum"], option["maximum"] = low, high


def describe_inputs(document: dict[str, Any]) -> dict[str, Any]:
    """Fix ``document`` in place (see the module's docstring) and return it; running it twice changes nothing."""
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in _METHODS:
                continue
            parameters = operation.get("parameters")
            if parameters:
                operation["parameters"] = [
                    p for p in parameters if not (p.get("in") == "query" and p.get("name") in IGNORED_QUERY_PARAMETERS)
                ]
                if not operation["parameters"]:
                    del operation["parameters"]
            for parameter in operation.get("parameters", []):
                bounds = INTEGER_RANGES.get((method.upper(), path), {}).get(parameter.get("name"))
                if bounds is not None and parameter.get("in") == "query":
                    _bound(parameter.get("schema", {}), *bounds)
            fields = JSON_FORM_FIELDS.get((method.upper(), path))
            if not fields:
                continue
            for content in operation.get("requestBody", {}).get("content", {}).values():
                body = _resolve(document, content.get("schema", {}))
                properties = body.get("properties", {})
                for name, model in fields.items():
                    field = properties.get(name)
                    if isinstance(field, dict) and field.get("type") == "string":
                        field["contentMediaType"] = "application/json"
                        field["contentSchema"] = _content_schema(model)
                        field.setdefault("description", JSON_DESCRIPTIONS.get(name, "a JSON object"))
    return document


def install_openapi_fixes(app: FastAPI) -> None:
    """Serve :func:`describe_inputs` of the generated document (rebuilt whenever a route is replaced)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe_inputs(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["describe_inputs", "install_openapi_fixes"]
