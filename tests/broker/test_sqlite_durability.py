"""SQLite broker failure paths: killed processes, several processes on one file, a full or
read-only database. Full disk is simulated with ``PRAGMA max_page_count`` (the database cannot grow
past it and SQLite reports SQLITE_FULL, "database or disk is full", as on a full disk); read-only
with an immutable file (``chattr +i``, which holds even for root)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.broker.contract import OutgoingMessage, QueueConfig
from sluice.broker.sqlite import SQLiteBroker
from sluice.errors import Unavailable
from tests.broker.conftest import Run

# Child programs: argv[1] is the database path. They print one message id per line.
SENDER = """
import asyncio, sys
from sluice.broker.contract import OutgoingMessage, QueueConfig
from sluice.broker.sqlite import SQLiteBroker

async def main(path, batches):
    broker = SQLiteBroker(path)
    await broker.start()
    await broker.create_queue(QueueConfig("jobs", visibility_timeout=60))

    async def sender(k):
        i = 0
        while batches < 0 or i < batches:
            batch = [OutgoingMessage(f"{k}-{i}-{j}") for j in range(10)]
            results = await broker.send("jobs", batch)
            sys.stdout.write("".join(r.message_id + "\\n" for r in results))
            sys.stdout.flush()
            i += 1

    await asyncio.gather(*(sender(k) for k in range(4)))
    await broker.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

RECEIVER = """
import asyncio, sys
from sluice.broker.sqlite import SQLiteBroker

async def main(path):
    broker = SQLiteBroker(path)
    await broker.start()
    print("ready", flush=True)
    sys.stdin.readline()  # start together with the other receiver process

    async def consumer():
        while batch := await broker.receive("jobs", 25, wait=0.3):
            sys.stdout.write("".join(m.message_id + "\\n" for m in batch))
            sys.stdout.flush()
            await asyncio.sleep(0.01)  # some work, so that both processes get a share
            assert all(await broker.delete("jobs", [m.receipt_handle for m in batch]))

    await asyncio.gather(*(consumer() for _ in range(3)))
    await broker.close()

asyncio.run(main(sys.argv[1]))
"""


def _child(program: str, *args: object, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", program, *map(str, args)],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        text=True,
    )


def _ids(text: str) -> list[str]:
    # A child killed mid-write may leave a partial last line: only whole ids count.
    return [line for line in text.split("\n") if len(line) == 36]


async def _drain(broker: SQLiteBroker, queue: str = "jobs") -> list[str]:
    ids: list[str] = []
    while batch := await broker.receive(queue, 500):
        ids += [m.message_id for m in batch]
        assert all(await broker.delete(queue, [m.receipt_handle for m in batch]))
    return ids


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "broker.db"


def test_every_printed_id_survives_sigkill(db: Path, run: Run[Any]) -> None:
    child = _child(SENDER, db, -1)
    assert child.stdout is not None
    printed: list[str] = []
    try:
        while len(printed) < 400:
            line = child.stdout.readline()
            assert line, "the sender exited early"
            printed.append(line.strip())
        child.send_signal(signal.SIGKILL)  # while its four senders are mid-flight
        printed += _ids(child.stdout.read())
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    async def check() -> None:
        async with SQLiteBroker(db) as broker:
            stored = await _drain(broker)
            assert len(stored) == len(set(stored))
            missing = set(printed) - set(stored)
            assert not missing, f"{len(missing)} acknowledged sends lost"

    run(check())


def test_two_processes_send_and_receive_concurrently(db: Path, run: Run[Any]) -> None:
    async def setup() -> None:
        async with SQLiteBroker(db) as broker:
            await broker.create_queue(QueueConfig("jobs", visibility_timeout=60))

    run(setup())
    senders = [_child(SENDER, db, 25) for _ in range(2)]
    sent = [i for p in senders for i in _ids(p.communicate(timeout=60)[0])]
    assert [p.returncode for p in senders] == [0, 0]
    assert len(sent) == len(set(sent)) == 2 * 4 * 25 * 10

    receivers = [_child(RECEIVER, db, stdin=True) for _ in range(2)]
    for p in receivers:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in receivers:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=60)[0] for p in receivers]
    assert [p.returncode for p in receivers] == [0, 0]
    received = [_ids(out) for out in outputs]
    assert all(received), "one receiver got nothing: the race was not exercised"
    # Receiving is atomic across processes: no message went to two receivers, none was missed.
    assert sorted(received[0] + received[1]) == sorted(sent)


@pytest.mark.parametrize("send_process", [False, True], ids=["writer-thread", "send-process"])
def test_full_database_gives_unavailable_and_stores_nothing(
    db: Path, run: Run[Any], send_process: bool
) -> None:
    async def scenario() -> None:
        # 40 pages of 4 KiB: room for a little over 100 KiB of messages.
        pragmas = {"max_page_count": 40}
        async with SQLiteBroker(db, pragmas=pragmas, send_process=send_process) as broker:
            await broker.create_queue(QueueConfig("jobs"))
            accepted: list[str] = []
            with pytest.raises(Unavailable, match="full"):
                for i in range(1000):
                    batch = [OutgoingMessage(f"{i}-{k}-" + "x" * 1000) for k in range(5)]
                    accepted += [r.message_id for r in await broker.send("jobs", batch)]
            assert accepted, "nothing fitted at all: the test says nothing"
            assert (await broker.stats("jobs")).total == len(accepted)

            # Concurrent sends sharing a commit with the one that fills the disk: whatever
            # returned is stored, whatever raised is not.
            big = broker.send("jobs", [OutgoingMessage("y" * 200_000)])
            small = [broker.send("jobs", [OutgoingMessage(f"s{k}")]) for k in range(5)]
            outcomes = await asyncio.gather(big, *small, return_exceptions=True)
            assert isinstance(outcomes[0], Unavailable)
            for outcome in outcomes[1:]:
                if not isinstance(outcome, Unavailable):
                    assert not isinstance(outcome, BaseException)
                    accepted += [r.message_id for r in outcome]
            stored = await _drain(broker)
            assert sorted(stored) == sorted(accepted)

            # Deleting made room again: the broker keeps working.
            await broker.send("jobs", [OutgoingMessage("after")])
            assert [m.body for m in await broker.receive("jobs")] == ["after"]

    run(scenario())


@pytest.fixture
def immutable(db: Path) -> Iterator[None]:
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    yield
    subprocess.run(["chattr", "-i", str(db)], check=False)


def test_read_only_database_gives_unavailable(db: Path, run: Run[Any], immutable: None) -> None:
    async def fill() -> None:
        async with SQLiteBroker(db) as broker:
            await broker.create_queue(QueueConfig("jobs"))
            await broker.send("jobs", [OutgoingMessage("before")])

    run(fill())
    made = subprocess.run(["chattr", "+i", str(db)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make a file immutable here: {made.stderr.decode().strip()}")
    with pytest.raises(PermissionError):
        db.open("r+b").close()

    async def attempt() -> None:
        broker = SQLiteBroker(db)
        try:
            await broker.start()
        except Unavailable:
            return  # refused at start: nothing could have been stored
        try:
            with pytest.raises(Unavailable):
                await broker.send("jobs", [OutgoingMessage("after")])
        finally:
            await broker.close()

    run(attempt())
    subprocess.run(["chattr", "-i", str(db)], check=True)

    async def check() -> None:
        async with SQLiteBroker(db) as broker:
            assert [m.body for m in await broker.receive("jobs", 10)] == ["before"]

    run(check())


def test_unreachable_path_gives_unavailable(tmp_path: Path, run: Run[Any]) -> None:
    broker = SQLiteBroker(tmp_path / "no-such-dir" / "broker.db")
    with pytest.raises(Unavailable):
        run(broker.start())
    # Not started: calls say so instead of hanging.
    with pytest.raises(Unavailable):
        run(broker.send("jobs", [OutgoingMessage("m")]))
    assert not os.path.exists(tmp_path / "no-such-dir")


def test_database_locked_by_another_process_gives_unavailable(db: Path, run: Run[Any]) -> None:
    async def scenario() -> None:
        # busy_timeout shortened from the default 5 s so the test is quick.
        async with SQLiteBroker(db, pragmas={"busy_timeout": 200}) as broker:
            await broker.create_queue(QueueConfig("jobs"))
            other = sqlite3.connect(db, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")  # another writer that does not let go
                loop = asyncio.get_running_loop()
                start = loop.time()
                with pytest.raises(Unavailable, match="locked"):
                    await broker.send("jobs", [OutgoingMessage("refused")])
                assert loop.time() - start < 2
                other.execute("ROLLBACK")
            finally:
                other.close()
            await broker.send("jobs", [OutgoingMessage("accepted")])
            assert [m.body for m in await broker.receive("jobs", 10)] == ["accepted"]

    run(scenario())
