"""An event source mapping from a queue to a function, with Lambda's SQS semantics:
filtered-out messages are deleted, the batch is one SQS event, a successful invoke deletes the
batch, a failed one leaves it to come back after the visibility timeout (and reach the DLQ after
max_receive_count receives), and ReportBatchItemFailures keeps only the failed messages."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson

from sluice.app import MappingSpec
from sluice.broker.contract import Broker, Message
from sluice.dispatch.filters import compile_filters, sqs_record_matches
from sluice.errors import Throttled
from sluice.events.sqs import batch_item_failures, sqs_event
from sluice.runtime.contract import Invoker

log = logging.getLogger("sluice.dispatch")


class SqsMappingHandler:
    """The batch handler a `Poller` calls for one SQS event source mapping."""

    def __init__(
        self,
        spec: MappingSpec,
        broker: Broker,
        invoker: Invoker,
        *,
        queue_arn: str,
        region: str,
    ) -> None:
        self.spec = spec
        self._broker = broker
        self._invoker = invoker
        self._queue_arn = queue_arn
        self._region = region
        self._filter = compile_filters(spec.filters) if spec.filters else None
        self.invocations = 0
        self.filtered_out = 0

    async def __call__(self, messages: Sequence[Message]) -> bool:
        spec = self.spec
        event = sqs_event(messages, self._queue_arn, self._region)
        if self._filter is not None:
            event, messages = await self._apply_filter(event, messages)
            if not messages:
                return True
        try:
            self.invocations += 1
            result = await self._invoker.invoke(spec.function, orjson.dumps(event))
        except Throttled:
            # The function is at its reserved concurrency: the messages come back after the
            # visibility timeout, and the poller backs off.
            return False
        if not result.ok:
            log.warning(
                "mapping %s: function error, %d messages will be retried: %s",
                spec.name,
                len(messages),
                result.payload[:500].decode(errors="replace"),
            )
            return False
        if not spec.report_batch_item_failures:
            await self._delete(messages)
            return True
        response = orjson.loads(result.payload) if result.payload else None
        failed = batch_item_failures(response, [m.message_id for m in messages])
        if failed is None:  # Lambda's rule: a malformed response fails the whole batch
            log.warning("mapping %s: invalid batchItemFailures, whole batch retried", spec.name)
            return False
        await self._delete([m for m in messages if m.message_id not in failed])
        return not failed

    async def _apply_filter(
        self, event: dict, messages: Sequence[Message]
    ) -> tuple[dict, Sequence[Message]]:
        assert self._filter is not None
        keep_records, keep, drop = [], [], []
        for record, message in zip(event["Records"], messages, strict=True):
            if sqs_record_matches(self._filter, record):
                keep_records.append(record)
                keep.append(message)
            else:
                drop.append(message)
        if drop:
            # Lambda deletes messages that match no filter.
            self.filtered_out += len(drop)
            await self._delete(drop)
        return {"Records": keep_records}, keep

    async def _delete(self, messages: Sequence[Message]) -> None:
        if messages:
            await self._broker.delete(self.spec.queue, [m.receipt_handle for m in messages])
