"""SQLite-specific behaviour: durability settings, locks held by other processes, migrations."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from sluice.errors import Unavailable
from sluice.state.sqlite import MIGRATIONS, SQLiteState


def test_the_database_uses_wal(tmp_path: Path) -> None:
    async def body() -> None:
        store = SQLiteState(tmp_path / "state.db")
        await store.start()
        await store.close()

    asyncio.run(body())
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    async def body() -> None:
        store = SQLiteState(tmp_path / "a" / "b" / "state.db")
        await store.start()
        await store.put("k", "k", {})
        await store.close()

    asyncio.run(body())
    assert (tmp_path / "a" / "b" / "state.db").is_file()


def test_an_unusable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")

    async def body() -> None:
        store = SQLiteState(tmp_path / "file" / "state.db")
        with pytest.raises(Unavailable, match="state database"):
            await store.start()
        with pytest.raises(Unavailable):  # start failed: the store stays unusable
            await store.get("k", "k")

    asyncio.run(body())


def test_a_write_lock_held_elsewhere_gives_unavailable_after_the_busy_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"

    async def body() -> None:
        store = SQLiteState(path, busy_timeout=0.3)
        await store.start()
        await store.put("function", "f", {"v": 1})
        # Another process (here: another connection) holds the write lock.
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="locked"):
                await store.put("function", "f", {"v": 2})
            assert 0.25 <= time.monotonic() - started < 3
            with pytest.raises(Unavailable):
                await store.incr("seq")
            record = await store.get("function", "f")  # WAL: readers are not blocked
            assert record is not None and record.value == {"v": 1}
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert (await store.put("function", "f", {"v": 3})).version == 2
        assert await store.incr("seq") == 1  # the refused incr left nothing behind
        await store.close()

    asyncio.run(body())


def test_a_write_waits_for_a_lock_released_within_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    async def body() -> None:
        store = SQLiteState(path, busy_timeout=5)
        await store.start()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO counters VALUES ('seq', 41)")
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, other.execute, "COMMIT")
        assert await store.incr("seq") == 42
        other.close()
        await store.close()

    asyncio.run(body())


def test_migrations_are_applied_once_by_stores_starting_together(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    async def body() -> None:
        stores = [SQLiteState(path) for _ in range(4)]
        await asyncio.gather(*(s.start() for s in stores))
        await asyncio.gather(*(s.incr("n") for s in stores))
        await asyncio.gather(*(s.close() for s in stores))
        again = SQLiteState(path)
        await again.start()
        assert await again.incr("n") == 5
        await again.close()

    asyncio.run(body())
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
