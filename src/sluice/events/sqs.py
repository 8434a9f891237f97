"""The Lambda SQS event, built from broker messages, and Lambda's partial-batch-response rules.

`sqs_event` is on the dispatcher's hot path (batches of up to 10,000 records): every record is
one dict literal, nothing is deep-copied, and messages without attributes (the common case)
share no work with those that have them.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from sluice.broker.contract import Message

EVENT_SOURCE = "aws:sqs"


def queue_arn(name: str, region: str, account: str) -> str:
    """``arn:aws:sqs:<region>:<account>:<name>``, as SQS names a queue."""
    return f"arn:aws:sqs:{region}:{account}:{name}"


def sqs_event(messages: Iterable[Message], queue_arn: str, region: str) -> dict[str, Any]:
    """The event Lambda hands a function subscribed to a queue: ``{"Records": [...]}``.

    All ``attributes`` values are strings, as SQS sends them. ``SenderId`` is the queue's
    account (what SQS reports for messages the account itself sent).
    """
    sender_id = _account_of(queue_arn)
    records: list[dict[str, Any]] = []
    append = records.append
    for m in messages:
        attributes = {
            "ApproximateReceiveCount": str(m.receive_count),
            "SentTimestamp": str(m.sent_timestamp),
            "SenderId": sender_id,
            "ApproximateFirstReceiveTimestamp": str(m.first_receive_timestamp),
        }
        if m.group_id is not None:  # FIFO
            if m.sequence_number is not None:
                attributes["SequenceNumber"] = m.sequence_number
            attributes["MessageGroupId"] = m.group_id
            if m.deduplication_id is not None:
                attributes["MessageDeduplicationId"] = m.deduplication_id
        append(
            {
                "messageId": m.message_id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "attributes": attributes,
                "messageAttributes": lambda_message_attributes(m.attributes)
                if m.attributes
                else {},
                "md5OfBody": m.md5_of_body,
                "eventSource": EVENT_SOURCE,
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


def lambda_message_attributes(attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """SQS API attribute shape (``StringValue``, ``DataType``, ...) to the lower-camel shape
    Lambda puts in SQS records. The list fields are always present, as Lambda sends them."""
    out: dict[str, Any] = {}
    for name, attr in attributes.items():
        converted: dict[str, Any] = {}
        string_value = attr.get("StringValue")
        if string_value is not None:
            converted["stringValue"] = string_value
        binary_value = attr.get("BinaryValue")
        if binary_value is not None:
            converted["binaryValue"] = _b64(binary_value)
        converted["stringListValues"] = list(attr.get("StringListValues") or ())
        converted["binaryListValues"] = [_b64(v) for v in attr.get("BinaryListValues") or ()]
        converted["dataType"] = attr.get("DataType", "String")
        out[name] = converted
    return out


def batch_item_failures(response: Any, batch_ids: Collection[str]) -> set[str] | None:
    """The message ids a ReportBatchItemFailures response names as failed.

    Lambda's documented rules: no response, a response without ``batchItemFailures``, or a
    null/empty list means the whole batch succeeded (empty set). An item whose
    ``itemIdentifier`` is missing, null, empty, not a string or not a message of this batch, or
    a response of the wrong shape, fails the whole batch: ``None`` means "all failed".
    """
    if response is None:
        return set()
    if not isinstance(response, dict):
        return None
    items = response.get("batchItemFailures")
    if items is None:
        return set()
    if not isinstance(items, list):
        return None
    ids = batch_ids if isinstance(batch_ids, (set, frozenset)) else set(batch_ids)
    failed: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            return None
        identifier = item.get("itemIdentifier")
        if not isinstance(identifier, str) or not identifier or identifier not in ids:
            return None
        failed.add(identifier)
    return failed


def _account_of(arn: str) -> str:
    parts = arn.split(":", 5)
    return parts[4] if len(parts) > 4 else ""


def _b64(value: str | bytes | bytearray | memoryview) -> str:
    # The broker keeps binary attribute values base64-encoded (JSON-safe); raw bytes are
    # accepted too, from a caller that built a Message in memory.
    if isinstance(value, str):
        return value
    return base64.b64encode(bytes(value)).decode("ascii")
