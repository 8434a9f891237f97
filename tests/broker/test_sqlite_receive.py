"""Receives on the SQLite broker beyond the contract: long polls woken by a send from another
broker on the same file (another process, in production) within a poll interval, one watcher per
queue however many receives wait; and the paths that skip the queue lookup, which must see a
queue changed elsewhere and fail cleanly, losing nothing, while another process locks the file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from sluice.broker.contract import OutgoingMessage, QueueConfig
from sluice.broker.sqlite import POLL_INTERVAL, SQLiteBroker
from sluice.errors import Unavailable


def test_waiters_share_one_watcher_and_wake_on_a_send_from_another_broker(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "broker.db"
        async with SQLiteBroker(path) as waiting, SQLiteBroker(path) as sending:
            await waiting.create_queue(QueueConfig("jobs"))
            receives = [asyncio.create_task(waiting.receive("jobs", 10, wait=5)) for _ in range(4)]
            await asyncio.sleep(0.2)
            assert len(waiting._watchers) == 1  # four waiters, one poll
            started = time.monotonic()
            await sending.send("jobs", [OutgoingMessage("from elsewhere")])
            done, pending = await asyncio.wait(receives, return_when=asyncio.FIRST_COMPLETED)
            assert time.monotonic() - started < POLL_INTERVAL + 1.0
            assert [m.body for t in done for m in t.result()] == ["from elsewhere"]
            for task in pending:  # nothing more to get: they wait until their deadline
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await asyncio.sleep(POLL_INTERVAL * 3)
            assert waiting._watchers == {}  # no waiters left: the watcher stopped

    asyncio.run(scenario())


def test_a_long_poll_with_nothing_to_get_ends_at_its_wait(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SQLiteBroker(tmp_path / "broker.db") as broker:
            await broker.create_queue(QueueConfig("jobs"))
            started = time.monotonic()
            assert await broker.receive("jobs", 10, wait=0.5) == []
            assert 0.5 <= time.monotonic() - started < 1.5
            await asyncio.sleep(POLL_INTERVAL * 3)
            assert broker._watchers == {}

    asyncio.run(scenario())


def test_a_queue_changed_by_another_broker_is_received_with_its_new_settings(
    tmp_path: Path,
) -> None:
    """Receives and deletes skip the queue lookup when the writer has seen the queue before;
    their statements check the stored configuration, so a change made elsewhere applies at once."""

    async def scenario() -> None:
        path = tmp_path / "broker.db"
        async with SQLiteBroker(path) as one, SQLiteBroker(path) as other:
            await one.create_queue(QueueConfig("jobs", visibility_timeout=300))
            await one.send("jobs", [OutgoingMessage(f"m{i}") for i in range(3)])
            [first] = await one.receive("jobs")  # one has seen the queue now
            await other.create_queue(QueueConfig("jobs", visibility_timeout=0.5))
            [second] = await one.receive("jobs")
            await asyncio.sleep(0.7)
            again = await one.receive("jobs", 10)
            # The second receive used the new 0.5 s timeout; the first still holds its message.
            assert second.message_id in {m.message_id for m in again}
            assert first.message_id not in {m.message_id for m in again}
            assert await one.delete("jobs", [m.receipt_handle for m in again]) == [True] * len(
                again
            )
            assert await one.delete("jobs", [second.receipt_handle]) == [False]  # stale now

    asyncio.run(scenario())


def test_receives_and_deletes_while_another_process_locks_the_database(tmp_path: Path) -> None:
    """The statements that run outside a transaction fail like the others when the database
    stays locked past busy_timeout (another process holding it): the call raises Unavailable,
    and nothing is lost — every message is still delivered and deleted once the lock is gone."""

    async def scenario() -> None:
        path = tmp_path / "broker.db"
        async with SQLiteBroker(path, pragmas={"busy_timeout": 200}) as broker:
            await broker.create_queue(QueueConfig("jobs", visibility_timeout=0.3))
            await broker.send("jobs", [OutgoingMessage(f"m{i}") for i in range(4)])
            first = await broker.receive("jobs", 2)  # the queue is known: the alone path next
            other = sqlite3.connect(path, isolation_level=None, timeout=0)
            other.execute("BEGIN EXCLUSIVE")
            try:
                with pytest.raises(Unavailable):
                    await broker.receive("jobs", 2)
                with pytest.raises(Unavailable):
                    await broker.delete("jobs", [m.receipt_handle for m in first])
            finally:
                other.execute("ROLLBACK")
                other.close()
            await asyncio.sleep(0.4)  # past the first receive's visibility timeout
            seen: dict[str, int] = {}
            while batch := await broker.receive("jobs", 10):
                for m in batch:
                    seen[m.body] = seen.get(m.body, 0) + 1
                assert all(await broker.delete("jobs", [m.receipt_handle for m in batch]))
            assert sorted(seen) == [f"m{i}" for i in range(4)]
            assert (await broker.stats("jobs")).total == 0

    asyncio.run(scenario())
