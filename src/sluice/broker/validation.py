"""Checks shared by every broker backend, so all of them refuse the same bad input alike."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sluice.broker.contract import (
    MAX_DELAY,
    MAX_RETENTION,
    MAX_VISIBILITY_TIMEOUT,
    MIN_RETENTION,
    OutgoingMessage,
    QueueConfig,
)
from sluice.errors import MessageTooLarge, ValidationError

MAX_QUEUE_NAME = 80


def validate_queue_config(config: QueueConfig) -> None:
    name = config.name
    base = name[:-5] if name.endswith(".fifo") else name
    if (
        not base
        or len(name) > MAX_QUEUE_NAME
        or not base.replace("-", "").replace("_", "").isalnum()
    ):
        raise ValidationError(
            f"queue name {name!r}: 1-80 letters, digits, '-' or '_' (FIFO names end in '.fifo')"
        )
    _range(name, "visibility_timeout", config.visibility_timeout, 0, MAX_VISIBILITY_TIMEOUT)
    _range(name, "retention", config.retention, MIN_RETENTION, MAX_RETENTION)
    _range(name, "delay", config.delay, 0, MAX_DELAY)
    _range(name, "max_message_size", config.max_message_size, 1024, 1024 * 1024)
    if config.max_receive_count is not None:
        _range(name, "max_receive_count", config.max_receive_count, 1, 1000)
        if not config.dead_letter:
            raise ValidationError(f"queue {name!r}: max_receive_count needs a dead_letter queue")
    if config.dead_letter:
        if config.max_receive_count is None:
            raise ValidationError(f"queue {name!r}: dead_letter needs max_receive_count")
        if config.dead_letter == name:
            raise ValidationError(f"queue {name!r} cannot be its own dead-letter queue")
        if config.dead_letter.endswith(".fifo") != config.fifo:
            raise ValidationError(f"queue {name!r}: a DLQ must be of the same type (FIFO or not)")
    if config.max_backlog is not None and config.max_backlog < 1:
        raise ValidationError(f"queue {name!r}: max_backlog must be positive")


def validate_messages(config: QueueConfig, messages: Sequence[OutgoingMessage]) -> None:
    """Refuse a whole batch before anything is stored if any message is invalid. This runs for
    every message of every send, so the queue's settings are read once, outside the loop."""
    if not messages:
        raise ValidationError("a send needs at least one message")
    fifo, limit = config.fifo, config.max_message_size
    for i, m in enumerate(messages):
        body = m.body
        if not isinstance(body, str):
            raise ValidationError(f"message {i}: body must be a string")
        size = len(body) if body.isascii() else len(body.encode())
        if m.attributes:
            size += attributes_size(m.attributes)
            for key, attr in m.attributes.items():
                if not isinstance(attr, dict) or "DataType" not in attr:
                    raise ValidationError(f"message {i}: attribute {key!r} needs a DataType")
        if size > limit:
            raise MessageTooLarge(
                f"message {i} is {size} bytes; queue {config.name!r} accepts at most {limit}"
            )
        if m.delay is not None:
            if fifo:
                raise ValidationError(
                    f"message {i}: FIFO queues take a delay per queue, not per message"
                )
            _range(config.name, "delay", m.delay, 0, MAX_DELAY)
        if fifo:
            if not m.group_id:
                raise ValidationError(f"message {i}: a FIFO queue needs a message group id")
            if not m.deduplication_id and not config.content_based_deduplication:
                raise ValidationError(
                    f"message {i}: no deduplication id and content-based deduplication is off"
                )
        elif m.group_id or m.deduplication_id:
            raise ValidationError(f"message {i}: group and deduplication ids are for FIFO queues")


def attributes_size(attributes: object) -> int:
    if not attributes:
        return 0
    total = 0
    for key, attr in attributes.items():  # type: ignore[attr-defined]
        total += len(key) + sum(len(str(v)) for v in attr.values())
    return total


def md5_of_body(body: str) -> str:
    return hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()


def content_dedup_id(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def _range(queue: str, what: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ValidationError(f"queue {queue!r}: {what} must be between {low:g} and {high:g}")
