"""An OpenAPI 3.1 description of an app's routes, as API Gateway exports one (``ANY`` routes use
the ``x-amazon-apigateway-any-method`` key; ``$default`` is the path ``/$default``)."""

from __future__ import annotations

from typing import Any

from sluice.app import App, FixedResponse, Redirect, RouteSpec
from sluice.gateway.routing import parse_route_key

_ERROR = {
    "description": "An error naming the problem",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _target_name(spec: RouteSpec) -> str:
    t = spec.target
    if isinstance(t, FixedResponse):
        return f"fixed-response:{t.status}"
    if isinstance(t, Redirect):
        return f"redirect:{t.status}"
    return t


def _operation(spec: RouteSpec, params: list[str]) -> dict[str, Any]:
    target = _target_name(spec)
    kind = target.partition(":")[0]
    responses: dict[str, Any]
    if kind == "async":
        responses = {
            "202": {
                "description": "Accepted: the invocation is stored",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"requestId": {"type": "string"}},
                        }
                    }
                },
            }
        }
    elif kind == "queue":
        responses = {
            "202": {
                "description": "Accepted: the message is stored",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"messageId": {"type": "string"}},
                        }
                    }
                },
            },
            "429": _ERROR,
        }
    else:
        responses = {"default": {"description": "The target's response"}}
    responses.update({"413": _ERROR, "503": _ERROR})
    if kind in ("function", "proxy"):
        responses.update({"502": _ERROR, "504": _ERROR})
    op: dict[str, Any] = {
        "operationId": spec.route_key,
        "responses": responses,
        "x-sluice-target": target,
    }
    if params:
        op["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
    return op


def openapi_document(app: App) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for spec in app.routes:
        method, path, segments = parse_route_key(spec.route_key)
        params = [s.strip("{}").rstrip("+") for s in segments if s.startswith("{")]
        key = path or "/$default"
        verb = "x-amazon-apigateway-any-method" if method in ("ANY", "") else method.lower()
        paths.setdefault(key, {})[verb] = _operation(spec, params)
    return {
        "openapi": "3.1.0",
        "info": {"title": app.name, "version": "1.0"},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                }
            }
        },
    }
