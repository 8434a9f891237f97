"""Request validation as API Gateway models do it: the body must satisfy a JSON Schema.

The subset of JSON Schema (draft 4, which API Gateway models use) that request bodies need:
``type``, ``required``, ``properties``, ``additionalProperties`` (boolean), ``items``,
``enum``, ``minLength``/``maxLength``, ``minimum``/``maximum``, ``minItems``/``maxItems``.
A schema using any other keyword is refused when the app starts, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from sluice.errors import ValidationError

KNOWN = {
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "enum",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "title",
    "description",
    "$schema",
}
TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def check_schema(schema: Mapping[str, Any], where: str = "schema") -> None:
    unknown = set(schema) - KNOWN
    if unknown:
        raise ValidationError(f"{where}: unsupported JSON Schema keywords {sorted(unknown)}")
    types = schema.get("type")
    for t in [types] if isinstance(types, str) else types or []:
        if t not in TYPES:
            raise ValidationError(f"{where}: unknown type {t!r}")
    for name, sub in (schema.get("properties") or {}).items():
        check_schema(sub, f"{where}.{name}")
    if isinstance(schema.get("items"), Mapping):
        check_schema(schema["items"], f"{where}[]")


def validate(value: Any, schema: Mapping[str, Any], path: str = "body") -> str | None:
    """The first problem with ``value``, worded for the client, or None when it is valid."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(TYPES[t](value) for t in names):
            return f"{path} must be of type {' or '.join(names)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path} must be one of {schema['enum']}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{path} must be at least {schema['minLength']} characters"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{path} must be at most {schema['maxLength']} characters"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{path} must be >= {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{path} must be <= {schema['maximum']}"
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                return f"{path}.{name} is required"
        properties = schema.get("properties") or {}
        for name, item in value.items():
            if name in properties:
                problem = validate(item, properties[name], f"{path}.{name}")
                if problem:
                    return problem
            elif schema.get("additionalProperties") is False:
                return f"{path}.{name} is not allowed"
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            return f"{path} must have at least {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{path} must have at most {schema['maxItems']} items"
        if isinstance(schema.get("items"), Mapping):
            for i, item in enumerate(value):
                problem = validate(item, schema["items"], f"{path}[{i}]")
                if problem:
                    return problem
    return None


class BodyValidator:
    """Checks a request body against a route's schema; raises a 400 `ValidationError`."""

    def __init__(self, schema: Mapping[str, Any], route_key: str) -> None:
        check_schema(schema, f"route {route_key!r} schema")
        self.schema = schema

    def __call__(self, body: bytes) -> None:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValidationError("Invalid request body: not valid JSON") from None
        problem = validate(value, self.schema)
        if problem:
            raise ValidationError(f"Invalid request body: {problem}")


def accepted_body(template: Mapping[str, Any] | None, **values: str) -> bytes:
    """The 202 body: the route's template with {messageId}/{requestId} filled in, or the
    default ``{"messageId": ...}`` / ``{"requestId": ...}``."""
    if template is None:
        return orjson.dumps(values)

    def fill(v: Any) -> Any:
        if isinstance(v, str):
            for key, value in values.items():
                v = v.replace("{" + key + "}", value)
            return v
        if isinstance(v, Mapping):
            return {k: fill(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fill(x) for x in v]
        return v

    return orjson.dumps(fill(template))
