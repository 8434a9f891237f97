"""The SQLite broker's send process: what happens to each send when the child dies, when its
parent dies, when it cannot start; `send_soon`'s answers. (The broker contract suite runs on it
too: the ``sqlite-send-process`` backend.)"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import psutil
import pytest

from sluice.broker.contract import OutgoingMessage, QueueConfig, SendOutcome
from sluice.broker.send_process import READ_SIZE, SendProcess
from sluice.broker.sqlite import SQLiteBroker
from sluice.errors import MessageTooLarge, QueueDoesNotExist, SluiceError, Unavailable


def child_pid(broker: SQLiteBroker) -> int:
    process = broker._send_process
    assert process is not None and process._transport is not None
    return int(process._transport.get_pid())


async def drain(broker: SQLiteBroker, queue: str) -> set[str]:
    bodies: set[str] = set()
    while batch := await broker.receive(queue, 10):
        bodies.update(m.body for m in batch)
        await broker.delete(queue, [m.receipt_handle for m in batch])
    return bodies


def test_child_killed_mid_stream_loses_no_acknowledged_send(tmp_path: Path) -> None:
    asyncio.run(_child_killed_mid_stream_loses_no_acknowledged_send(tmp_path))


async def _child_killed_mid_stream_loses_no_acknowledged_send(tmp_path: Path) -> None:
    async with SQLiteBroker(tmp_path / "b.db", send_process=True) as broker:
        await broker.create_queue(QueueConfig("q"))
        acked: set[str] = set()
        refused: list[SluiceError] = []
        stop = asyncio.Event()

        async def sender(n: int) -> None:
            i = 0
            while not stop.is_set():
                body = f"{n}-{i}"
                i += 1
                try:
                    await broker.send("q", [OutgoingMessage(body)])
                except Unavailable as error:
                    refused.append(error)
                    await asyncio.sleep(0.01)
                else:
                    acked.add(body)

        senders = [asyncio.create_task(sender(n)) for n in range(16)]
        while len(acked) < 500:
            await asyncio.sleep(0.01)
        first = child_pid(broker)
        os.kill(first, signal.SIGKILL)
        before = len(acked)
        while len(acked) < before + 500:  # a new child took over
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*senders)
        assert child_pid(broker) != first
        assert refused, "the sends in flight when the child died must fail, not hang"
        assert all("unknown" in e.message or "not running" in e.message for e in refused)
        stored = await drain(broker, "q")
    assert acked <= stored  # every acknowledged send is stored; refused ones may be too


def test_child_commits_and_exits_when_its_parent_dies(tmp_path: Path) -> None:
    asyncio.run(_child_commits_and_exits_when_its_parent_dies(tmp_path))


async def _child_commits_and_exits_when_its_parent_dies(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from sluice.broker.contract import OutgoingMessage, QueueConfig
        from sluice.broker.sqlite import SQLiteBroker

        async def main():
            broker = SQLiteBroker({str(db)!r}, send_process=True)
            await broker.start()
            await broker.create_queue(QueueConfig("q"))
            n = 0
            while True:
                await broker.send("q", [OutgoingMessage(str(n))])
                print(n, flush=True)
                n += 1

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        acked = [parent.stdout.readline() for _ in range(200)]
        children = psutil.Process(parent.pid).children()
        assert len(children) == 1
        parent.kill()
        parent.wait(10)
        children[0].wait(10)  # it saw the end of its input and exited by itself
        acked += parent.stdout.read().splitlines()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
    async with SQLiteBroker(db) as broker:
        stored = await drain(broker, "q")
    assert {line.strip() for line in acked if line.strip()} <= stored


def test_a_child_that_cannot_open_the_database_is_unavailable(tmp_path: Path) -> None:
    asyncio.run(_a_child_that_cannot_open_the_database_is_unavailable(tmp_path))


async def _a_child_that_cannot_open_the_database_is_unavailable(tmp_path: Path) -> None:
    process = SendProcess(tmp_path / "missing" / "b.db", {})
    started = time.monotonic()
    with pytest.raises(Unavailable, match="could not open"):
        await process.start()
    assert time.monotonic() - started < 10


def test_send_soon_answers_with_results_or_the_error(tmp_path: Path) -> None:
    asyncio.run(_send_soon_answers_with_results_or_the_error(tmp_path))


async def _send_soon_answers_with_results_or_the_error(tmp_path: Path) -> None:
    async with SQLiteBroker(tmp_path / "b.db", send_process=True) as broker:
        await broker.create_queue(QueueConfig("q"))
        await broker.create_queue(QueueConfig("q.fifo"))
        loop = asyncio.get_running_loop()
        answers: dict[str, asyncio.Future[SendOutcome]] = {}
        for queue, message in [
            ("q", OutgoingMessage("standard")),
            ("q.fifo", OutgoingMessage("fifo", group_id="g", deduplication_id="d")),  # a task
            ("nope", OutgoingMessage("lost")),
        ]:
            answers[queue] = future = loop.create_future()
            broker.send_soon(queue, [message], future.set_result)
        standard, fifo, missing = [await answers[q] for q in ("q", "q.fifo", "nope")]
        assert isinstance(standard, list) and isinstance(fifo, list)
        assert standard[0].md5_of_body == hashlib.md5(b"standard").hexdigest()
        assert isinstance(missing, QueueDoesNotExist)
        received = await broker.receive("q", 10)
        assert [(m.message_id, m.body) for m in received] == [(standard[0].message_id, "standard")]
        assert received[0].md5_of_body == standard[0].md5_of_body


def test_sends_while_another_process_locks_the_database_fail_and_store_nothing(
    tmp_path: Path,
) -> None:
    asyncio.run(_locked(tmp_path))


async def _locked(tmp_path: Path) -> None:
    """The child waits busy_timeout for the write lock, then answers Unavailable: nothing of
    those sends is stored, the child keeps running, and the next sends are stored."""
    path = tmp_path / "b.db"
    pragmas = {"busy_timeout": 200}
    async with SQLiteBroker(path, pragmas=pragmas, send_process=True) as broker:
        await broker.create_queue(QueueConfig("q"))
        await broker.send("q", [OutgoingMessage("before")])
        pid = child_pid(broker)
        other = sqlite3.connect(path, isolation_level=None, timeout=0)
        other.execute("BEGIN EXCLUSIVE")
        try:
            refused = await asyncio.gather(
                *(broker.send("q", [OutgoingMessage(f"locked {i}")]) for i in range(5)),
                return_exceptions=True,
            )
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert all(isinstance(r, Unavailable) for r in refused)
        await broker.send("q", [OutgoingMessage("after")])
        assert child_pid(broker) == pid  # the same child: a refusal is not a crash
        assert await drain(broker, "q") == {"before", "after"}


def test_one_frame_of_mixed_sends_answers_each_send_alone(tmp_path: Path) -> None:
    asyncio.run(_mixed_frame(tmp_path))


async def _mixed_frame(tmp_path: Path) -> None:
    """Sends of one event-loop iteration travel as one frame: to two queues, plain bodies and
    full messages (attributes, delay), one too large, one whose body is not a string, one whose
    attribute JSON cannot carry, one to a missing queue. Each gets its own answer, in its order,
    and only the valid ones are stored, with the ids and checksums their results name."""
    async with SQLiteBroker(tmp_path / "b.db", send_process=True) as broker:
        await broker.create_queue(QueueConfig("a", max_message_size=1024))
        await broker.create_queue(QueueConfig("b"))
        attrs = {"kind": {"DataType": "String", "StringValue": "full"}}
        sends: list[tuple[str, list[OutgoingMessage]]] = [
            ("a", [OutgoingMessage("plain a1"), OutgoingMessage("plain a2")]),
            ("b", [OutgoingMessage("full b", attributes=attrs)]),
            ("a", [OutgoingMessage("x" * 1025)]),  # too large for a: refused alone
            ("b", [OutgoingMessage("delayed b", delay=0)]),
            ("a", [OutgoingMessage(42)]),  # type: ignore[arg-type]  # not a string: refused
            (
                "b",
                [
                    OutgoingMessage(
                        "odd", attributes={"k": {"DataType": "String", "StringValue": {1}}}
                    )
                ],
            ),  # type: ignore[dict-item]
            ("nope", [OutgoingMessage("lost")]),
            ("b", [OutgoingMessage("plain b")]),
        ]
        loop = asyncio.get_running_loop()
        answers = []
        for queue, messages in sends:  # all in one iteration: one frame
            answers.append(future := loop.create_future())
            broker.send_soon(queue, messages, future.set_result)
        outcomes = await asyncio.wait_for(asyncio.gather(*answers), 10)
        kinds = [type(o).__name__ if isinstance(o, SluiceError) else "stored" for o in outcomes]
        assert kinds == [
            "stored",
            "stored",
            "MessageTooLarge",
            "stored",
            "ValidationError",
            "ValidationError",
            "QueueDoesNotExist",
            "stored",
        ]
        assert "JSON" in str(outcomes[5])
        stored = {
            r.message_id: (body, r.md5_of_body)
            for outcome, (_, messages) in zip(outcomes, sends, strict=True)
            if isinstance(outcome, list)
            for r, body in zip(outcome, (m.body for m in messages), strict=True)
        }
        received = {}
        for queue in ("a", "b"):
            while batch := await broker.receive(queue, 10):
                received.update(
                    {m.message_id: (m.body, m.md5_of_body, m.attributes) for m in batch}
                )
                await broker.delete(queue, [m.receipt_handle for m in batch])
        assert {i: v[:2] for i, v in received.items()} == stored
        full = [v[2] for v in received.values() if v[0] == "full b"]
        assert full == [attrs]
        assert {body for body, _ in stored.values()} == {
            "plain a1",
            "plain a2",
            "full b",
            "delayed b",
            "plain b",
        }
        assert all(md5 == hashlib.md5(body.encode()).hexdigest() for body, md5 in stored.values())


def test_a_frame_larger_than_one_read_arrives_whole(tmp_path: Path) -> None:
    asyncio.run(_large_frame(tmp_path))


async def _large_frame(tmp_path: Path) -> None:
    """The child reads `READ_SIZE` bytes at a time: a frame of several reads is still one frame."""
    async with SQLiteBroker(tmp_path / "b.db", send_process=True) as broker:
        await broker.create_queue(QueueConfig("q"))
        big = "".join(chr(0x41 + i % 26) for i in range(3 * READ_SIZE // 2))
        bodies = [big, big[::-1], "small"]
        results = await asyncio.gather(*(broker.send("q", [OutgoingMessage(b)]) for b in bodies))
        assert len({r[0].message_id for r in results}) == 3
        assert await drain(broker, "q") == set(bodies)


def test_a_queue_changed_since_the_childs_last_send_is_read_again(tmp_path: Path) -> None:
    asyncio.run(_changed_queue(tmp_path))


async def _changed_queue(tmp_path: Path) -> None:
    """The child inserts against the queue as it last saw it; when the queue has changed since
    (new settings, or deleted and created again), nothing is inserted by that statement and the
    sends run again against the queue as it is now: its new limits apply, its new id holds them."""
    async with SQLiteBroker(tmp_path / "b.db", send_process=True) as broker:
        await broker.create_queue(QueueConfig("q"))
        await broker.send("q", [OutgoingMessage("seen by the child")])
        await broker.create_queue(QueueConfig("q", max_message_size=1024))
        small, large = OutgoingMessage("s" * 1024), OutgoingMessage("l" * 1025)
        outcomes = await asyncio.gather(
            broker.send("q", [small]), broker.send("q", [large]), return_exceptions=True
        )
        assert isinstance(outcomes[0], list) and isinstance(outcomes[1], MessageTooLarge)
        assert await drain(broker, "q") == {"seen by the child", "s" * 1024}
        await broker.delete_queue("q")
        await broker.create_queue(QueueConfig("q"))
        await broker.send("q", [OutgoingMessage("after")])
        assert await drain(broker, "q") == {"after"}


# A send process that opens nothing and answers every frame with bytes that are not an answer.
_GARBLING_CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path[:0] = {path!r}
    from sluice.broker.send_process import _frame
    os.write(1, _frame(b""))  # "the database is open"
    while os.read(0, 65536):
        os.write(1, _frame(b"not json"))
    """
)


@pytest.mark.parametrize("kind", ["garbled", "miscounted", "huge"])
def test_an_answer_that_is_not_one_fails_the_sends_and_replaces_the_child(
    tmp_path: Path, kind: str
) -> None:
    asyncio.run(_malformed_answer(tmp_path, kind))


async def _malformed_answer(tmp_path: Path, kind: str) -> None:
    """A frame from the child that is not JSON, answers a different number of sends, or claims
    a length no answer can have (1 GiB, its bytes never coming): whether those sends were stored
    is unknown, so each fails with `Unavailable` (none hangs), the child is killed, and the next
    send starts a new one."""
    script = tmp_path / "child.py"
    text = _GARBLING_CHILD.format(path=sys.path)
    if kind == "miscounted":
        text = text.replace('_frame(b"not json")', '_frame(b"[]")')
    elif kind == "huge":
        text = text.replace('_frame(b"not json")', '(1 << 30).to_bytes(4, "little") + b"[["')
    script.write_text(text)
    broker = SQLiteBroker(tmp_path / "b.db", send_process=True)
    process = broker._send_process
    assert process is not None
    process.child_command = (sys.executable, str(script))
    async with broker:
        await broker.create_queue(QueueConfig("q"))
        first = child_pid(broker)
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(broker.send("q", [OutgoingMessage(f"m{i}")]) for i in range(5)),
                return_exceptions=True,
            ),
            10,
        )
        assert all(isinstance(o, Unavailable) and "unknown" in o.message for o in outcomes)
        process.child_command = SendProcess.child_command  # the real one from now on
        while process.running:  # the killed child's end is read: the next send starts another
            await asyncio.sleep(0.01)
        [_] = await asyncio.wait_for(broker.send("q", [OutgoingMessage("after")]), 10)
        assert child_pid(broker) != first
        assert await drain(broker, "q") == {"after"}


class _RecordingStdin:
    """The child's stdin, recording the number of sends in each frame written to it."""

    def __init__(self) -> None:
        self.frames: list[int] = []

    def write(self, data: bytes) -> None:
        _, queues = orjson.loads(data[4:])
        self.frames.append(sum(len(sends) for _, sends in queues))

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("hold", [True, False])
def test_a_frame_smaller_than_the_one_being_committed_waits_for_its_answer(hold: bool) -> None:
    """One frame in flight: what gathers meanwhile goes to the child once it is at least as many
    sends as that frame, else with the frame's answer (nothing is lost or answered early). With
    the rule off, every iteration's sends are written at once."""

    async def main() -> None:
        process = SendProcess(Path("unused.db"), {})
        process.hold_smaller_frames = hold
        stdin = _RecordingStdin()
        process._stdin = stdin  # type: ignore[assignment]
        outcomes: list[SendOutcome] = []

        async def sends(n: int) -> None:
            for i in range(n):
                process.submit("q", [OutgoingMessage(f"m{i}")], outcomes.append)
            await asyncio.sleep(0)  # the iteration ends: `_flush` runs

        await sends(3)
        assert stdin.frames == [3]
        await sends(2)
        assert stdin.frames == ([3] if hold else [3, 2])
        if hold:
            process._received(orjson.dumps([[f"id{i}"] for i in range(3)]))
            assert stdin.frames == [3, 2]  # written with the answer it waited for
            assert outcomes == [["id0"], ["id1"], ["id2"]]
            await sends(2)  # as many as the frame in flight: written at once
            assert stdin.frames == [3, 2, 2]

    asyncio.run(main())


def test_sends_held_behind_a_frame_fail_as_not_stored_when_the_child_ends() -> None:
    """The child ends with one frame unanswered and smaller sends held behind it: the frame's
    sends fail as unknown (the child may have committed them), the held ones as not stored (it
    never saw them). None is left waiting. Closing instead writes the held frame at once."""

    async def main() -> None:
        process = SendProcess(Path("unused.db"), {})
        stdin = _RecordingStdin()
        process._stdin = stdin  # type: ignore[assignment]
        outcomes: list[SendOutcome] = []
        for i in range(3):
            process.submit("q", [OutgoingMessage(f"m{i}")], outcomes.append)
        await asyncio.sleep(0)
        process.submit("q", [OutgoingMessage("held")], outcomes.append)
        await asyncio.sleep(0)
        assert stdin.frames == [3]  # the fourth send is held
        process._gone()
        assert len(outcomes) == 4 and all(isinstance(o, Unavailable) for o in outcomes)
        assert all("unknown" in o.message for o in outcomes[:3])  # type: ignore[union-attr]
        assert "unknown" not in outcomes[3].message  # type: ignore[union-attr]

        closing = SendProcess(Path("unused.db"), {})
        closing._stdin = stdin = _RecordingStdin()  # type: ignore[assignment]
        for i in range(3):
            closing.submit("q", [OutgoingMessage(f"m{i}")], outcomes.append)
        await asyncio.sleep(0)
        closing.submit("q", [OutgoingMessage("held")], outcomes.append)
        closing._flush(at_once=True)  # as `close` does: the child gets it before its input ends
        assert stdin.frames == [3, 1]

    asyncio.run(main())
