"""The smallest AWS Lambda-style handler: what a cold start must at least import."""

from __future__ import annotations

from typing import Any


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    return {"statusCode": 200, "body": "Hello, world!"}
