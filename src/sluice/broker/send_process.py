"""The send process: a child process that commits an SQLite broker's standard-queue sends.

A gateway's event loop and a writer thread in the same process share one GIL: every group the
thread commits costs the loop wake-ups and GIL hand-overs, which made a durable queue request cost
the loop about as much again as the request itself (`benchmarks/gateway_profile.py`). Here the
loop only encodes its sends and writes them down a pipe, at most once per event-loop iteration
(`SendProcess._flush` says when); the child runs the same group commit as the writer thread
(`groupcommit.commit_group`, `send_standard`) and answers each frame once it is committed. A send
returns only after that answer: durable as before.

The pipes carry frames: a little-endian u32 length, then JSON. To the child, each frame is
``[now, [[queue, [send, ...]], ...]]``, its sends gathered by queue, each
send a list of messages: the body alone when it has no attributes, delay or ids (nearly always),
else ``[body, attributes, delay, group_id, deduplication_id]`` (``now`` in milliseconds of the
broker's clock, taken as the frame is written). From the child: an empty frame once the database
is open, then one frame per frame received, in order: per send, in the frame's order, the list of
its message ids (stored; the child makes the ids and the MD5s it stores) or ``{"error": code,
"message": ...}`` (refused, nothing of it stored).

If the child dies, every send it had not answered fails with `Unavailable` (stored or not is then
unknown: at-least-once, as for any send that gets no answer) and the next send starts a new one.
When the parent dies the child reads the end of its input, commits what it has and exits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import orjson

from sluice.broker.contract import OutgoingMessage
from sluice.broker.groupcommit import Checkpointer, Operation, Outcome, commit_group
from sluice.errors import SluiceError, Unavailable, ValidationError, error_for
from sluice.futures import settle_with

log = logging.getLogger("sluice.broker")

# Told a send's outcome: its message ids once it is committed, or the error that refused it.
Done = Callable[[list[str] | SluiceError], None]
# A message as a frame carries it: its body alone, or all its fields.
Message = str | tuple[str, Any, float | None, str | None, str | None]
# One iteration's sends by queue: each send's messages, beside each send's callback.
Gathered = dict[str, tuple[list[list[Message]], list[Done]]]
START_TIMEOUT = 30.0  # seconds for the child to open the database
STOP_TIMEOUT = 30.0  # seconds for the child to commit what it has and exit
# Frames written and not answered yet: one being committed, one waiting for the child to read it.
MAX_FRAMES_IN_FLIGHT = 2
_LENGTH = 4
# Bytes the child asks for per read: a larger frame takes several reads. (Asking for 1 MiB cost
# an mmap and page faults on every read in a young process: benchmarks/send_process_cost.py.)
READ_SIZE = 1 << 16
# The most an answer can take: per message its id, per send an error in place of its ids. A
# length prefix claiming more is not an answer (the parent would otherwise wait for its bytes).
_ANSWER_PER_MESSAGE, _ANSWER_PER_SEND = 48, 4096


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

    # The child's command line before its two arguments (a benchmark swaps in a diagnostic child).
    child_command: tuple[str, ...] = (sys.executable, "-m", __name__)
    # A frame smaller than the one being committed waits for its answer (`_flush`). A benchmark
    # turns this off to measure what the rule buys.
    hold_smaller_frames = True

    def __init__(
        self,
        path: Path,
        pragmas: Mapping[str, str | int],
        clock_ms: Callable[[], int] = lambda: round(time.time() * 1000),
    ) -> None:
        self.path = path
        self.pragmas = dict(pragmas)
        self.clock_ms = clock_ms
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._pipes: _ChildPipes | None = None
        self._ready: asyncio.Future[None] | None = None  # the child opened the database
        self._ended: asyncio.Future[None] | None = None  # its output ended
        self._starting: asyncio.Lock | None = None
        self._closed = False
        # The sends gathered since the last frame, by queue, each beside its callback; then each
        # written frame's callbacks, in the frame's order, with the most bytes its answer can take.
        self._gathering: Gathered = {}
        self._flush_soon = False
        self._in_flight: collections.deque[tuple[list[Done], int]] = collections.deque()

    async def start(self) -> None:
        """Start the child and wait until it has opened the database."""
        self._closed = False
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._transport is not None:
                return
            loop = asyncio.get_running_loop()
            self._ready, self._ended = loop.create_future(), loop.create_future()
            argv = [*self.child_command, str(self.path), orjson.dumps(self.pragmas)]
            try:
                transport, self._pipes = await loop.subprocess_exec(
                    lambda: _ChildPipes(self, loop), *argv, stdin=-1, stdout=-1, stderr=None
                )
            except OSError as error:
                raise Unavailable(f"the SQLite send process could not start: {error}") from None
            self._transport = transport
            self._stdin = cast(asyncio.WriteTransport, transport.get_pipe_transport(0))
            done, _ = await asyncio.wait(
                [self._ready, self._ended], timeout=START_TIMEOUT, return_when=FIRST_COMPLETED
            )
            if self._ready not in done:
                self._pipes.kill()  # if it is still trying
                await self._pipes.exited
                self._transport = self._stdin = None
                raise Unavailable(f"the SQLite send process could not open {self.path}")
            log.debug("send process %d writes %s", transport.get_pid(), self.path)

    @property
    def running(self) -> bool:
        return self._stdin is not None and not self._stdin.is_closing() and not self._closed

    async def close(self) -> None:
        """Let the child commit and answer what it has, then wait for it to exit."""
        self._closed = True
        transport, pipes = self._transport, self._pipes
        if pipes is None:
            return
        if transport is not None and self._stdin is not None:
            self._flush(at_once=True)
            self._stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(pipes.exited), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("the SQLite send process did not exit in %g s; killed", STOP_TIMEOUT)
            pipes.kill()
            await pipes.exited

    async def send(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Store one send; return its message ids once it is committed, or raise what refused
        it."""
        if self._transport is None and not self._closed:
            await self.start()
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self.submit(queue, messages, partial(settle_with, future))
        return await future

    def submit(self, queue: str, messages: Sequence[OutgoingMessage], done: Done) -> None:
        """Hand one send to the child; ``done(ids)`` once it is committed, or ``done(error)``.
        Raises `Unavailable` at once if the child is not running."""
        if self._closed:
            raise Unavailable("the SQLite broker is not started")
        if self._stdin is None or self._stdin.is_closing():
            raise Unavailable("the SQLite send process is not running")
        gathered = self._gathering.get(queue)
        if gathered is None:
            gathered = self._gathering[queue] = ([], [])
        gathered[0].append([_carried(m) for m in messages])
        gathered[1].append(done)
        if not self._flush_soon and len(self._in_flight) < MAX_FRAMES_IN_FLIGHT:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self, *, at_once: bool = False) -> None:
        """Write what was gathered as one frame, unless the child already has
        `MAX_FRAMES_IN_FLIGHT` to answer, or has one and this would carry fewer sends than it.
        Then the child's next answer writes it, with all gathered until then: one frame, one
        wake-up of the child, one answer for all of it. (A commit's flush costs the same whatever
        it holds, about half of a 26-send commit in `benchmarks/send_process_cost.py`: a small
        frame queued behind a large one would spend a whole commit on a few sends, and hold up
        those that arrive meanwhile. At 64 connections the queue route served 38 % more requests
        with this rule, its frames even instead of from 3 to 56 sends:
        `benchmarks/send_pipelining.py`.)"""
        self._flush_soon = False
        if not self._gathering or (not at_once and self._waits()):
            return
        gathered, self._gathering = self._gathering, {}
        if self._stdin is None or self._stdin.is_closing():
            _answer(_callbacks(gathered), Unavailable("the SQLite send process is not running"))
            return
        messages = sum(len(m) for sends, _ in gathered.values() for m in sends)
        payload, callbacks = _encode(self.clock_ms(), gathered)
        if callbacks:
            self._stdin.write(_frame(payload))
            bound = _ANSWER_PER_MESSAGE * messages + _ANSWER_PER_SEND * len(callbacks)
            self._in_flight.append((callbacks, bound))

    def _waits(self) -> bool:
        """Whether what is gathered waits for the child's next answer (see `_flush`)."""
        if not self._in_flight:
            return False
        if len(self._in_flight) >= MAX_FRAMES_IN_FLIGHT:
            return True
        gathered = sum(len(callbacks) for _, callbacks in self._gathering.values())
        return self.hold_smaller_frames and gathered < len(self._in_flight[-1][0])

    # -- from the child's pipes ------------------------------------------------------------

    def _received(self, payload: bytes) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
            return
        if not self._in_flight:
            self._corrupt([], "an answer with no frame to answer")
            return
        callbacks, _ = self._in_flight.popleft()
        try:
            outcomes = [_read(answer) for answer in orjson.loads(payload)]
            if len(outcomes) != len(callbacks):
                raise ValueError(f"{len(outcomes)} answers for {len(callbacks)} sends")
        except (ValueError, TypeError, KeyError) as error:
            self._corrupt(callbacks, str(error))
            return
        self._flush()  # what gathered while the child worked: it reads it as soon as it can
        for done, outcome in zip(callbacks, outcomes, strict=True):
            _call(done, outcome)

    def _check_next(self, claimed: int) -> None:
        """The child's next answer claims ``claimed`` bytes: more than it can take (or an answer
        to nothing) is not an answer."""
        if not self._in_flight:
            self._corrupt([], "an answer with no frame to answer")
        elif claimed > self._in_flight[0][1]:
            callbacks, bound = self._in_flight.popleft()
            self._corrupt(callbacks, f"an answer of {claimed} bytes, at most {bound} expected")

    def _corrupt(self, callbacks: list[Done], reason: str) -> None:
        """The child wrote something that is not an answer: trust it no more. The sends it was
        answering (``callbacks``) fail now; killing it fails the rest (`_gone`)."""
        log.error("the SQLite send process answered with a malformed frame (%s); killed", reason)
        _answer(
            callbacks,
            Unavailable(
                "the SQLite send process answered with a malformed frame; whether the message "
                "was stored is unknown"
            ),
        )
        if self._pipes is not None:
            self._pipes.kill()  # its end answers what else it had (`_gone`)

    def _gone(self) -> None:
        """The child's output ended (it exited, or is exiting): what it did not answer has an
        unknown outcome."""
        self._transport = self._stdin = None
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        if not self._closed:
            log.error("the SQLite send process ended; a new one starts on the next send")
        error = Unavailable(
            "the SQLite send process ended before answering; whether the message was stored is "
            "unknown"
        )
        while self._in_flight:
            _answer(self._in_flight.popleft()[0], error)
        gathered, self._gathering = self._gathering, {}  # never handed over: not stored
        _answer(_callbacks(gathered), Unavailable("the SQLite send process ended"))


def _carried(m: OutgoingMessage) -> Message:
    if not m.attributes and m.delay is None and m.group_id is None and m.deduplication_id is None:
        return m.body
    return (m.body, m.attributes or None, m.delay, m.group_id, m.deduplication_id)


def _callbacks(gathered: Gathered) -> list[Done]:
    """The gathered sends' callbacks, in the order a frame carries the sends."""
    return [done for _, callbacks in gathered.values() for done in callbacks]


def _encode(now: int, gathered: Gathered) -> tuple[bytes, list[Done]]:
    """A frame's JSON and its callbacks in the frame's order. A send that cannot be encoded (an
    attribute that JSON cannot represent) is refused alone: its callback is told at once."""
    try:
        payload = orjson.dumps([now, [[q, sends] for q, (sends, _) in gathered.items()]])
        return payload, _callbacks(gathered)
    except TypeError:
        pass  # which send it was is found send by send
    encodable: Gathered = {}
    for queue, (sends, callbacks) in gathered.items():
        for send, done in zip(sends, callbacks, strict=True):
            try:
                orjson.dumps(send)
            except TypeError as error:
                refused = ValidationError(f"a message is not JSON-representable: {error}")
                _answer([done], refused)
                continue
            kept = encodable.setdefault(queue, ([], []))
            kept[0].append(send)
            kept[1].append(done)
    return _encode(now, encodable) if encodable else (b"", [])


def _read(answer: Any) -> list[str] | SluiceError:
    """A send's answer from the child as its outcome: its message ids, or its error."""
    return answer if type(answer) is list else error_for(answer["error"], answer["message"])


def _call(done: Done, outcome: list[str] | SluiceError) -> None:
    try:
        done(outcome)
    except Exception:  # one caller's failure must not keep the others from their answers
        log.exception("a send's callback failed")


def _answer(callbacks: list[Done], error: SluiceError) -> None:
    for done in callbacks:
        _call(done, error)


class _ChildPipes(asyncio.SubprocessProtocol):
    def __init__(self, owner: SendProcess, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.buffer = bytearray()
        self.transport: asyncio.SubprocessTransport | None = None
        self.exited: asyncio.Future[None] = loop.create_future()  # reaped, pipes closed
        self.killed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.SubprocessTransport, transport)

    def kill(self) -> None:
        self.killed = True
        if self.transport is not None and not self.exited.done():
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                self.transport.kill()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if self.killed:
            return  # nothing from a child we killed is trusted any more
        buffer = self.buffer
        buffer += data if isinstance(data, bytes) else data.encode()
        for payload in _frames(buffer):
            if self.killed:  # by an earlier answer in this read that was not one
                return
            self.owner._received(payload)
        if len(buffer) >= _LENGTH and not self.killed:  # a frame not all here yet
            self.owner._check_next(int.from_bytes(buffer[:_LENGTH], "little"))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        # Its output ends when the child does, after every answer it wrote (`process_exited`
        # may come before the last answers are read).
        if fd == 1:
            self.owner._gone()

    def process_exited(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.exited.done():
            self.exited.set_result(None)


# -- the child ---------------------------------------------------------------------------------


class _Frame:
    """One received frame's sends as group-commit operations, one per queue, with the ids made
    for them here: the sends of plain bodies as one `sqlite._PlainSends` item, each other send as
    a `sqlite._StandardSend` item after it."""

    __slots__ = ("operations", "plain")

    def __init__(self, frame: bytes, ids: Any, send_fn: Any, alone_fn: Any) -> None:
        # Imported here: `sqlite` imports this module.
        from sluice.broker.sqlite import _PlainSends, _StandardSend

        now, queues = orjson.loads(frame)
        self.operations: list[Operation] = []
        self.plain: list[list[bool]] = []  # per operation, per send in order: plain or not
        for queue, sends in queues:
            counts: list[int] = []
            bodies: list[Any] = []
            full: list[Any] = []
            plain = [all(type(m) is not list for m in messages) for messages in sends]
            for messages, is_plain in zip(sends, plain, strict=True):
                if is_plain:
                    counts.append(len(messages))
                    bodies += messages
                else:
                    outgoing = [
                        OutgoingMessage(*m) if type(m) is list else OutgoingMessage(m)
                        for m in messages
                    ]
                    full.append(_StandardSend(queue, outgoing, now, ids.take(len(messages))))
            op = Operation(send_fn, None, key=("send", queue), alone=alone_fn)
            if counts:
                op.items.append(_PlainSends(queue, now, counts, bodies, ids.take(len(bodies))))
            op.items += full
            self.operations.append(op)
            self.plain.append(plain)

    def answer(self, outcomes: Mapping[int, Outcome]) -> bytes:
        """The frame's answer, given each operation's outcome by ``id``: per send, in the
        frame's order, its ids (stored) or its error."""
        answers: list[Any] = []
        for op, plain in zip(self.operations, self.plain, strict=True):
            ok, value = outcomes[id(op)]
            if not ok:  # the whole operation failed: each of its sends with it
                answers += [_refusal(value)] * len(plain)
                continue
            items = list(zip(op.items, value, strict=True))
            # The plain sends' item comes first (if any), then one item per other send.
            plain_answers = iter(_plain_answers(*items.pop(0)) if any(plain) else ())
            other_answers = iter(
                send.ids if stored else _refusal(error) for send, (stored, error) in items
            )
            answers += [next(plain_answers if p else other_answers) for p in plain]
        return _frame(orjson.dumps(answers))


def _plain_answers(sends: Any, outcome: Outcome) -> list[Any]:
    """Each of a `sqlite._PlainSends`' sends' answer: its slice of the ids, or its refusal."""
    _, refusals = outcome
    answers: list[Any] = []
    at = 0
    for count, refusal in zip(sends.counts, refusals, strict=True):
        answers.append(sends.ids[at : at + count] if refusal is None else _refusal(refusal))
        at += count
    return answers


def _refusal(error: BaseException) -> dict[str, str]:
    if isinstance(error, SluiceError):
        return error.to_dict()
    return {"error": "InternalError", "message": f"{type(error).__name__}: {error}"}


def serve(path: Path, pragmas: Mapping[str, str | int], stdin: int, stdout: int) -> None:
    """The child's loop: read frames, commit each read's frames as one group, answer each."""
    from sluice.broker.sqlite import (
        CHECKPOINT_DELAY,
        QueueCache,
        _Ids,
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
    ids = _Ids()
    os.write(stdout, _frame(b""))
    buffer = bytearray()
    try:
        while data := os.read(stdin, READ_SIZE):
            buffer += data
            frames = [_Frame(f, ids, send_fn, alone_fn) for f in _frames(buffer)]
            if not frames:
                continue
            ops = [op for frame in frames for op in frame.operations]
            outcomes = dict(zip(map(id, ops), commit_group(conn, ops), strict=True))
            checkpointer.committed()
            os.write(stdout, b"".join(frame.answer(outcomes) for frame in frames))
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
