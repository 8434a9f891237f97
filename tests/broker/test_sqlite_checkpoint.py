"""The SQLite broker copies its write-ahead log back into the database on a thread of its own,
a moment after commits, so that no commit waits for a checkpoint; stopping never hangs."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

from sluice.broker.contract import OutgoingMessage, QueueConfig
from sluice.broker.groupcommit import Checkpointer
from sluice.broker.sqlite import CHECKPOINT_DELAY, SQLiteBroker


def test_commits_are_checkpointed_behind_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"

    async def scenario() -> int:
        async with SQLiteBroker(path) as broker:
            await broker.create_queue(QueueConfig("jobs"))
            for _ in range(20):
                await broker.send("jobs", [OutgoingMessage("x" * 1000)] * 50)
            await asyncio.sleep(CHECKPOINT_DELAY * 5)
            # Read the database file alone (no log): the messages are already in it.
            with open(path, "rb") as f:
                return len(f.read())

    size = asyncio.run(scenario())
    assert size > 20 * 50 * 1000  # ~1 MB of bodies copied from the log into the database file


def test_a_stop_during_the_delay_ends_at_once(tmp_path: Path) -> None:
    path = tmp_path / "db"
    sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").fetchall()
    checkpointer = Checkpointer(lambda: sqlite3.connect(path, check_same_thread=False), delay=0.05)
    for _ in range(30):  # stop at many points of the loop: never a hang
        checkpointer.start()
        checkpointer.committed()
        time.sleep(0.01)
        stopper = threading.Thread(target=checkpointer.stop)
        stopper.start()
        stopper.join(timeout=5)
        assert not stopper.is_alive()
