"""Lambda's invocation record, sent to an asynchronous invocation's on-success / on-failure
destination."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

Condition = Literal["Success", "RetriesExhausted", "EventAgeExceeded"]
CONDITIONS: frozenset[str] = frozenset({"Success", "RetriesExhausted", "EventAgeExceeded"})


def destination_record(
    *,
    request_id: str,
    function_arn: str,
    condition: Condition,
    approximate_invoke_count: int,
    request_payload: Any,
    status_code: int | None,
    function_error: str | None = None,
    response_payload: Any = None,
    executed_version: str = "$LATEST",
    timestamp: float | None = None,
) -> dict[str, Any]:
    """The record as Lambda shapes it.

    ``status_code`` is the status of the last invoke; ``None`` means the event was never run
    (e.g. it was too old before its first attempt): the record then has no ``responseContext``
    and no ``responsePayload``. ``functionError`` appears only when the function failed.
    ``timestamp`` is epoch seconds (default: now), written as ISO 8601 with milliseconds.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"unknown destination condition {condition!r}")
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": iso_timestamp(time.time() if timestamp is None else timestamp),
        "requestContext": {
            "requestId": request_id,
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": approximate_invoke_count,
        },
        "requestPayload": request_payload,
    }
    if status_code is not None:
        response_context: dict[str, Any] = {
            "statusCode": status_code,
            "executedVersion": executed_version,
        }
        if function_error is not None:
            response_context["functionError"] = function_error
        record["responseContext"] = response_context
        record["responsePayload"] = response_payload
    return record


def iso_timestamp(epoch_seconds: float) -> str:
    """``2019-11-14T18:16:05.568Z``: UTC, millisecond precision, as Lambda writes it."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
