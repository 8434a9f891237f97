"""The Redis broker on a three-node Redis Cluster: the contract's key scenarios, with queues (and
a queue and its dead-letter queue) placed on different nodes, so cross-slot paths are exercised."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from redis import Redis
from redis.crc import key_slot

from sluice.broker.contract import OutgoingMessage, QueueConfig
from sluice.broker.redis import RedisBroker
from tests.redis_cluster import LocalCluster, redis_cluster  # noqa: F401  (session fixture)

pytestmark = pytest.mark.redis


class Clock:
    """The broker's clock, moved by the test instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> LocalCluster:
    return request.getfixturevalue("redis_cluster")


def _slot_owners(cluster: LocalCluster) -> list[tuple[int, int, int]]:
    with Redis(port=cluster.ports[0]) as client:
        slots = client.execute_command("CLUSTER SLOTS")
    return [(int(start), int(end), int(node[1])) for start, end, node, *_ in slots]


def _queue_names_on_distinct_nodes(cluster: LocalCluster, namespace: str, n: int) -> list[str]:
    """``n`` queue names whose keys live on ``n`` different nodes."""
    owners = _slot_owners(cluster)
    chosen: dict[int, str] = {}
    for i in range(1000):
        name = f"q{i}"
        slot = key_slot(f"{namespace}:{name}".encode())
        port = next(p for start, end, p in owners if start <= slot <= end)
        chosen.setdefault(port, name)
        if len(chosen) == n:
            return list(chosen.values())
    raise AssertionError("could not spread queues over the nodes")


Scenario = Callable[[RedisBroker, Clock, list[str]], Awaitable[None]]


def run_on_cluster(cluster: LocalCluster, nodes: int, scenario: Scenario) -> None:
    namespace = f"test-cluster-{uuid.uuid4().hex[:8]}"
    names = _queue_names_on_distinct_nodes(cluster, namespace, nodes)
    clock = Clock()

    @asynccontextmanager
    async def opened() -> AsyncIterator[RedisBroker]:
        broker = RedisBroker(cluster.url, namespace=namespace, clock=clock)
        await broker.start()
        try:
            yield broker
        finally:
            for name in await broker.list_queues():
                await broker.delete_queue(name)
            await broker.close()

    async def main() -> None:
        async with opened() as broker:
            await scenario(broker, clock, names)

    asyncio.run(main())


def test_send_receive_delete_on_every_node(cluster: LocalCluster) -> None:
    async def scenario(broker: RedisBroker, clock: Clock, names: list[str]) -> None:
        for name in names:
            await broker.create_queue(QueueConfig(name))
        assert await broker.list_queues() == sorted(names)
        for name in names:
            sent = await broker.send(name, [OutgoingMessage(f"{name}-{i}") for i in range(1000)])
            assert len({r.message_id for r in sent}) == 1000
        for name in names:
            received = []
            while batch := await broker.receive(name, 100):
                received += batch
                assert all(await broker.delete(name, [m.receipt_handle for m in batch]))
            assert sorted(m.body for m in received) == sorted(f"{name}-{i}" for i in range(1000))
            stats = await broker.stats(name)
            assert (stats.visible, stats.in_flight, stats.delayed) == (0, 0, 0)

    run_on_cluster(cluster, 3, scenario)


def test_visibility_expiry_and_stale_receipts(cluster: LocalCluster) -> None:
    async def scenario(broker: RedisBroker, clock: Clock, names: list[str]) -> None:
        queue = names[0]
        await broker.create_queue(QueueConfig(queue, visibility_timeout=1))
        await broker.send(queue, [OutgoingMessage("hello")])
        (first,) = await broker.receive(queue)
        assert await broker.receive(queue) == []
        assert (await broker.stats(queue)).in_flight == 1
        clock.advance(1.5)
        (second,) = await broker.receive(queue)
        assert second.message_id == first.message_id
        assert second.receive_count == 2
        assert second.receipt_handle != first.receipt_handle
        assert second.first_receive_timestamp == first.first_receive_timestamp
        assert await broker.delete(queue, [first.receipt_handle]) == [False]
        assert not await broker.change_visibility(queue, first.receipt_handle, 10)
        assert await broker.change_visibility(queue, second.receipt_handle, 10)
        clock.advance(5)
        assert await broker.receive(queue) == []  # extended to 10 s
        assert await broker.delete(queue, [second.receipt_handle]) == [True]
        assert (await broker.stats(queue)).total == 0

    run_on_cluster(cluster, 1, scenario)


def test_dead_letter_queue_on_another_node(cluster: LocalCluster) -> None:
    async def scenario(broker: RedisBroker, clock: Clock, names: list[str]) -> None:
        source, dlq = names
        await broker.create_queue(QueueConfig(dlq))
        await broker.create_queue(
            QueueConfig(source, visibility_timeout=1, dead_letter=dlq, max_receive_count=2)
        )
        await broker.send(source, [OutgoingMessage("poison"), OutgoingMessage("malformed")])
        batch = await broker.receive(source, 10)
        malformed = next(m for m in batch if m.body == "malformed")
        assert await broker.dead_letter(source, malformed.receipt_handle, "not JSON")
        clock.advance(1.5)
        (again,) = await broker.receive(source, 10)
        assert (again.body, again.receive_count) == ("poison", 2)
        clock.advance(1.5)
        assert await broker.receive(source, 10) == []  # third receive moves it instead
        moved = {m.body: m for m in await broker.receive(dlq, 10)}
        assert set(moved) == {"poison", "malformed"}
        assert moved["malformed"].dead_letter_reason == "not JSON"
        assert "maxReceiveCount 2" in (moved["poison"].dead_letter_reason or "")
        assert moved["poison"].message_id == next(m for m in batch if m.body == "poison").message_id
        clock.advance(31)  # the DLQ's default visibility timeout
        assert await broker.redrive(dlq) == 2
        back = await broker.receive(source, 10)
        assert sorted(m.body for m in back) == ["malformed", "poison"]
        assert all(m.receive_count == 1 and m.dead_letter_reason is None for m in back)
        assert (await broker.stats(dlq)).total == 0

    run_on_cluster(cluster, 2, scenario)


def test_fifo_order_and_group_lock(cluster: LocalCluster) -> None:
    async def scenario(broker: RedisBroker, clock: Clock, names: list[str]) -> None:
        queue = names[0] + ".fifo"
        await broker.create_queue(QueueConfig(queue, visibility_timeout=1))
        sent = await broker.send(
            queue,
            [
                OutgoingMessage(f"{g}{i}", group_id=g, deduplication_id=f"{g}{i}")
                for i in range(3)
                for g in "ab"
            ],
        )
        again = await broker.send(
            queue, [OutgoingMessage("a0", group_id="a", deduplication_id="a0")]
        )
        assert again[0].duplicate and again[0].message_id == sent[0].message_id
        first = await broker.receive(queue, 2)
        assert [m.body for m in first] == ["a0", "a1"]
        second = await broker.receive(queue, 10)
        assert [m.body for m in second] == ["b0", "b1", "b2"]
        assert await broker.receive(queue, 10) == []  # both groups locked
        assert all(await broker.delete(queue, [m.receipt_handle for m in first]))
        assert [m.body for m in await broker.receive(queue, 10)] == ["a2"]
        clock.advance(1.5)  # all visible again, each group in order, oldest group first
        back = await broker.receive(queue, 10)
        assert [(m.body, m.receive_count) for m in back] == [
            ("b0", 2),
            ("b1", 2),
            ("b2", 2),
            ("a2", 2),
        ]
        seqs = [int(r.sequence_number or 0) for r in sent]
        assert seqs == sorted(seqs)

    run_on_cluster(cluster, 1, scenario)
