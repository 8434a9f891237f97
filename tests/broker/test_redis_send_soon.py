"""The Redis broker's `send_soon`: the sends of one event-loop iteration to one queue are stored by
one script call, each send whole; a configuration changed since they were checked sends each
again on its own; a server that dies leaves no send waiting, and every send told it was stored is
there after the restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sluice.broker import redis as redis_broker
from sluice.broker.contract import OutgoingMessage, QueueConfig, SendOutcome
from sluice.broker.redis import RedisBroker
from sluice.errors import MessageTooLarge, Unavailable
from tests.broker.test_redis_failures import REFUSED_BOUND, _drain
from tests.redis_cluster import RedisServer
from tests.servers import require_redis

pytestmark = pytest.mark.redis


@pytest.fixture
def namespace() -> Iterator[str]:
    import redis

    name = f"test-soon-{uuid.uuid4().hex[:8]}"
    yield name
    with redis.Redis.from_url(require_redis()) as client:
        keys = list(client.scan_iter(match=f"*{name}*", count=1000))
        if keys:
            client.delete(*keys)


def _counting_sends(broker: RedisBroker) -> list[int]:
    """Wrap the broker's send script: the number of messages of each call, in order."""
    calls: list[int] = []
    script = broker._scripts["send"]

    def counted(*, keys: list[str], args: list[Any]) -> Any:
        calls.append(len(redis_broker.orjson.loads(args[-1])))
        return script(keys=keys, args=args)

    broker._scripts["send"] = counted
    return calls


def _soon(
    broker: RedisBroker, answers: list[asyncio.Future[SendOutcome]]
) -> Callable[[str, list[str]], None]:
    loop = asyncio.get_running_loop()

    def soon(queue: str, bodies: list[str]) -> None:
        answer: asyncio.Future[SendOutcome] = loop.create_future()
        answers.append(answer)
        broker.send_soon(queue, [OutgoingMessage(b) for b in bodies], answer.set_result)

    return soon


def test_one_iterations_sends_are_one_script_call_each_send_whole(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_broker, "_GATHER_MESSAGES", 10)

    async def scenario() -> None:
        broker = RedisBroker(require_redis(), namespace=namespace)
        await broker.start()
        await broker.create_queue(QueueConfig("jobs"))
        calls = _counting_sends(broker)
        answers: list[asyncio.Future[SendOutcome]] = []
        soon = _soon(broker, answers)
        for i in range(8):
            soon("jobs", [f"one-{i}"])
        await asyncio.gather(*answers)
        assert calls == [8]  # eight sends, one round trip
        calls.clear()
        # Cut at 10 messages a call, never inside a send: 4 + 4 | 4 + 4 | 12 | 1.
        for size in (4, 4, 4, 4, 12, 1):
            soon("jobs", [f"batch-{size}-{k}" for k in range(size)])
        outcomes = await asyncio.gather(*answers)
        assert calls == [8, 8, 12, 1]
        told = {r.message_id for results in outcomes for r in results}  # type: ignore[union-attr]
        assert len(told) == 8 + 29
        assert set(await _drain(broker, "jobs")) == told
        await broker.close()

    asyncio.run(scenario())


def test_a_configuration_changed_since_the_check_sends_each_again(namespace: str) -> None:
    async def scenario() -> None:
        gateway = RedisBroker(require_redis(), namespace=namespace)
        admin = RedisBroker(require_redis(), namespace=namespace)  # another host
        await gateway.start()
        await admin.start()
        await gateway.create_queue(QueueConfig("jobs"))  # cached here: 256 KiB accepted
        await admin.delete_queue("jobs")
        await admin.create_queue(QueueConfig("jobs", max_message_size=1024))
        calls = _counting_sends(gateway)
        answers: list[asyncio.Future[SendOutcome]] = []
        soon = _soon(gateway, answers)
        soon("jobs", ["x" * 2000])  # fits the cached limit, not the queue's new one
        soon("jobs", ["fits"])
        too_large, stored = await asyncio.wait_for(asyncio.gather(*answers), 10)
        assert isinstance(too_large, MessageTooLarge)
        assert isinstance(stored, list)
        assert calls == [2, 1]  # refused as stale, then the valid send alone
        assert await _drain(admin, "jobs") == [stored[0].message_id]
        await gateway.close()
        await admin.close()

    asyncio.run(scenario())


def test_a_killed_server_answers_every_send_and_loses_none_told_stored(
    server: RedisServer,
) -> None:
    async def scenario() -> None:
        broker = RedisBroker(server.url, namespace="soon")
        await broker.start()
        await broker.create_queue(QueueConfig("jobs"))
        stored: list[str] = []
        refused = 0
        waiting: set[asyncio.Future[SendOutcome]] = set()
        loop = asyncio.get_running_loop()

        def told(answer: asyncio.Future[SendOutcome]) -> None:
            nonlocal refused
            waiting.discard(answer)
            outcome = answer.result()
            if isinstance(outcome, Unavailable):
                refused += 1
            else:
                assert isinstance(outcome, list)
                stored.extend(r.message_id for r in outcome)

        async def producer(name: str) -> None:
            n = 0
            while refused < 50:
                for _ in range(16):  # sixteen sends per iteration, like a busy gateway
                    answer: asyncio.Future[SendOutcome] = loop.create_future()
                    answer.add_done_callback(told)
                    waiting.add(answer)
                    broker.send_soon("jobs", [OutgoingMessage(f"{name}-{n}")], answer.set_result)
                    n += 1
                await asyncio.sleep(0.002)

        producers = [asyncio.create_task(producer(f"p{i}")) for i in range(2)]
        while len(stored) < 500:
            await asyncio.sleep(0.01)
        server.kill()
        killed = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*producers), 30)
        while waiting:  # every send is answered, within the refused-connection bound
            assert time.monotonic() - killed < 10 * REFUSED_BOUND
            await asyncio.sleep(0.01)

        server.start()  # Redis replays its append-only file
        drained = await _drain(broker, "jobs")
        assert set(stored) <= set(drained)
        assert len(drained) == len(set(drained))
        await broker.close()

    asyncio.run(scenario())
