"""Batched operations in the group-commit writer, and the SQLite broker's batched sends: items
pending together run as one call in one commit, a refused item fails alone, a batch that raises
fails all of its items but nothing else, and a send still returns only once it is committed."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.broker.contract import OutgoingMessage, QueueConfig
from sluice.broker.groupcommit import GroupCommitWriter
from sluice.broker.sqlite import SQLiteBroker, _Ids
from sluice.errors import MessageTooLarge, QueueDoesNotExist, Unavailable, ValidationError
from tests.broker.conftest import Run, stored

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


calls: list[list[str]] = []


def _insert_all(conn: sqlite3.Connection, items: list[str]) -> list[tuple[bool, Any]]:
    """Refuses items starting with "bad" (before writing), raises on "boom"."""
    calls.append(list(items))
    if "boom" in items:
        conn.execute("INSERT INTO t VALUES ('boom-partial')")
        raise ValueError("boom")
    good = [v for v in items if not v.startswith("bad")]
    conn.executemany("INSERT INTO t VALUES (?)", [(v,) for v in good])
    return [
        (False, ValidationError(f"{v} refused")) if v.startswith("bad") else (True, v.upper())
        for v in items
    ]


def _held(writer: GroupCommitWriter) -> tuple[threading.Event, Any]:
    """An operation that holds the writer until released, so the next ones queue up."""
    release = threading.Event()

    def hold(conn: sqlite3.Connection) -> str:
        release.wait(5)
        conn.execute("INSERT INTO t VALUES ('held')")
        return "held"

    return release, asyncio.ensure_future(writer.submit(hold))


def test_pending_items_of_one_key_run_as_one_call(writer: Any, run: Run[Any]) -> None:
    writer, path, statements = writer
    calls.clear()

    async def scenario() -> list[Any]:
        release, held = _held(writer)
        await asyncio.sleep(0.05)
        items = ["a", "bad1", "b", "c"]
        futures = [asyncio.ensure_future(writer.submit_batched("k", _insert_all, v)) for v in items]
        await asyncio.sleep(0.05)
        statements.clear()
        release.set()
        return await asyncio.gather(held, *futures, return_exceptions=True)

    held, a, bad, b, c = run(scenario())
    assert (held, a, b, c) == ("held", "A", "B", "C")
    assert isinstance(bad, ValidationError)
    assert calls == [["a", "bad1", "b", "c"]]
    # After the held operation's commit: the batch alone in its transaction, without savepoint.
    after_held = statements[statements.index("COMMIT") + 1 :]
    assert after_held == ["BEGIN IMMEDIATE", "COMMIT"]
    assert stored(path) == ["a", "b", "c", "held"]


def test_a_raising_batch_fails_its_items_only(writer: Any, run: Run[Any]) -> None:
    writer, path, _ = writer
    calls.clear()

    def plain(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES ('plain')")
        return "plain"

    async def scenario() -> list[Any]:
        release, held = _held(writer)
        await asyncio.sleep(0.05)
        futures = [
            asyncio.ensure_future(writer.submit_batched("x", _insert_all, "boom")),
            asyncio.ensure_future(writer.submit(plain)),
            asyncio.ensure_future(writer.submit_batched("x", _insert_all, "lost")),
            asyncio.ensure_future(writer.submit_batched("y", _insert_all, "other")),
        ]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(held, *futures, return_exceptions=True)

    held, boom, plain_result, lost, other = run(scenario())
    assert isinstance(boom, ValueError) and isinstance(lost, ValueError)
    assert (held, plain_result, other) == ("held", "plain", "OTHER")
    assert calls == [["boom", "lost"], ["other"]]
    assert stored(path) == ["held", "other", "plain"]  # the batch's partial write rolled back


def test_a_lone_failing_batch_rolls_back_and_the_next_commits(writer: Any, run: Run[Any]) -> None:
    writer, path, _ = writer
    calls.clear()

    async def scenario() -> None:
        with pytest.raises(ValueError, match="boom"):
            await writer.submit_batched("k", _insert_all, "boom")
        assert await writer.submit_batched("k", _insert_all, "after") == "AFTER"

    run(scenario())
    assert stored(path) == ["after"]


def test_a_batch_returning_too_few_outcomes_fails_as_a_bug(writer: Any, run: Run[Any]) -> None:
    writer, path, _ = writer

    def short(conn: sqlite3.Connection, items: list[str]) -> list[tuple[bool, Any]]:
        conn.execute("INSERT INTO t VALUES ('x')")
        return []

    async def scenario() -> None:
        with pytest.raises(RuntimeError, match="outcomes"):
            await writer.submit_batched("k", short, "x")

    run(scenario())
    assert stored(path) == []


def test_items_submitted_just_before_stop_fail_instead_of_hanging(
    writer: Any, run: Run[Any]
) -> None:
    writer, path, _ = writer

    async def scenario() -> None:
        pending = asyncio.ensure_future(writer.submit_batched("k", _insert_all, "late"))
        await asyncio.sleep(0)  # gathered; handed to the writer on the next loop iteration
        writer.stop()
        with pytest.raises(Unavailable, match="not started"):
            await asyncio.wait_for(pending, 5)

    run(scenario())
    assert stored(path) == []


# -- the broker's batched sends ------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path, run: Run[Any]) -> Iterator[SQLiteBroker]:
    broker = SQLiteBroker(tmp_path / "b.db")
    run(broker.start())
    run(broker.create_queue(QueueConfig("q", max_message_size=1024)))
    yield broker
    run(broker.close())


def test_concurrent_sends_share_commits_and_a_bad_one_fails_alone(
    broker: SQLiteBroker, run: Run[Any]
) -> None:
    async def scenario() -> list[Any]:
        sends = [
            broker.send("q", [OutgoingMessage(f"m{i}"), OutgoingMessage("x")]) for i in range(50)
        ]
        sends.insert(10, broker.send("q", [OutgoingMessage("y" * 2000)]))
        sends.insert(20, broker.send("q", [OutgoingMessage("ok", delay=1000)]))  # delay > 900 s
        sends.insert(30, broker.send("missing", [OutgoingMessage("z")]))
        return await asyncio.gather(*sends, return_exceptions=True)

    results = run(scenario())
    assert isinstance(results[10], MessageTooLarge)
    assert isinstance(results[20], ValidationError)
    assert isinstance(results[30], QueueDoesNotExist)
    good = [r for i, r in enumerate(results) if i not in (10, 20, 30)]
    ids = [m.message_id for pair in good for m in pair]
    assert len(ids) == 100 and len(set(ids)) == 100
    assert all(UUID4.match(i) for i in ids)
    stats = run(broker.stats("q"))
    assert stats.visible == 100

    async def receive_all() -> dict[str, Any]:
        got: dict[str, Any] = {}
        while batch := await broker.receive("q", 10):
            got.update((m.message_id, m) for m in batch)
        return got

    received = run(receive_all())
    assert sorted(received) == sorted(ids)
    first = good[0][0]
    assert received[first.message_id].body == "m0"
    assert received[first.message_id].md5_of_body == first.md5_of_body


def _capped_broker(path: Path, run: Run[Any], spare_pages: int) -> SQLiteBroker:
    """A broker (not started) on a database with queue "q" that cannot grow by more than
    ``spare_pages`` pages."""
    broker = SQLiteBroker(path)
    run(broker.start())
    run(broker.create_queue(QueueConfig("q")))
    run(broker.close())
    with sqlite3.connect(path) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    return SQLiteBroker(path, pragmas={"max_page_count": pages + spare_pages})


# -- a group of sends written by one statement outside a transaction -------------------------


def test_a_queue_changed_since_the_last_send_is_read_again(
    broker: SQLiteBroker, run: Run[Any]
) -> None:
    """The one-statement path checks rows against the queue as it last saw it; a changed queue
    makes it decline, and the sends are checked against the new configuration instead."""
    run(broker.send("q", [OutgoingMessage("before")]))
    run(broker.create_queue(QueueConfig("q", max_message_size=1024, delay=60)))
    run(broker.send("q", [OutgoingMessage("after")]))
    stats = run(broker.stats("q"))
    assert (stats.visible, stats.delayed) == (1, 1)
    run(broker.delete_queue("q"))
    with pytest.raises(QueueDoesNotExist):
        run(broker.send("q", [OutgoingMessage("gone")]))


def test_bodies_and_attributes_survive_the_many_row_insert(
    broker: SQLiteBroker, run: Run[Any]
) -> None:
    """Sizes that need several statements and padding rows; bodies SQL or JSON could mangle."""
    odd = ["nul\x00inside", "é😀", "'); DROP TABLE messages; --", "", '\\"', "null"]
    attrs = {"k": {"DataType": "String", "StringValue": "v\x00"}}

    async def scenario(n: int) -> list[Any]:
        many = broker.send("q", [OutgoingMessage(f"m{i}") for i in range(n)])
        few = [broker.send("q", [OutgoingMessage(body, attrs)]) for body in odd]
        return await asyncio.gather(many, *few)

    # The first group runs in a transaction, in two statements (more than 256 rows); the second
    # one alone, in one statement padded to 256 rows.
    sizes = (300, 200)
    for n in sizes:
        results = run(scenario(n))
        assert len(results[0]) == n

    async def receive_all() -> list[Any]:
        got = []
        while batch := await broker.receive("q", 100):
            got += batch
        return got

    received = run(receive_all())
    expected = [f"m{i}" for n in sizes for i in range(n)] + 2 * odd
    assert sorted(m.body for m in received) == sorted(expected)
    assert all(m.attributes == attrs for m in received if m.body in odd)


@pytest.mark.parametrize("known", [False, True], ids=["in-a-transaction", "alone"])
def test_a_group_that_cannot_commit_stores_nothing(
    tmp_path: Path, run: Run[Any], known: bool
) -> None:
    """A database that cannot grow: the insert fails for the whole group, every send of it gets
    Unavailable. Once the queue is known (a send went through) the group is written by one
    statement outside a transaction, which fails as a whole too."""
    broker = _capped_broker(tmp_path / "full.db", run, spare_pages=1 if known else 0)
    before = [("small",)] if known else []

    async def scenario() -> list[Any]:
        await broker.start()
        try:
            if known:
                await broker.send("q", [OutgoingMessage("small")])
            body = "b" * 200_000
            sends = [broker.send("q", [OutgoingMessage(body[: 1000 + i])]) for i in range(40)]
            return await asyncio.gather(*sends, return_exceptions=True)
        finally:
            await broker.close()

    results = run(scenario())
    assert all(isinstance(r, Unavailable) for r in results), results
    with sqlite3.connect(tmp_path / "full.db") as conn:
        assert conn.execute("SELECT body FROM messages").fetchall() == before


def test_message_ids_are_unique_across_broker_instances() -> None:
    # Ids are a per-instance random prefix and a counter: a restarted broker must not repeat
    # the ids of the one before it, whose counter started at the same value.
    before, after = _Ids().take(300), _Ids().take(300)
    assert len(set(before) | set(after)) == 600
    assert all(UUID4.match(i) for i in before + after)
