"""The send process: a child process that commits an SQLite broker's standard-queue sends.

A gateway's event loop and a writer thread in the same process share one GIL: every group the
thread commits costs the loop wake-ups and GIL hand-overs, which made a durable queue request cost
the loop about as much again as the request itself (`benchmarks/gateway_profile.py`). Here the
loop only encodes its sends and writes them down a pipe, once per event-loop iteration; the child
runs the same group commit as the writer thread (`groupcommit.commit_group`, `send_standard`) and
answers each frame once it is committed. A send returns only after that answer: durable as before.

The pipes carry frames: a little-endian u32 length, then JSON. To the child, one frame per
event-loop iteration: a list of sends ``[queue, now, ids, md5s, [[body, attributes, delay,
group_id, deduplication_id], ...]]``. From the child: an empty frame once the database is open,
then one frame per frame received, in order: per send ``null`` (stored) or ``[code, message]``.

If the child dies, every send it had not answered fails with `Unavailable` (stored or not is then
unknown: at-least-once, as for any send that gets no answer) and the next send starts a new one.
When the parent dies the child reads the end of its input, commits what it has and exits.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson

from sluice.broker.contract import OutgoingMessage, SendResult
from sluice.broker.groupcommit import Checkpointer, Outcome, _Op, commit_group
from sluice.errors import SluiceError, Unavailable, ValidationError, error_for

if TYPE_CHECKING:
    from sluice.broker.sqlite import _StandardSend

log = logging.getLogger("sluice.broker")

START_TIMEOUT = 30.0  # seconds for the child to open the database
STOP_TIMEOUT = 30.0  # seconds for the child to commit what it has and exit
_LENGTH = 4


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(_LENGTH, "little") + payload


def _frames(buffer: bytearray) -> list[bytes]:
    """Take the complete frames off the front of ``buffer``."""
    frames = []
    at = 0
    while len(buffer) - at >= _LENGTH:
        size = int.from_bytes(buffer[at : at + _LENGTH], "little")
        if len(buffer) - at - _LENGTH < size:
            break
        frames.append(bytes(buffer[at + _LENGTH : at + _LENGTH + size]))
        at += _LENGTH + size
    del buffer[:at]
    return frames


class SendProcess:
    """The parent's side: starts the child, hands it each event-loop iteration's sends."""

    def __init__(self, path: Path, pragmas: Mapping[str, str | int]) -> None:
        self.path = path
        self.pragmas = dict(pragmas)
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._ready: asyncio.Future[None] | None = None
        self._exited: asyncio.Future[int] | None = None
        self._starting: asyncio.Lock | None = None
        self._closed = False
        # This iteration's encoded sends and their futures; then, per frame written, its futures.
        self._gathering: list[tuple[bytes, asyncio.Future[None]]] = []
        self._in_flight: collections.deque[list[asyncio.Future[None]]] = collections.deque()

    async def start(self) -> None:
        """Start the child and wait until it has opened the database."""
        self._closed = False
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._transport is not None:
                return
            loop = asyncio.get_running_loop()
            self._ready, self._exited = loop.create_future(), loop.create_future()
            argv = [sys.executable, "-m", __name__, str(self.path), orjson.dumps(self.pragmas)]
            transport, _ = await loop.subprocess_exec(
                lambda: _ChildPipes(self), *argv, stdin=-1, stdout=-1, stderr=None
            )
            self._transport = transport
            self._stdin = cast(asyncio.WriteTransport, transport.get_pipe_transport(0))
            waited: list[asyncio.Future[Any]] = [self._ready, self._exited]
            done, _ = await asyncio.wait(
                waited,
                timeout=START_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if self._ready not in done:
                transport.kill()
                raise Unavailable(f"the SQLite send process could not open {self.path}")
            log.debug("send process %d writes %s", transport.get_pid(), self.path)

    async def close(self) -> None:
        """Let the child commit and answer what it has, then wait for it to exit."""
        self._closed = True
        transport, exited = self._transport, self._exited
        if transport is None or exited is None:
            return
        if self._gathering:
            self._flush()
        assert self._stdin is not None
        self._stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(exited), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("the SQLite send process did not exit in %g s; killed", STOP_TIMEOUT)
            transport.kill()
            await exited
        transport.close()

    async def send(self, send: _StandardSend) -> list[SendResult]:
        """Store one send; return once it is committed, or raise what refused it."""
        if self._closed:
            raise Unavailable("the SQLite broker is not started")
        if self._transport is None:
            await self.start()
        messages = [
            (m.body, dict(m.attributes) or None, m.delay, m.group_id, m.deduplication_id)
            for m in send.messages
        ]
        try:
            encoded = orjson.dumps((send.queue, send.now, send.ids, send.md5s, messages))
        except TypeError as error:
            raise ValidationError(f"a message is not JSON-representable: {error}") from None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._gathering:
            loop.call_soon(self._flush)
        self._gathering.append((encoded, future))
        await future
        return list(map(SendResult, send.ids, send.md5s))

    def _flush(self) -> None:
        gathered, self._gathering = self._gathering, []
        if not gathered:
            return
        futures = [future for _, future in gathered]
        if self._stdin is None or self._stdin.is_closing():
            _fail(futures, Unavailable("the SQLite send process is not running"))
            return
        self._stdin.write(_frame(b"[" + b",".join(encoded for encoded, _ in gathered) + b"]"))
        self._in_flight.append(futures)

    # -- from the child's pipes ------------------------------------------------------------

    def _received(self, payload: bytes) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
            return
        futures = self._in_flight.popleft()
        for future, outcome in zip(futures, orjson.loads(payload), strict=True):
            if future.done():
                continue
            if outcome is None:
                future.set_result(None)
            else:
                future.set_exception(error_for(*outcome))

    def _gone(self, returncode: int | None) -> None:
        """The child exited: what it did not answer has an unknown outcome."""
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(returncode if returncode is not None else -1)
        if not self._closed:
            log.error(
                "the SQLite send process exited (%s); it restarts on the next send", returncode
            )
        error = Unavailable(
            f"the SQLite send process exited ({returncode}) before answering; "
            "whether the message was stored is unknown"
        )
        while self._in_flight:
            _fail(self._in_flight.popleft(), error)
        self._transport = self._stdin = None


def _fail(futures: list[asyncio.Future[None]], error: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


class _ChildPipes(asyncio.SubprocessProtocol):
    def __init__(self, owner: SendProcess) -> None:
        self.owner = owner
        self.buffer = bytearray()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self.buffer += data if isinstance(data, bytes) else data.encode()
        for payload in _frames(self.buffer):
            self.owner._received(payload)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        # Its output ends when the child does, after every answer it wrote (`process_exited`
        # may come before the last answers are read).
        if fd == 1:
            transport = self.owner._transport
            self.owner._gone(transport.get_returncode() if transport is not None else None)


# -- the child ---------------------------------------------------------------------------------


def _outcome(op_outcome: Outcome) -> Any:
    """A send's outcome as the parent reads it: None (stored) or [code, message]."""
    ok, value = op_outcome
    if ok:  # the batch ran: this send's own outcome is its only item
        ok, value = value[0]
    if ok:
        return None
    if isinstance(value, SluiceError):
        return [value.code, value.message]
    return ["InternalError", f"{type(value).__name__}: {value}"]


def _ops(frame: bytes, send_fn: Any, alone_fn: Any) -> list[_Op]:
    from sluice.broker.sqlite import _StandardSend

    ops = []
    for queue, now, ids, md5s, messages in orjson.loads(frame):
        send = _StandardSend(queue, [OutgoingMessage(*m) for m in messages], now, ids, md5s)
        ops.append(_Op(send_fn, None, key=("send", queue), items=[send], alone=alone_fn))
    return ops


def serve(path: Path, pragmas: Mapping[str, str | int], stdin: int, stdout: int) -> None:
    """The child's loop: read frames, commit each read's frames as one group, answer each."""
    from sluice.broker.sqlite import (
        CHECKPOINT_DELAY,
        QueueCache,
        open_writer,
        send_standard,
        send_standard_alone,
    )
    from sluice.broker.sqlite_schema import connect

    conn = open_writer(path, pragmas)
    checkpointer = Checkpointer(lambda: connect(path, pragmas), CHECKPOINT_DELAY)
    checkpointer.start()
    cache = QueueCache()
    send_fn, alone_fn = partial(send_standard, cache), partial(send_standard_alone, cache)
    os.write(stdout, _frame(b""))
    buffer = bytearray()
    try:
        while data := os.read(stdin, 1 << 20):
            buffer += data
            frames = [_ops(frame, send_fn, alone_fn) for frame in _frames(buffer)]
            if not frames:
                continue
            group = [op for ops in frames for op in ops]
            try:
                outcomes = iter(commit_group(conn, group))
            except Exception as error:  # never leave the parent waiting on a dead group
                if conn.in_transaction:
                    conn.rollback()
                failed = (False, Unavailable(f"SQLite write failed: {error}"))
                outcomes = iter([failed] * len(group))
            checkpointer.committed()
            answers = [
                _frame(orjson.dumps([_outcome(next(outcomes)) for _ in ops])) for ops in frames
            ]
            os.write(stdout, b"".join(answers))
    except BrokenPipeError:
        pass  # the parent is gone; what was committed stays
    finally:
        checkpointer.stop()
        conn.close()


def main(argv: list[str]) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when this ends
    # (by closing its input), so that no group is cut short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol has stdout to itself: anything printed goes to stderr.
    out = os.dup(1)
    os.dup2(2, 1)
    try:
        serve(Path(argv[0]), orjson.loads(argv[1]), 0, out)
    except sqlite3.Error as error:
        print(f"sluice send process: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
