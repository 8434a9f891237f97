"""The Redis broker when its server goes away: `Unavailable` within a bounded time, and after a
crash and restart (``appendonly yes``, ``appendfsync always``) every send that returned is there."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest

from sluice.broker.contract import OutgoingMessage, QueueConfig
from sluice.broker.redis import RedisBroker
from sluice.errors import Unavailable
from tests.redis_cluster import RedisServer, free_port
from tests.servers import require_redis

pytestmark = pytest.mark.redis

# Connection refused: three attempts, pauses of 0.05 s and 0.2 s. Generous for a loaded machine.
REFUSED_BOUND = 2.0


async def _drain(broker: RedisBroker, queue: str) -> list[str]:
    ids = []
    while batch := await broker.receive(queue, 500):
        ids += [m.message_id for m in batch]
        assert all(await broker.delete(queue, [m.receipt_handle for m in batch]))
    return ids


def test_crash_gives_unavailable_fast_and_loses_no_returned_send(server: RedisServer) -> None:
    async def scenario() -> None:
        broker = RedisBroker(server.url, namespace="failures")
        await broker.start()
        await broker.create_queue(QueueConfig("jobs"))
        returned: list[str] = []
        refused = 0
        stop = asyncio.Event()

        async def producer(name: str) -> None:
            nonlocal refused
            batch = 0
            while not stop.is_set():
                messages = [OutgoingMessage(f"{name}-{batch}-{k}") for k in range(20)]
                try:
                    results = await broker.send("jobs", messages)
                except Unavailable:
                    refused += 1
                    await asyncio.sleep(0.01)
                else:
                    returned.extend(r.message_id for r in results)
                batch += 1

        producers = [asyncio.create_task(producer(f"p{i}")) for i in range(4)]
        while len(returned) < 400:
            await asyncio.sleep(0.01)
        server.kill()  # SIGKILL while the producers are sending

        for operation in (
            lambda: broker.send("jobs", [OutgoingMessage("late")]),
            lambda: broker.receive("jobs", 10),
            lambda: broker.stats("jobs"),
        ):
            started = time.monotonic()
            with pytest.raises(Unavailable, match="cannot be reached"):
                await operation()
            assert time.monotonic() - started < REFUSED_BOUND
        while refused < 4:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*producers)

        server.start()  # same directory and port: Redis replays its append-only file
        # The same broker reconnects on its own; every message whose send returned is there.
        stored = await _drain(broker, "jobs")
        assert set(returned) <= set(stored)
        assert len(stored) == len(set(stored))
        await broker.close()

    asyncio.run(scenario())


def test_a_hung_server_gives_unavailable_after_the_timeout(server: RedisServer) -> None:
    async def scenario() -> None:
        broker = RedisBroker(server.url, namespace="failures", timeout=0.3)
        await broker.start()
        await broker.create_queue(QueueConfig("jobs"))
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)  # accepts connections, never answers
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await broker.send("jobs", [OutgoingMessage("stuck")])
            # three attempts of at most 0.3 s each, plus 0.25 s of pauses
            assert time.monotonic() - started < 3 * 0.3 + 0.25 + 1.0
        finally:
            server.process.send_signal(signal.SIGCONT)
        # Whether "stuck" was stored is unknown to the caller; the queue works again either way.
        await broker.send("jobs", [OutgoingMessage("after")])
        assert "after" in [m.body for m in await broker.receive("jobs", 10)]
        await broker.close()

    asyncio.run(scenario())


def test_start_without_a_server_is_unavailable() -> None:
    async def scenario() -> None:
        broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", namespace="failures")
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await broker.start()
        assert time.monotonic() - started < REFUSED_BOUND
        with pytest.raises(RuntimeError, match="not started"):
            await broker.list_queues()

    asyncio.run(scenario())


def test_a_move_to_a_vanished_dlq_waits_in_the_outbox_until_it_exists() -> None:
    url = require_redis()
    namespace = f"test-outbox-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        worker = RedisBroker(url, namespace=namespace)
        admin = RedisBroker(url, namespace=namespace)  # another host
        await worker.start()
        await admin.start()
        try:
            await worker.create_queue(QueueConfig("dlq"))
            await worker.create_queue(QueueConfig("jobs", dead_letter="dlq", max_receive_count=3))
            await worker.send("jobs", [OutgoingMessage("bad"), OutgoingMessage("good")])
            held = {m.body: m for m in await worker.receive("jobs", 10)}
            await admin.delete_queue("dlq")  # this worker still believes the DLQ exists
            assert await worker.dead_letter("jobs", held["bad"].receipt_handle, "broken")
            assert await worker.delete("jobs", [held["bad"].receipt_handle]) == [False]
            await admin.create_queue(QueueConfig("dlq"))
            assert await worker.receive("jobs", 10) == []  # finishes the parked move
            (moved,) = await admin.receive("dlq", 10)
            assert (moved.body, moved.dead_letter_reason) == ("bad", "broken")
            assert moved.message_id == held["bad"].message_id
            assert await worker.receive("dlq", 10) == []  # moved once, not twice
        finally:
            for name in await admin.list_queues():
                await admin.delete_queue(name)
            await worker.close()
            await admin.close()

    asyncio.run(scenario())
