"""The poller's leases: held while a batch runs (renewed past their TTL), freed afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sluice.broker.contract import Message, OutgoingMessage, QueueConfig
from sluice.broker.sqlite import SQLiteBroker
from sluice.dispatch.poller import Poller, PollerConfig
from sluice.limits.local import LocalLimiter


def test_a_long_batch_keeps_its_lease_past_the_ttl(tmp_path):
    async def main() -> None:
        broker = SQLiteBroker(tmp_path / "b.db")
        await broker.start()
        await broker.create_queue(QueueConfig("q"))
        await broker.send("q", [OutgoingMessage(body="x")])
        limiter = LocalLimiter()
        held_during: list[int] = []

        async def slow(batch: Sequence[Message]) -> bool:
            for _ in range(6):  # 1.2 s, three times the lease's 0.4 s TTL
                await asyncio.sleep(0.2)
                held_during.append(await limiter.held("k"))
            await broker.delete("q", [m.receipt_handle for m in batch])
            return True

        config = PollerConfig("t", "q", 10, 0.0, 1, lease_key="k", lease_ttl=0.4)
        poller = Poller(config, broker, limiter, slow)
        poller.start()
        while len(held_during) < 6:
            await asyncio.sleep(0.05)
        await poller.stop()
        assert held_during == [1] * 6  # never expired while the batch ran
        assert await limiter.held("k") == 0  # released afterwards
        await broker.close()

    asyncio.run(main())
