"""The embedded broker: SQS-like queues in one SQLite database file.

Every write goes through a group-commit writer thread (`groupcommit.GroupCommitWriter`): many
concurrent sends, receives and deletes share one transaction and one fsync, and a call returns only
once its writes are committed (WAL, ``synchronous=FULL``). Queries that change nothing use a
separate read connection. Several processes may open the same file: transactions start with
``BEGIN IMMEDIATE`` and wait up to ``busy_timeout`` for each other, so a receive is atomic across
processes too. Long polls are woken at once by sends in this process and poll every
`POLL_INTERVAL` seconds for sends from other processes.

Choices where SQS leaves room: a message moved to a dead-letter queue (or redriven out of one)
starts with a receive count of 0 and keeps its original sent timestamp (so the DLQ's retention
counts from the first send). If a queue's DLQ does not exist, its messages are delivered as usual.
Expired messages are never delivered; they are deleted at most once a minute per queue, on receive.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from sluice.broker import sqlite_schema as sql
from sluice.broker.contract import (
    DEDUP_WINDOW,
    MAX_RECEIVE_BATCH,
    MAX_VISIBILITY_TIMEOUT,
    MAX_WAIT,
    Message,
    OutgoingMessage,
    QueueConfig,
    QueueStats,
    SendOutcome,
    SendResult,
    send_as_task,
)
from sluice.broker.groupcommit import Checkpointer, GroupCommitWriter, Reader
from sluice.broker.send_process import SendProcess
from sluice.broker.validation import (
    content_dedup_id,
    md5_of_body,
    validate_messages,
    validate_queue_config,
)
from sluice.errors import (
    QueueDoesNotExist,
    ReceiptHandleIsInvalid,
    SluiceError,
    Unavailable,
    ValidationError,
)

POLL_INTERVAL = 0.05
SWEEP_INTERVAL_MS = 60_000
CHECKPOINT_DELAY = 0.1  # seconds after a commit before the log is copied back into the database
BACKSTOP_CHECKPOINT_PAGES = 10_000  # the writer checkpoints itself only past this (~40 MB of log)
CONFIG_CACHE_SIZE = 256  # parsed queue configurations kept by the writer (cleared when full)
Row = tuple[Any, ...]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class _Ids:
    """Message ids shaped as version 4 UUIDs: 74 random bits drawn once per broker, then a
    48-bit counter. As unique as random UUIDs (a repeat needs two brokers to draw the same
    prefix) at a fraction of the cost on the event loop, where each send takes one; nothing
    looks a message up by its id, so that ids of one broker share a prefix gives nothing away."""

    def __init__(self) -> None:
        r = os.urandom(10).hex()
        variant = "89ab"[int(r[16], 16) & 3]
        self._prefix = f"{r[:8]}-{r[8:12]}-4{r[12:15]}-{variant}{r[17:20]}-"
        self._counter = itertools.count()  # next() on it is atomic: no lock for other threads

    def take(self, n: int) -> list[str]:
        prefix, counter = self._prefix, self._counter
        if n == 1:
            return [f"{prefix}{next(counter) & 0xFFFFFFFFFFFF:012x}"]
        return [f"{prefix}{next(counter) & 0xFFFFFFFFFFFF:012x}" for _ in range(n)]


def _send_results(ids: list[str], messages: Sequence[OutgoingMessage]) -> list[SendResult]:
    """A committed send's results, each checksum computed only if it is read."""
    return [SendResult(i, body=m.body) for i, m in zip(ids, messages, strict=True)]


def _md5s(messages: Sequence[OutgoingMessage]) -> list[str]:
    # A body that is not a string gets no checksum here; validation refuses it in the writer.
    return [md5_of_body(m.body) if isinstance(m.body, str) else "" for m in messages]


class _CachedQueue(NamedTuple):
    """A queue as the writer last read it: its row id and configuration (text and parsed).
    Statements that run without a lookup before them are guarded by both."""

    id: int
    text: str
    config: QueueConfig


class _StandardSend(NamedTuple):
    """One `send` call to a standard queue, prepared for the writer (a tuple: made per send on
    the event loop, where a frozen dataclass's __init__ costs several times more)."""

    queue: str
    messages: Sequence[OutgoingMessage]
    now: int
    ids: list[str]
    md5s: list[str] | None = None  # None: computed where it is written (the send process)

    def results(self) -> list[SendResult]:
        """Its results once committed (made by the writer thread's caller, which made the
        checksums too)."""
        assert self.md5s is not None, "only a send with its checksums has results here"
        return list(map(SendResult, self.ids, self.md5s))


class _PlainSends(NamedTuple):
    """The sends of one frame to one queue whose messages are bodies alone (no attributes, delay
    or ids: nearly every send through a gateway route), as the send process reads them: one item
    for all of them, no object per send or message. Its outcome, once prepared, is each send's
    refusal, or None when it is stored."""

    queue: str
    now: int
    counts: list[int]  # messages per send, in order
    bodies: list[Any]  # all their bodies, flat (strings, unless a sender gave something else)
    ids: list[str]  # their message ids, flat


def _insert_standard(conn: sqlite3.Connection, queue: _CachedQueue, values: list[Any]) -> int:
    """Insert the rows of ``values`` (`sql.STANDARD_COLUMNS` each) if ``queue`` is unchanged;
    the number of rows inserted: all of them, or none when the queue changed."""
    width, most = sql.STANDARD_COLUMNS, sql.MAX_ROWS_PER_INSERT
    inserted = 0
    for at in range(0, len(values), most * width):
        chunk = values[at : at + most * width]
        rows = len(chunk) // width
        size = 1 << (rows - 1).bit_length()  # the next power of two, padded with NULL rows
        chunk += _PADDING[: (size - rows) * width]
        cursor = conn.execute(sql.insert_standard(size), [*chunk, queue.id, queue.text])
        inserted += cursor.rowcount
    return inserted


_PADDING = [None] * (sql.STANDARD_COLUMNS * sql.MAX_ROWS_PER_INSERT)


def _prepare_standard(
    queue: _CachedQueue, sends: Sequence[_StandardSend | _PlainSends]
) -> tuple[list[Any], list[tuple[bool, Any]]]:
    """The rows to insert for the valid sends (flat, `sql.STANDARD_COLUMNS` per row) and every
    item's outcome: a `_StandardSend`'s ``(True, None)`` (its `_StandardSend.results` once
    committed) or the error that refused it; `_PlainSends`' ``(True, refusals)``, one refusal or
    None per send. Nothing is written here."""
    config = queue.config
    default_delay = _ms(config.delay)
    values: list[Any] = []
    outcomes: list[tuple[bool, Any]] = []
    for send in sends:
        if type(send) is _PlainSends:
            outcomes.append((True, _prepare_plain(send, config, default_delay, values)))
            continue
        assert type(send) is _StandardSend
        mine: list[Any] = []
        try:
            validate_messages(config, send.messages)
            now, md5s = send.now, send.md5s
            for i, (m, message_id) in enumerate(zip(send.messages, send.ids, strict=True)):
                mine += (
                    now + (default_delay if m.delay is None else _ms(m.delay)),
                    now,
                    message_id,
                    md5_of_body(m.body) if md5s is None else md5s[i],
                    m.body,
                    orjson.dumps(dict(m.attributes)).decode() if m.attributes else None,
                )
        except Exception as error:  # refused, or an attribute JSON cannot represent
            outcomes.append((False, error))
            continue
        values += mine
        outcomes.append(_STORED)
    return values, outcomes


_STORED = (True, None)


def _prepare_plain(
    sends: _PlainSends, config: QueueConfig, default_delay: int, values: list[Any]
) -> list[Exception | None]:
    """Add the rows of the valid sends among ``sends`` to ``values``; each send's refusal, or
    None. All of them are checked in one pass first: a refused one is rare."""
    limit, now = config.max_message_size, sends.now
    visible = now + default_delay
    if all(sends.counts) and _plain_fits(sends.bodies, limit):
        _plain_rows(values, sends.bodies, sends.ids, visible, now)
        return [None] * len(sends.counts)
    refusals: list[Exception | None] = []
    at = 0
    for count in sends.counts:
        bodies, ids = sends.bodies[at : at + count], sends.ids[at : at + count]
        at += count
        try:  # the full checks name what is wrong with a send that does not fit
            validate_messages(config, [OutgoingMessage(body) for body in bodies])
        except Exception as error:
            refusals.append(error)
            continue
        _plain_rows(values, bodies, ids, visible, now)
        refusals.append(None)
    return refusals


def _plain_rows(
    values: list[Any], bodies: list[str], ids: list[str], visible: int, now: int
) -> None:
    for body, message_id in zip(bodies, ids, strict=True):
        values += (visible, now, message_id, md5_of_body(body), body, None)


def _plain_fits(bodies: list[Any], limit: int) -> bool:
    """Whether bodies alone are valid messages (`validate_messages`' checks for them): each a
    string of at most ``limit`` bytes."""
    return all(
        type(body) is str and (len(body) if body.isascii() else len(body.encode())) <= limit
        for body in bodies
    )


_RECEIPT = re.compile(r"([0-9]{1,18})\.([0-9a-f]{1,16})")


def _parse_receipt(handle: str) -> tuple[int, int]:
    match = _RECEIPT.fullmatch(handle) if isinstance(handle, str) else None
    if match is None:
        raise ReceiptHandleIsInvalid(f"receipt handle {handle!r} is not one this broker issued")
    return int(match[1]), int(match[2], 16)


def _to_message(row: Row, token: str) -> Message:
    fifo = row[8] is not None
    return Message(
        message_id=row[1],
        receipt_handle=f"{row[0]}.{token}",
        body=row[2],
        attributes=orjson.loads(row[3]) if row[3] else {},
        receive_count=row[4],
        sent_timestamp=row[5],
        first_receive_timestamp=row[6],
        md5_of_body=row[7],
        group_id=row[8],
        deduplication_id=row[9],
        sequence_number=f"{row[0]:020d}" if fifo else None,
        dead_letter_reason=row[10],
    )


class _Receive(NamedTuple):
    """One receive call, as the writer runs it (in a transaction or alone)."""

    queue: str
    limit: int
    visibility_timeout: float | None  # None: the queue's
    token: int  # marks the messages this receive takes
    now: int

    def params(self, qid: int, config: QueueConfig) -> dict[str, Any]:
        """The named parameters of the receive statements for this queue."""
        timeout = (
            config.visibility_timeout
            if self.visibility_timeout is None
            else self.visibility_timeout
        )
        return {
            "qid": qid,
            "now": self.now,
            "until": self.now + _ms(timeout),
            "token": self.token,
            "cutoff": self.now - _ms(config.retention),
            "limit": self.limit,
        }


def _delivered(conn: sqlite3.Connection, params: Mapping[str, Any]) -> list[Row]:
    """The messages a receive marked (by queue, visibility deadline and token), read in one step."""
    rows: list[Row] = orjson.loads(conn.execute(sql.DELIVERED, params).fetchone()[0])
    return rows


def _find_queue(conn: sqlite3.Connection, name: str) -> tuple[int, QueueConfig]:
    row = conn.execute("SELECT id, config FROM queues WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise QueueDoesNotExist(f"queue {name!r} does not exist")
    return row[0], _parse_config(row[1])


@lru_cache(maxsize=CONFIG_CACHE_SIZE)
def _parse_config(text: str) -> QueueConfig:
    """A stored queue configuration, parsed once per distinct text (every receive reads it)."""
    return QueueConfig.from_dict(orjson.loads(text))


def open_writer(path: Path, pragmas: Mapping[str, str | int]) -> sqlite3.Connection:
    """A write connection, the schema created if need be."""
    conn = sql.connect(path, pragmas)
    try:
        # Checkpoints run on a checkpointer's thread; this is only the backstop.
        conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_CHECKPOINT_PAGES}")
        sql.create_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


class QueueCache:
    """Queues as one writer last read them, by name; only that writer's thread touches it. The
    statements that run without a lookup before them (`send_standard_alone`, a receive's alone
    path) are guarded by the cached id and configuration text."""

    def __init__(self) -> None:
        self._queues: dict[str, _CachedQueue] = {}

    def get(self, name: str) -> _CachedQueue | None:
        return self._queues.get(name)

    def lookup(self, conn: sqlite3.Connection, name: str) -> _CachedQueue:
        """The queue as it is now, parsing its configuration only when its text changed."""
        row = conn.execute("SELECT id, config FROM queues WHERE name = ?", (name,)).fetchone()
        if row is None:
            self._queues.pop(name, None)
            raise QueueDoesNotExist(f"queue {name!r} does not exist")
        cached = self._queues.get(name)
        if cached is None or cached.id != row[0] or cached.text != row[1]:
            if len(self._queues) >= CONFIG_CACHE_SIZE:
                self._queues.clear()
            cached = self._queues[name] = _CachedQueue(row[0], row[1], _parse_config(row[1]))
        return cached


def send_standard(
    cache: QueueCache, conn: sqlite3.Connection, sends: list[_StandardSend | _PlainSends]
) -> list[tuple[bool, Any]]:
    """Pending sends to one standard queue, in the writer's transaction: one lookup, each send
    checked, few inserts."""
    queue = cache.lookup(conn, sends[0].queue)
    values, outcomes = _prepare_standard(queue, sends)
    if _insert_standard(conn, queue, values) * sql.STANDARD_COLUMNS != len(values):
        raise RuntimeError(f"queue {queue.config.name!r} changed within a transaction")
    return outcomes


def send_standard_alone(
    cache: QueueCache, conn: sqlite3.Connection, sends: list[_StandardSend | _PlainSends]
) -> list[tuple[bool, Any]] | None:
    """The same sends as one statement outside any transaction (it commits, and fsyncs, by
    itself), checked against the queue as it last was: a single trip into SQLite for the whole
    group. None when that cannot be done; then `send_standard` runs them."""
    queue = cache.get(sends[0].queue)
    if queue is None:
        return None
    values, outcomes = _prepare_standard(queue, sends)
    if not values or len(values) > sql.STANDARD_COLUMNS * sql.MAX_ROWS_PER_INSERT:
        return None
    if _insert_standard(conn, queue, values) == 0:
        return None  # the queue changed or is gone: nothing was stored
    return outcomes


def _queue_id(conn: sqlite3.Connection, name: str) -> int | None:
    row = conn.execute("SELECT id FROM queues WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def _move(
    conn: sqlite3.Connection, ids: Sequence[int], to: int, now: int, reason: str | None
) -> None:
    conn.execute(sql.MOVE_TO, {"to": to, "now": now, "reason": reason, "ids": orjson.dumps(ids)})


class SQLiteBroker:
    """`Broker` on one SQLite file. Call `start()` before use and `close()` after."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        pragmas: Mapping[str, str | int] | None = None,
        send_process: bool = False,
    ) -> None:
        """``pragmas`` are applied to every connection after the broker's own (e.g.
        ``{"max_page_count": n}`` caps the file's size: sends beyond it raise `Unavailable`).
        With ``send_process``, sends to standard queues are committed by a child process
        (`send_process.SendProcess`) instead of this process's writer thread: for a process
        whose event loop is busy with other work, such as a gateway."""
        self.path = Path(path)
        self._clock = clock
        extra = dict(pragmas or {})
        self._checkpointer = Checkpointer(lambda: sql.connect(self.path, extra), CHECKPOINT_DELAY)
        self._writer = GroupCommitWriter(
            lambda: open_writer(self.path, extra), on_commit=self._checkpointer.committed
        )
        self._reader = Reader(lambda: sql.connect(self.path, extra))
        self._wakeups: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}  # receives waiting per queue
        self._watchers: dict[str, asyncio.Task[None]] = {}  # one poll per queue with waiters
        self._next_sweep: dict[int, int] = {}  # queue id -> ms; touched by the writer thread only
        self._queues = QueueCache()  # the writer thread's
        self._send_standard = partial(send_standard, self._queues)
        self._send_standard_alone = partial(send_standard_alone, self._queues)
        self._send_process = SendProcess(self.path, extra, self._now) if send_process else None
        self._sending: set[asyncio.Task[Any]] = set()  # `send_soon`'s tasks, kept till done
        self._ids = _Ids()

    def _now(self) -> int:
        return _ms(self._clock())

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._writer.start)
        await asyncio.to_thread(self._reader.start)
        await asyncio.to_thread(self._checkpointer.start)
        if self._send_process is not None:
            await self._send_process.start()

    async def close(self) -> None:
        watchers = list(self._watchers.values())
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        if self._send_process is not None:
            await self._send_process.close()
        await asyncio.to_thread(self._writer.stop)
        await asyncio.to_thread(self._reader.stop)
        await asyncio.to_thread(self._checkpointer.stop)

    async def __aenter__(self) -> SQLiteBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- queues ----------------------------------------------------------------------------------

    async def create_queue(self, config: QueueConfig) -> None:
        validate_queue_config(config)
        text = orjson.dumps(config.to_dict()).decode()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO queues (name, config) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET config = excluded.config",
                (config.name, text),
            )

        await self._writer.submit(op)

    async def delete_queue(self, name: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            qid, _ = _find_queue(conn, name)
            conn.execute("DELETE FROM messages WHERE qid = ?", (qid,))
            conn.execute("DELETE FROM dedup WHERE qid = ?", (qid,))
            conn.execute("DELETE FROM queues WHERE id = ?", (qid,))

        await self._writer.submit(op)

    async def get_queue(self, name: str) -> QueueConfig:
        return (await self._reader.run(lambda conn: _find_queue(conn, name)))[1]

    async def list_queues(self) -> list[str]:
        rows = await self._reader.run(
            lambda conn: conn.execute("SELECT name FROM queues ORDER BY name").fetchall()
        )
        return [r[0] for r in rows]

    # -- messages --------------------------------------------------------------------------------

    async def send(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        if queue.endswith(".fifo"):
            now = self._now()

            def op(conn: sqlite3.Connection) -> list[SendResult]:
                qid, config = _find_queue(conn, queue)
                validate_messages(config, messages)
                return self._send_fifo(conn, qid, config, messages, now)

            results = await self._writer.submit(op)
        elif self._send_process is not None:
            # The child makes the ids and the checksums it stores, off this event loop.
            ids = await self._send_process.send(queue, messages)
            results = _send_results(ids, messages)
        else:
            # Ids and checksums are made here, on the caller's thread, so the writer (which
            # every commit waits for) does only the lookup and the insert.
            ids = self._ids.take(len(messages))
            send = _StandardSend(queue, messages, self._now(), ids, _md5s(messages))
            await self._writer.submit_batched(
                ("send", queue), self._send_standard, send, alone=self._send_standard_alone
            )
            results = send.results()
        self._wake(queue)
        return results

    def send_soon(
        self, queue: str, messages: Sequence[OutgoingMessage], done: Callable[[SendOutcome], None]
    ) -> None:
        """`send` without a coroutine per call when a send process commits this queue's sends;
        otherwise `send` runs as a task (see `contract.SendsSoon`)."""
        process = self._send_process
        if process is None or not process.running or queue.endswith(".fifo"):
            send_as_task(self._sending, self.send(queue, messages), done)
            return
        try:
            process.submit(queue, messages, partial(self._committed, queue, messages, done))
        except SluiceError as error:
            done(error)

    def _committed(
        self,
        queue: str,
        messages: Sequence[OutgoingMessage],
        done: Callable[[SendOutcome], None],
        outcome: list[str] | SluiceError,
    ) -> None:
        if isinstance(outcome, SluiceError):
            done(outcome)
        else:
            self._wake(queue)
            done(_send_results(outcome, messages))

    def _send_fifo(
        self,
        conn: sqlite3.Connection,
        qid: int,
        config: QueueConfig,
        messages: Sequence[OutgoingMessage],
        now: int,
    ) -> list[SendResult]:
        visible = now + _ms(config.delay)
        results = []
        for m in messages:
            dedup_id = m.deduplication_id or content_dedup_id(m.body)
            md5 = md5_of_body(m.body)
            seen = conn.execute(
                "SELECT message_id, seq FROM dedup"
                " WHERE qid = ? AND dedup_id = ? AND expires_at > ?",
                (qid, dedup_id, now),
            ).fetchone()
            if seen is not None:
                results.append(SendResult(seen[0], md5, f"{seen[1]:020d}", duplicate=True))
                continue
            message_id = self._ids.take(1)[0]
            attrs = orjson.dumps(dict(m.attributes)).decode() if m.attributes else None
            row = (qid, visible, now, message_id, md5, m.body, attrs, m.group_id, dedup_id)
            seq = conn.execute(sql.INSERT_MESSAGE, row).lastrowid
            conn.execute(
                "INSERT OR REPLACE INTO dedup VALUES (?, ?, ?, ?, ?)",
                (qid, dedup_id, message_id, seq, now + _ms(DEDUP_WINDOW)),
            )
            results.append(SendResult(message_id, md5, f"{seq:020d}"))
        return results

    async def receive(
        self,
        queue: str,
        max_messages: int = 1,
        *,
        wait: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[Message]:
        if not 1 <= max_messages <= MAX_RECEIVE_BATCH:
            raise ValidationError(f"max_messages must be between 1 and {MAX_RECEIVE_BATCH}")
        if not 0 <= wait <= MAX_WAIT:
            raise ValidationError(f"wait must be between 0 and {MAX_WAIT:g} seconds")
        if visibility_timeout is not None and not 0 <= visibility_timeout <= MAX_VISIBILITY_TIMEOUT:
            raise ValidationError(
                f"visibility_timeout must be between 0 and {MAX_VISIBILITY_TIMEOUT:g} seconds"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            r = _Receive(
                queue, max_messages, visibility_timeout, secrets.randbits(62) | 1, self._now()
            )
            rows = await self._writer.submit(
                partial(self._receive, r), durable=False, alone=partial(self._receive_alone, r)
            )
            if rows or not await self._wait_for_messages(queue, deadline):
                hex_token = f"{r.token:x}"
                return [_to_message(row, hex_token) for row in rows]

    async def _wait_for_messages(self, queue: str, deadline: float) -> bool:
        """Wait until a message may be visible (True) or the deadline passed (False): a send in
        this process wakes the waiters at once; for sends from other processes one watcher per
        queue polls, however many receives wait on it."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        event = self._wakeups.get(queue)
        if event is None:
            event = self._wakeups[queue] = asyncio.Event()
        self._waiting[queue] = self._waiting.get(queue, 0) + 1
        if queue not in self._watchers:
            self._watchers[queue] = asyncio.create_task(self._watch(queue))
        try:
            await asyncio.wait_for(event.wait(), remaining)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting[queue] -= 1

    async def _watch(self, queue: str) -> None:
        """Poll for a visible message every POLL_INTERVAL while receives wait on ``queue``."""
        try:
            while self._waiting.get(queue):
                await asyncio.sleep(POLL_INTERVAL)
                check = partial(self._any_visible, queue=queue, now=self._now())
                try:
                    if self._waiting.get(queue) and await self._reader.run(check):
                        self._wake(queue)
                except Unavailable:
                    pass  # the waiters' own receives will report it; keep polling
        finally:
            del self._watchers[queue]

    @staticmethod
    def _any_visible(conn: sqlite3.Connection, queue: str, now: int) -> bool:
        qid = _queue_id(conn, queue)
        if qid is None:
            return True  # let the receive itself report the missing queue
        query = "SELECT 1 FROM messages WHERE qid = ? AND visible_at <= ? LIMIT 1"
        return conn.execute(query, (qid, now)).fetchone() is not None

    def _wake(self, queue: str) -> None:
        event = self._wakeups.pop(queue, None)
        if event is not None:
            event.set()

    def _receive_alone(self, r: _Receive, conn: sqlite3.Connection) -> list[Row] | None:
        """A receive as two statements outside any transaction (mark, then read back what was
        marked), checked against the queue as it last was; None (nothing written) when that cannot
        be done: a queue not seen yet, changed or empty, FIFO, with a DLQ, or due for a sweep.
        Then `_receive` runs it."""
        cached = self._queues.get(r.queue)
        if cached is None:
            return None
        config = cached.config
        if config.fifo or config.dead_letter or r.now >= self._next_sweep.get(cached.id, 0):
            return None
        params = r.params(cached.id, config)
        params["config"] = cached.text
        if not conn.execute(sql.MARK_STANDARD_GUARDED, params).rowcount:
            return None
        return _delivered(conn, params)

    def _receive(self, r: _Receive, conn: sqlite3.Connection) -> list[Row]:
        qid, _, config = self._queues.lookup(conn, r.queue)
        params = r.params(qid, config)
        now, cutoff = r.now, params["cutoff"]
        self._sweep(conn, qid, now, cutoff)
        dlq = _queue_id(conn, config.dead_letter) if config.dead_letter else None
        delivered = 0
        while delivered < r.limit:
            wanted = r.limit - delivered
            if config.fifo:
                ids = self._fifo_candidates(conn, qid, now, cutoff, wanted)
                marked = conn.execute(sql.MARK_IDS, {**params, "ids": orjson.dumps(ids)}).rowcount
            else:
                marked = conn.execute(sql.MARK_STANDARD, {**params, "limit": wanted}).rowcount
            # The receive that would exceed max_receive_count moves the message instead.
            moved = 0
            if dlq is not None and marked:
                reason = f"maxReceiveCount {config.max_receive_count} reached"
                moved = conn.execute(
                    sql.MOVE_OVERDRAWN,
                    {**params, "to": dlq, "reason": reason, "max": config.max_receive_count},
                ).rowcount
            delivered += marked - moved
            if not moved:
                break
        if not delivered:
            return []
        rows = _delivered(conn, params)
        if config.fifo:
            rows.sort(key=lambda row: row[0])
        return rows

    @staticmethod
    def _fifo_candidates(
        conn: sqlite3.Connection, qid: int, now: int, cutoff: int, limit: int
    ) -> list[int]:
        """Ids to deliver: per group not held by a receiver, its leading visible messages."""
        seen = {g for (g,) in conn.execute(sql.HELD_GROUPS, (qid, now))}
        ids: list[int] = []
        groups = conn.execute(sql.VISIBLE_GROUPS, (qid, now, cutoff))
        try:
            for (group,) in groups:
                if group in seen:
                    continue
                seen.add(group)
                for row_id, visible_at, sent_at in conn.execute(
                    sql.GROUP_HEAD, (qid, group, limit - len(ids))
                ).fetchall():
                    if visible_at > now:
                        break  # a delayed message keeps the ones after it waiting
                    if sent_at >= cutoff:
                        ids.append(row_id)
                if len(ids) >= limit:
                    break
        finally:
            groups.close()
        return ids

    def _sweep(self, conn: sqlite3.Connection, qid: int, now: int, cutoff: int) -> None:
        """Delete expired messages and dedup entries, at most once a minute per queue."""
        if now < self._next_sweep.get(qid, 0):
            return
        self._next_sweep[qid] = now + SWEEP_INTERVAL_MS
        conn.execute("DELETE FROM messages WHERE qid = ? AND sent_at < ?", (qid, cutoff))
        conn.execute("DELETE FROM dedup WHERE qid = ? AND expires_at <= ?", (qid, now))

    async def delete(self, queue: str, receipt_handles: Sequence[str]) -> list[bool]:
        parsed = [_parse_receipt(h) for h in receipt_handles]
        if not parsed:
            return []

        parsed_set = set(parsed)
        by_token: dict[int, list[int]] = {}
        for row_id, token in parsed_set:
            by_token.setdefault(token, []).append(row_id)
        groups = [(token, orjson.dumps(ids)) for token, ids in by_token.items()]

        def op(conn: sqlite3.Connection) -> set[tuple[int, int]]:
            """The receipts that deleted their message."""
            qid = self._queues.lookup(conn, queue).id
            conn.execute("SAVEPOINT receipts")
            try:
                gone = sum(
                    conn.execute(sql.DELETE_BY_RECEIPT, (qid, token, ids)).rowcount
                    for token, ids in groups
                )
                if gone == len(parsed_set):
                    return parsed_set
                conn.execute("ROLLBACK TO receipts")
                returning = sql.DELETE_BY_RECEIPT_RETURNING
                return {
                    (row_id, token)
                    for token, ids in groups
                    for (row_id,) in conn.execute(returning, (qid, token, ids))
                }
            finally:
                conn.execute("RELEASE receipts")

        def alone(conn: sqlite3.Connection) -> set[tuple[int, int]] | None:
            """The usual delete (receipts of one receive, all current) as one statement outside
            any transaction; None (nothing deleted) otherwise."""
            cached = self._queues.get(queue)
            if cached is None or len(groups) != 1:
                return None
            token, ids = groups[0]
            deleted = conn.execute(
                sql.DELETE_ALL_BY_RECEIPT, (cached.id, token, ids, len(parsed_set))
            )
            return parsed_set if deleted.rowcount == len(parsed_set) else None

        deleted = await self._writer.submit(op, durable=False, alone=alone)
        return [handle in deleted for handle in parsed]

    async def change_visibility(self, queue: str, receipt_handle: str, timeout: float) -> bool:
        row_id, token = _parse_receipt(receipt_handle)
        if not 0 <= timeout <= MAX_VISIBILITY_TIMEOUT:
            raise ValidationError(
                f"visibility timeout must be between 0 and {MAX_VISIBILITY_TIMEOUT:g} seconds"
            )
        until = self._now() + _ms(timeout)

        def op(conn: sqlite3.Connection) -> bool:
            qid, _ = _find_queue(conn, queue)
            cursor = conn.execute(
                "UPDATE messages SET visible_at = ? WHERE id = ? AND token = ? AND qid = ?",
                (until, row_id, token, qid),
            )
            return cursor.rowcount == 1

        changed = await self._writer.submit(op, durable=False)
        if changed and timeout == 0:
            self._wake(queue)
        return changed

    async def dead_letter(self, queue: str, receipt_handle: str, reason: str) -> bool:
        row_id, token = _parse_receipt(receipt_handle)
        now = self._now()

        def op(conn: sqlite3.Connection) -> bool:
            qid, config = _find_queue(conn, queue)
            held = conn.execute(
                "SELECT 1 FROM messages WHERE id = ? AND token = ? AND qid = ?",
                (row_id, token, qid),
            ).fetchone()
            if held is None:
                return False
            dlq = _queue_id(conn, config.dead_letter) if config.dead_letter else None
            if dlq is None:
                conn.execute("DELETE FROM messages WHERE id = ?", (row_id,))
            else:
                _move(conn, [row_id], dlq, now, reason)
            return True

        return await self._writer.submit(op)

    async def purge(self, queue: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            qid, _ = _find_queue(conn, queue)
            return conn.execute("DELETE FROM messages WHERE qid = ?", (qid,)).rowcount

        return await self._writer.submit(op)

    async def stats(self, queue: str) -> QueueStats:
        now = self._now()

        def query(conn: sqlite3.Connection) -> QueueStats:
            qid, config = _find_queue(conn, queue)
            visible, in_flight, delayed, oldest = conn.execute(
                "SELECT TOTAL(visible_at <= :now), TOTAL(visible_at > :now AND receive_count > 0),"
                " TOTAL(visible_at > :now AND receive_count = 0), MIN(sent_at)"
                " FROM messages WHERE qid = :qid AND sent_at >= :cutoff",
                {"qid": qid, "now": now, "cutoff": now - _ms(config.retention)},
            ).fetchone()
            age = max(0.0, (now - oldest) / 1000) if oldest is not None else 0.0
            return QueueStats(queue, int(visible), int(in_flight), int(delayed), age)

        return await self._reader.run(query)

    async def redrive(
        self, dead_letter_queue: str, to: str | None = None, limit: int | None = None
    ) -> int:
        if limit is not None and limit < 1:
            raise ValidationError("redrive limit must be positive")
        now = self._now()

        def op(conn: sqlite3.Connection) -> tuple[int, str]:
            dlq, dlq_config = _find_queue(conn, dead_letter_queue)
            target_name = to or self._redrive_source(conn, dead_letter_queue)
            target, target_config = _find_queue(conn, target_name)
            if target == dlq:
                raise ValidationError("cannot redrive a queue into itself")
            if target_config.fifo != dlq_config.fifo:
                raise ValidationError("redrive needs queues of the same type (FIFO or not)")
            moved = conn.execute(
                "UPDATE messages SET qid = ?, visible_at = ?, token = 0, receive_count = 0,"
                " first_receive = 0, dl_reason = NULL WHERE id IN"
                " (SELECT id FROM messages WHERE qid = ? ORDER BY id LIMIT ?)",
                (target, now, dlq, -1 if limit is None else limit),
            ).rowcount
            return moved, target_name

        moved, target_name = await self._writer.submit(op)
        if moved:
            self._wake(target_name)
        return moved

    @staticmethod
    def _redrive_source(conn: sqlite3.Connection, dead_letter_queue: str) -> str:
        sources = [
            name
            for name, text in conn.execute("SELECT name, config FROM queues")
            if orjson.loads(text).get("dead_letter") == dead_letter_queue
        ]
        if len(sources) != 1:
            raise ValidationError(
                f"{len(sources)} queues use {dead_letter_queue!r} as their DLQ: name the target"
            )
        return sources[0]
