"""The Lambda SQS event shape, checked field by field against AWS's documented example, and
Lambda's ReportBatchItemFailures rules."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from sluice.broker.contract import Message
from sluice.events.sqs import batch_item_failures, queue_arn, sqs_event

ARN = "arn:aws:sqs:us-east-2:123456789012:my-queue"


def _message(**overrides: object) -> Message:
    body = overrides.pop("body", "Test message.")
    fields: dict[str, object] = {
        "message_id": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "receipt_handle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "body": body,
        "attributes": {},
        "receive_count": 1,
        "sent_timestamp": 1545082649183,
        "first_receive_timestamp": 1545082649185,
        "md5_of_body": hashlib.md5(str(body).encode()).hexdigest(),
    }
    fields.update(overrides)
    return Message(**fields)  # type: ignore[arg-type]


def test_queue_arn() -> None:
    assert queue_arn("my-queue", "us-east-2", "123456789012") == ARN
    assert queue_arn("jobs.fifo", "eu-west-1", "000000000000") == (
        "arn:aws:sqs:eu-west-1:000000000000:jobs.fifo"
    )


def test_standard_record_matches_the_documented_example_field_by_field() -> None:
    event = sqs_event([_message()], ARN, "us-east-2")
    assert list(event) == ["Records"]
    (record,) = event["Records"]
    # The documented record's keys, all of them and no others.
    assert set(record) == {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    assert record["messageId"] == "059f36b4-87a3-44ab-83d2-661975830a7d"
    assert record["receiptHandle"] == "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a..."
    assert record["body"] == "Test message."
    assert record["attributes"] == {
        "ApproximateReceiveCount": "1",
        "SentTimestamp": "1545082649183",
        "SenderId": "123456789012",
        "ApproximateFirstReceiveTimestamp": "1545082649185",
    }
    assert all(isinstance(v, str) for v in record["attributes"].values())
    assert record["messageAttributes"] == {}
    assert record["md5OfBody"] == hashlib.md5(b"Test message.").hexdigest()
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == ARN
    assert record["awsRegion"] == "us-east-2"


def test_fifo_record_has_sequence_group_and_deduplication_ids() -> None:
    message = _message(
        group_id="1",
        deduplication_id="e9b9a6c1d8bd95e2b1d4a3c5e6f70819",
        sequence_number="18849496460467696128",
        receive_count=3,
    )
    (record,) = sqs_event([message], ARN.replace("my-queue", "fifo.fifo"), "us-east-2")["Records"]
    assert record["attributes"] == {
        "ApproximateReceiveCount": "3",
        "SentTimestamp": "1545082649183",
        "SenderId": "123456789012",
        "ApproximateFirstReceiveTimestamp": "1545082649185",
        "SequenceNumber": "18849496460467696128",
        "MessageGroupId": "1",
        "MessageDeduplicationId": "e9b9a6c1d8bd95e2b1d4a3c5e6f70819",
    }


def test_message_attributes_convert_to_lambdas_lower_camel_shape() -> None:
    attributes = {
        "Attribute1": {"DataType": "String", "StringValue": "AttributeValue1"},
        "Attribute2": {"DataType": "Number", "StringValue": "123"},
        "Attribute3": {"DataType": "Binary", "BinaryValue": "MTEwMA=="},
        "Raw": {"DataType": "Binary.png", "BinaryValue": b"\x89PNG"},
    }
    (record,) = sqs_event([_message(attributes=attributes)], ARN, "us-east-2")["Records"]
    assert record["messageAttributes"] == {
        "Attribute1": {
            "stringValue": "AttributeValue1",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        },
        "Attribute2": {
            "stringValue": "123",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Number",
        },
        "Attribute3": {
            "binaryValue": "MTEwMA==",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary",
        },
        "Raw": {
            "binaryValue": "iVBORw==",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary.png",
        },
    }


def test_event_is_json_serializable_and_keeps_batch_order() -> None:
    messages = [_message(message_id=f"m{i}", body=f'{{"n": {i}}}') for i in range(100)]
    event = sqs_event(messages, ARN, "us-east-2")
    decoded = orjson.loads(orjson.dumps(event))
    assert [r["messageId"] for r in decoded["Records"]] == [f"m{i}" for i in range(100)]
    assert decoded["Records"][42]["body"] == '{"n": 42}'


def test_records_do_not_share_mutable_parts() -> None:
    event = sqs_event([_message(message_id="a"), _message(message_id="b")], ARN, "r")
    first, second = event["Records"]
    first["attributes"]["SenderId"] = "changed"
    first["messageAttributes"]["x"] = {}
    assert second["attributes"]["SenderId"] == "123456789012"
    assert second["messageAttributes"] == {}


def test_empty_batch_is_an_empty_record_list() -> None:
    assert sqs_event([], ARN, "us-east-2") == {"Records": []}


# ---------------------------------------------------------------------- batch item failures

IDS = ["id1", "id2", "id3"]


@pytest.mark.parametrize(
    "response",
    [None, {}, {"statusCode": 200}, {"batchItemFailures": []}, {"batchItemFailures": None}],
)
def test_complete_success_responses(response: object) -> None:
    assert batch_item_failures(response, IDS) == set()


def test_listed_identifiers_are_the_failures() -> None:
    response = {"batchItemFailures": [{"itemIdentifier": "id2"}, {"itemIdentifier": "id3"}]}
    assert batch_item_failures(response, IDS) == {"id2", "id3"}
    assert batch_item_failures(response, set(IDS)) == {"id2", "id3"}


@pytest.mark.parametrize(
    "response",
    [
        {"batchItemFailures": [{"itemIdentifier": ""}]},  # empty string
        {"batchItemFailures": [{"itemIdentifier": None}]},  # null
        {"batchItemFailures": [{"itemId": "id1"}]},  # bad key name
        {"batchItemFailures": [{"itemIdentifier": "not-in-batch"}]},  # unknown message id
        {"batchItemFailures": [{"itemIdentifier": "id1"}, {"itemIdentifier": "nope"}]},
        {"batchItemFailures": [{"itemIdentifier": 1}]},
        {"batchItemFailures": ["id1"]},  # ids alone, not objects
        {"batchItemFailures": {"itemIdentifier": "id1"}},  # not a list
        {"batchItemFailures": "id1"},
        ["id1"],  # not an object
        "id1",
    ],
)
def test_malformed_responses_fail_the_whole_batch(response: object) -> None:
    assert batch_item_failures(response, IDS) is None
