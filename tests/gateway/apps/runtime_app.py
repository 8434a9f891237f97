"""An app served through the real runtime (execution environments) by the gateway tests."""

from __future__ import annotations

import os
from typing import Any

import sluice

app = sluice.App("gwruntime")


@app.route("GET /hello/{name}")
def hello(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {
        "statusCode": 200,
        "headers": {"x-pid": str(os.getpid()), "x-request-id": context.aws_request_id},
        "body": f"hello {event['pathParameters']['name']}",
    }


@app.route("POST /fail")
def fail(event: dict[str, Any], context: Any) -> None:
    raise ValueError("nope")


@app.route("GET /slow", timeout=0.2)  # the integration timeout; the function's own is 3 s
def slow(event: dict[str, Any], context: Any) -> dict[str, Any]:
    import time

    time.sleep(0.6)
    return {"statusCode": 200, "headers": {"x-pid": str(os.getpid())}, "body": "late"}
