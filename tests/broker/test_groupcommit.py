"""The group-commit writer: pending operations share one transaction, and one failing operation
rolls back only its own writes."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from sluice.broker.groupcommit import GroupCommitWriter
from sluice.errors import Unavailable
from tests.broker.conftest import Run, stored


def _insert(value: str, fail: BaseException | None = None) -> Any:
    def op(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        if fail is not None:
            raise fail
        return value

    return op


def test_pending_operations_share_one_commit(writer: Any, run: Run[Any]) -> None:
    writer, path, statements = writer
    release = threading.Event()

    def blocking(conn: sqlite3.Connection) -> str:
        release.wait(5)  # hold the writer until the other operations are queued
        return _insert("first")(conn)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(writer.submit(blocking))
        await asyncio.sleep(0.05)
        rest = [
            asyncio.ensure_future(writer.submit(_insert("a"))),
            asyncio.ensure_future(writer.submit(_insert("bad", ValueError("boom")))),
            asyncio.ensure_future(writer.submit(_insert("locked", sqlite3.OperationalError("x")))),
            asyncio.ensure_future(writer.submit(_insert("b"))),
        ]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    first, a, bad, locked, b = run(scenario())
    assert (first, a, b) == ("first", "a", "b")
    assert isinstance(bad, ValueError)  # a bug in an operation surfaces as itself
    assert isinstance(locked, Unavailable)  # a database error says "not stored"
    assert statements.count("COMMIT") == 2  # "first" alone, then the four others together
    assert stored(path) == ["a", "b", "first"]


def test_stop_finishes_pending_operations(writer: Any, run: Run[Any]) -> None:
    writer, path, _ = writer

    async def scenario() -> None:
        futures = [asyncio.ensure_future(writer.submit(_insert(str(i)))) for i in range(20)]
        await asyncio.sleep(0)  # let every submit enqueue
        await asyncio.to_thread(writer.stop)
        assert sorted(await asyncio.gather(*futures)) == sorted(str(i) for i in range(20))
        with pytest.raises(Unavailable, match="not started"):
            await writer.submit(_insert("late"))

    run(scenario())
    assert len(stored(path)) == 20


def test_unopenable_database_fails_start(tmp_path: Path) -> None:
    writer = GroupCommitWriter(lambda: sqlite3.connect(tmp_path / "missing" / "g.db"))
    with pytest.raises(Unavailable):
        writer.start()


def _alone(value: str, decline: bool = False) -> Any:
    """An alone path: one self-committing insert, or None (nothing written) when declining."""

    def alone(conn: sqlite3.Connection) -> str | None:
        if decline:
            return None
        conn.execute("INSERT INTO t VALUES (?)", (f"{value}-alone",))
        return f"{value}-alone"

    return alone


def test_operations_with_an_alone_path_skip_the_transaction(writer: Any, run: Run[Any]) -> None:
    """Alone, or in a group where nothing needs an fsync, each operation's alone path runs
    outside any transaction; one that declines runs as usual, in a transaction; a group with a
    durable operation runs as one transaction."""
    writer, path, statements = writer
    release = threading.Event()

    def blocking(conn: sqlite3.Connection) -> str:
        release.wait(5)
        return "held"

    async def group(durable: bool) -> list[Any]:
        held = asyncio.ensure_future(writer.submit(blocking, durable=False))
        await asyncio.sleep(0.05)
        ops = [
            writer.submit(_insert(f"x{durable:d}"), durable=durable, alone=_alone(f"x{durable:d}")),
            writer.submit(_insert(f"y{durable:d}"), durable=False, alone=_alone("y", decline=True)),
        ]
        pending = [asyncio.ensure_future(op) for op in ops]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(held, *pending)

    assert run(writer.submit(_insert("lone"), alone=_alone("lone"))) == "lone-alone"
    assert "BEGIN IMMEDIATE" not in statements
    statements.clear()
    assert run(group(durable=False)) == ["held", "x0-alone", "y0"]
    assert statements.count("BEGIN IMMEDIATE") == 2  # the held one's and the declining one's
    assert statements.count("SAVEPOINT op") == 0
    statements.clear()
    assert run(group(durable=True)) == ["held", "x1", "y1"]  # one transaction for both
    assert statements.count("SAVEPOINT op") == 2
    assert stored(path) == ["lone-alone", "x0-alone", "x1", "y0", "y1"]


def test_a_group_that_breaks_unexpectedly_fails_whole_and_rolls_back(
    writer: Any, run: Run[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anything the group-commit machinery itself raises (not an operation's own error) fails
    every operation of the group as Unavailable, with its writes rolled back: no caller waits
    on a dead group, and the writer goes on."""
    writer, path, _ = writer
    from sluice.broker import groupcommit

    real = groupcommit._in_transaction

    def broken(conn: sqlite3.Connection, batch: Any, units: Any) -> Any:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES ('half-done')")
        raise RuntimeError("a bug in the writer")

    async def scenario() -> tuple[list[Any], Any]:
        monkeypatch.setattr(groupcommit, "_in_transaction", broken)
        failed = await asyncio.gather(
            writer.submit(_insert("x")), writer.submit(_insert("y")), return_exceptions=True
        )
        monkeypatch.setattr(groupcommit, "_in_transaction", real)
        return failed, await writer.submit(_insert("after"))

    failed, after = run(scenario())
    assert all(isinstance(f, Unavailable) and "a bug in the writer" in f.message for f in failed)
    assert after == "after"
    assert stored(path) == ["after"]
