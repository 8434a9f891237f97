"""Asynchronous (Event) invocation, built from the core primitives as Lambda does it: the invoke
is a message on the function's internal queue, durably stored before the caller gets its request
id; a `Poller` drains that queue into the function, retrying failures (0-2 times, with delays)
until they succeed, run out of retries, or outlive the maximum event age; the outcome goes to the
function's on-success / on-failure destination as Lambda's destination record."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import orjson

from sluice.app import FunctionSpec
from sluice.broker.contract import Broker, Message, OutgoingMessage, QueueConfig
from sluice.errors import InvalidPayload, Throttled
from sluice.events.destinations import Condition, destination_record
from sluice.runtime.contract import InvocationResult, Invoker

log = logging.getLogger("sluice.dispatch")

ASYNC_QUEUE_PREFIX = "_async_"
# Where an async invocation goes that cannot be run at all: malformed, or received this many
# times without finishing (its dispatcher crashed each time), with the reason kept.
ASYNC_DEAD_LETTER = "_async_dlq"
ASYNC_MAX_RECEIVES = 10
MAX_ASYNC_PAYLOAD = 256 * 1024  # Lambda's limit for an Event invoke payload
THROTTLE_RETRY = 1.0  # seconds; throttles are retried until the event's maximum age


def async_queue_name(function: str) -> str:
    return f"{ASYNC_QUEUE_PREFIX}{function}"


def async_queue_configs(functions: Iterable[FunctionSpec]) -> list[QueueConfig]:
    """The internal queues: the shared dead-letter queue first, then one per function."""
    configs = [QueueConfig(name=ASYNC_DEAD_LETTER, retention=14 * 24 * 3600.0)]
    for spec in functions:
        # The visibility timeout outlasts the function's timeout, so a crashed dispatcher's
        # invocation comes back (once) rather than running twice concurrently.
        configs.append(
            QueueConfig(
                name=async_queue_name(spec.name),
                visibility_timeout=spec.timeout + 30,
                retention=max(60.0, spec.async_config.max_event_age + 3600),
                max_message_size=MAX_ASYNC_PAYLOAD,
                dead_letter=ASYNC_DEAD_LETTER,
                max_receive_count=ASYNC_MAX_RECEIVES,
            )
        )
    return configs


def _attr(value: str | int | float) -> dict[str, str]:
    if isinstance(value, str):
        return {"DataType": "String", "StringValue": value}
    return {"DataType": "Number", "StringValue": repr(value)}


async def submit_async(
    broker: Broker, function: str, payload: bytes, *, request_id: str | None = None
) -> str:
    """Enqueue an Event invocation; return its request id once it is durable."""
    try:
        text = payload.decode()
        orjson.loads(payload)
    except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        raise InvalidPayload(f"payload for {function!r} is not valid JSON: {exc}") from None
    request_id = request_id or str(uuid.uuid4())
    await broker.send(async_queue_name(function), [event_message(text, request_id)])
    return request_id


def event_message(payload: str, request_id: str) -> OutgoingMessage:
    """The message on a function's internal async queue that is one Event invocation of it
    (``payload`` is its JSON event, checked by the caller)."""
    attrs = {"RequestId": _attr(request_id), "Attempt": _attr(1), "EnqueuedAt": _attr(time.time())}
    return OutgoingMessage(body=payload, attributes=attrs)


class EventInvokeHandler:
    """The batch handler (batch size 1) for one function's internal async queue."""

    def __init__(
        self,
        spec: FunctionSpec,
        broker: Broker,
        invoker: Invoker,
        *,
        function_arn: str,
        retry_delays: Sequence[float],
        submit: Callable[[str, bytes], Awaitable[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self._broker = broker
        self._invoker = invoker
        self._function_arn = function_arn
        self._retry_delays = tuple(retry_delays)
        self._submit = submit
        self._clock = clock
        self._queue = async_queue_name(spec.name)

    async def __call__(self, messages: Sequence[Message]) -> bool:
        ok = True
        for message in messages:
            ok = await self._process(message) and ok
        return ok

    async def _process(self, message: Message) -> bool:
        cfg = self.spec.async_config
        attrs = message.attributes
        try:
            request_id = attrs["RequestId"]["StringValue"]
            attempt = int(attrs["Attempt"]["StringValue"])
            enqueued_at = float(attrs["EnqueuedAt"]["StringValue"])
        except (KeyError, TypeError, ValueError) as exc:
            reason = f"malformed async invocation (not sent by submit_async): {exc!r}"
            log.error("%s: message %s to the DLQ: %s", self._queue, message.message_id, reason)
            await self._broker.dead_letter(self._queue, message.receipt_handle, reason)
            return True
        payload = message.body.encode()

        if self._clock() - enqueued_at > cfg.max_event_age:
            await self._finish(message, payload, request_id, attempt - 1, None, "EventAgeExceeded")
            return True
        try:
            result = await self._invoker.invoke(self.spec.name, payload, request_id=request_id)
        except Throttled:
            # Re-sent rather than made visible again: a throttle is retried until the event's
            # maximum age and must not count towards the queue's receive limit.
            await self._resend(message, dict(attrs), THROTTLE_RETRY)
            return False
        if result.ok:
            await self._finish(message, payload, request_id, attempt, result, "Success")
            return True
        if attempt <= cfg.retries:
            delay = self._retry_delays[min(attempt, len(self._retry_delays)) - 1]
            retry_attrs = dict(attrs)
            retry_attrs["Attempt"] = _attr(attempt + 1)
            await self._resend(message, retry_attrs, delay)
            return False
        await self._finish(message, payload, request_id, attempt, result, "RetriesExhausted")
        return False

    async def _resend(self, message: Message, attrs: dict[str, Any], delay: float) -> None:
        # Send before deleting this copy: a crash in between repeats an attempt (visible as a
        # duplicate) but never drops the event.
        await self._broker.send(
            self._queue, [OutgoingMessage(body=message.body, attributes=attrs, delay=delay)]
        )
        await self._broker.delete(self._queue, [message.receipt_handle])

    async def _finish(
        self,
        message: Message,
        payload: bytes,
        request_id: str,
        attempts: int,
        result: InvocationResult | None,
        condition: Condition,
    ) -> None:
        cfg = self.spec.async_config
        destination = cfg.on_success if condition == "Success" else cfg.on_failure
        if destination is not None:
            record = destination_record(
                request_id=request_id,
                function_arn=self._function_arn,
                condition=condition,
                approximate_invoke_count=attempts,
                request_payload=orjson.loads(payload),
                status_code=200 if result is not None else None,
                function_error=result.function_error if result is not None else None,
                response_payload=orjson.loads(result.payload)
                if result and result.payload
                else None,
            )
            await self._deliver(destination, orjson.dumps(record))
        elif condition != "Success":
            log.warning(
                "async invoke %s of %s dropped (%s): no on-failure destination",
                request_id,
                self.spec.name,
                condition,
            )
        await self._broker.delete(self._queue, [message.receipt_handle])

    async def _deliver(self, destination: str, record: bytes) -> None:
        kind, _, name = destination.partition(":")
        if kind == "queue":
            await self._broker.send(name, [OutgoingMessage(body=record.decode())])
        else:
            await self._submit(name, record)
