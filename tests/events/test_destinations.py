"""Lambda's asynchronous invocation record, checked against AWS's documented examples."""

from __future__ import annotations

import orjson
import pytest

from sluice.events.destinations import destination_record, iso_timestamp

FUNCTION_ARN = "arn:aws:lambda:us-east-2:123456789012:function:my-function:$LATEST"
# 2019-11-14T18:16:05.568Z, the documented example's timestamp.
EXAMPLE_TIME = 1573755365.568


def test_failure_record_matches_the_documented_example() -> None:
    record = destination_record(
        request_id="e4b46cbf-b738-xmpl-8880-a18cdf61200e",
        function_arn=FUNCTION_ARN,
        condition="RetriesExhausted",
        approximate_invoke_count=3,
        request_payload={"ORDER_IDS": ["9e07af03-ce31-4ff3-xmpl-36dce652cb4f"]},
        status_code=200,
        function_error="Unhandled",
        response_payload={"errorMessage": "RequestId: e4b46cbf Process exited"},
        timestamp=EXAMPLE_TIME,
    )
    assert record == {
        "version": "1.0",
        "timestamp": "2019-11-14T18:16:05.568Z",
        "requestContext": {
            "requestId": "e4b46cbf-b738-xmpl-8880-a18cdf61200e",
            "functionArn": FUNCTION_ARN,
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3,
        },
        "requestPayload": {"ORDER_IDS": ["9e07af03-ce31-4ff3-xmpl-36dce652cb4f"]},
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "responsePayload": {"errorMessage": "RequestId: e4b46cbf Process exited"},
    }
    assert list(record) == [
        "version",
        "timestamp",
        "requestContext",
        "requestPayload",
        "responseContext",
        "responsePayload",
    ]


def test_success_record_has_no_function_error_and_keeps_a_null_result() -> None:
    record = destination_record(
        request_id="r1",
        function_arn=FUNCTION_ARN,
        condition="Success",
        approximate_invoke_count=1,
        request_payload={"a": 1},
        status_code=200,
        response_payload=None,
        executed_version="7",
        timestamp=0.0,
    )
    assert record["timestamp"] == "1970-01-01T00:00:00.000Z"
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "7"}
    assert "responsePayload" in record and record["responsePayload"] is None
    orjson.dumps(record)  # serializable as is


def test_event_that_never_ran_has_no_response_parts() -> None:
    record = destination_record(
        request_id="r2",
        function_arn=FUNCTION_ARN,
        condition="EventAgeExceeded",
        approximate_invoke_count=0,
        request_payload="raw",
        status_code=None,
        timestamp=EXAMPLE_TIME,
    )
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert "responseContext" not in record
    assert "responsePayload" not in record


def test_unknown_condition_is_refused() -> None:
    with pytest.raises(ValueError, match="Failure"):
        destination_record(
            request_id="r",
            function_arn=FUNCTION_ARN,
            condition="Failure",  # type: ignore[arg-type]
            approximate_invoke_count=1,
            request_payload=None,
            status_code=200,
        )


def test_iso_timestamp_rounds_down_to_milliseconds() -> None:
    assert iso_timestamp(1.9999) == "1970-01-01T00:00:01.999Z"
