"""The Redis broker backend: SQS-like queues for many hosts, on one Redis server or a Redis Cluster.

Design
------
Each queue is a Redis Stream with one consumer group. A message is an entry (its id, send time,
body, attributes, and for FIFO its group, deduplication id and sequence number); delayed messages
wait in a sorted set by due time and are appended to the stream when due. A delivered message sits
in the group's pending-entries list (PEL), whose delivery counter *is* the receive count.

Visibility is a per-message deadline in a sorted set (entry id scored by the deadline), chosen over
``XAUTOCLAIM`` min-idle because min-idle is a single idle time measured by the server's clock: the
deadline gives every receive its own visibility timeout, makes ``change_visibility`` exact, and
follows the broker's injected clock like every other time here (delays, retention, deduplication).
Receiving takes expired deadlines first (re-claimed with ``XCLAIM``, which bumps the counter), then
never-delivered entries with ``XREADGROUP``. FIFO queues keep a list of entry ids per message group
and a sorted set of groups that are ready (messages waiting, none in flight); a receive takes whole
runs from ready groups, which stay locked until each of those messages is deleted or visible again
(then it goes back to the front of its group). A receipt handle is ``<gen>.<entry id>.<receive
count>``: the next receive bumps the count, so an older receipt no longer matches, and ``gen``
changes on purge. Deleting acknowledges the entry and removes it (``XACK`` + ``XDEL``): only
acknowledged entries are removed from the stream, apart from retention, which drops messages older
than the queue's retention from the head of the stream. Deduplication ids are kept for five minutes
of the broker's clock and map to the original message id and sequence number.

Every operation is one Lua script (`sluice.broker.redis_scripts`, loaded once and run by
``EVALSHA``) over the keys of one queue, which share the hash tag ``{<namespace>:<queue>}``: on a
Redis Cluster each script runs on one slot, and queues spread over slots. A batch is one script
call: sending 1,000 messages, receiving 100 or deleting 100 is one round trip. Moving a message to
another queue (dead-lettering, redrive) crosses slots, so it takes two steps: the source's script
parks it in the source's outbox atomically, then the client stores it in the target under a
transfer key that makes a repeated transfer a no-op for an hour, and clears the outbox. A client
that dies in between leaves the message in the outbox; the next receive or dead-letter on that
queue finishes the move. Queue names are listed in one set per namespace (``{<namespace>}:queues``).

URLs: ``redis://host:port/db`` for one server, ``redis+cluster://host:port`` for a cluster.

Availability
------------
A command that cannot reach Redis is retried twice (after 0.05 s and 0.2 s); then the method raises
`sluice.errors.Unavailable`. Each attempt (connecting, then the command) is bounded by ``timeout``
(default 5 s), so `Unavailable` comes within about 0.25 s when connections are refused, and within
about 3 x 2 x ``timeout`` + 0.25 s at worst when the server hangs.
A ``send`` that *returned* is stored. A ``send`` that raised `Unavailable` was stored either
entirely or not at all (never a part of the batch), and the caller cannot tell which: the reply may
have been lost after Redis ran the script. Retries inside one ``send`` reuse a batch token, so they
never store the batch twice; a caller that sends again after `Unavailable` may create a duplicate
(with a new message id), which at-least-once consumers must tolerate anyway. A ``delete`` retried
after a lost reply reports ``False`` for messages the first attempt deleted.

Durability (what "stored" means depends on the server's persistence settings)
-----------------------------------------------------------------------------
* ``appendonly yes`` + ``appendfsync always``: Redis writes and fsyncs the append-only file before
  it sends the reply, so a send that returned survives a crash of Redis or of the machine. Redis
  does this once per event-loop iteration for every command that iteration ran, so concurrent
  sends share one fsync (group commit by the server).
* ``appendonly yes`` + ``appendfsync everysec`` (Redis's default AOF policy): the write reaches the
  operating system before the reply, and is fsynced about once a second. It survives a crash of
  the Redis process; a power loss or kernel crash can lose roughly the last second or two of
  acknowledged sends.
* ``appendonly no`` (RDB snapshots only, or no persistence): everything written since the last
  successful snapshot is lost when Redis stops for any reason; with no snapshots, everything.
* Replication is asynchronous: a failover to a replica can lose acknowledged writes the replica had
  not received, whatever the AOF settings.
Scripts are replicated and appended to the AOF as one ``MULTI``/``EXEC`` block, so a crash never
leaves a half-applied operation: Redis discards an unfinished transaction at the end of the AOF.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis import exceptions as redis_errors

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
from sluice.broker.redis_client import RedisClient, call, connect, describe, initialize
from sluice.broker.redis_scripts import SCRIPTS
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

log = logging.getLogger(__name__)

# <gen>.<entry id>.<receive count>; at most 19 digits per number keeps ids inside Redis's range.
_RECEIPT = re.compile(r"([0-9a-f]{1,32})\.([0-9]{1,19}-[0-9]{1,19})\.([0-9]{1,9})")
_TRANSFER_CHUNK = 500
# A script call storing gathered sends carries at most this many messages, or bytes of bodies
# (a single larger send is one call of its own).
_GATHER_MESSAGES, _GATHER_BYTES = 1000, 4 << 20
_POLL_FIRST, _POLL_MAX = 0.02, 0.2


class _StaleConfig(Exception):
    """The queue's configuration changed since this process cached it."""


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class RedisBroker:
    """Durable queues in Redis (see the module docstring for the design and its guarantees)."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "sluice",
        clock: Callable[[], float] = time.time,
        timeout: float = 5.0,
    ) -> None:
        self._url = url
        self._where = describe(url)
        self._namespace = namespace
        self._clock = clock
        self._timeout = timeout
        self._client: RedisClient | None = None
        self._scripts: dict[str, Any] = {}
        self._configs: dict[str, tuple[QueueConfig, str]] = {}
        # DLQ name -> (whether it existed, monotonic time of the check)
        self._dlq_checked: dict[str, tuple[bool, float]] = {}
        # `send_soon`: this event-loop iteration's sends by queue (with the configuration they
        # were checked against), and the tasks storing earlier ones.
        self._gathering: dict[str, _Gathered] = {}
        self._sending: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        client = connect(self._url, timeout=self._timeout)
        try:
            await initialize(client, where=self._where)
            await call(client.ping, where=self._where)
        except BaseException:
            await client.aclose()
            raise
        self._scripts = {name: client.register_script(source) for name, source in SCRIPTS.items()}
        self._client = client

    async def close(self) -> None:
        self._store_gathered()
        while self._sending:  # sends already taken are stored (or fail) before the client goes
            await asyncio.gather(*self._sending, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- queues --------------------------------------------------------------------------------

    async def create_queue(self, config: QueueConfig) -> None:
        validate_queue_config(config)
        fields = {
            "vt": _ms(config.visibility_timeout),
            "ret": _ms(config.retention),
            "mrc": config.max_receive_count or "",
            "dlq": config.dead_letter or "",
            "fifo": "1" if config.fifo else "0",
            "json": orjson.dumps(config.to_dict()).decode(),
        }
        ver = uuid.uuid4().hex
        pairs = [item for pair in fields.items() for item in pair]
        await self._script("create", config.name, [ver, uuid.uuid4().hex[:12], *pairs])
        await self._redis(lambda c: c.sadd(self._registry, config.name))
        self._configs[config.name] = (config, ver)
        self._dlq_checked[config.name] = (True, time.monotonic())

    async def delete_queue(self, name: str) -> None:
        self._configs.pop(name, None)
        self._dlq_checked.pop(name, None)
        existed = await self._script("delete_queue", name, [])
        await self._redis(lambda c: c.srem(self._registry, name))
        if not existed:
            raise QueueDoesNotExist(f"queue {name!r} does not exist")

    async def get_queue(self, name: str) -> QueueConfig:
        config, _ = await self._load_config(name)
        return config

    async def list_queues(self) -> list[str]:
        names = await self._redis(lambda c: c.smembers(self._registry))
        return sorted(names)

    # -- messages ------------------------------------------------------------------------------

    async def send(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        for _ in range(3):
            config, ver = await self._config(queue)
            validate_messages(config, messages)
            try:
                return await self._send_once(queue, config, ver, messages)
            except _StaleConfig:
                self._configs.pop(queue, None)
        raise SluiceError(f"queue {queue!r}: its configuration kept changing during the send")

    def send_soon(
        self, queue: str, messages: Sequence[OutgoingMessage], done: Callable[[SendOutcome], None]
    ) -> None:
        """`send`, its outcome passed to ``done`` (see `contract.SendsSoon`). The sends to a
        standard queue made in one event-loop iteration are stored by one script call: one round
        trip, and one append (one fsync with ``appendfsync always``) for all of them. Each send
        is checked alone first, so an invalid one is refused without the others; the gathered
        sends then share their fate, each whole: all stored, or (`Unavailable`) none or all of
        them, unknown which. A send to a FIFO queue, or to a queue whose configuration this
        process has not read yet, runs `send` as a task."""
        cached = self._configs.get(queue)
        if cached is None or cached[0].fifo or self._client is None:
            send_as_task(self._sending, self.send(queue, messages), done)
            return
        try:
            validate_messages(cached[0], messages)
        except SluiceError as error:
            done(error)
            return
        gathered = self._gathering.get(queue)
        if gathered is None:
            if not self._gathering:
                asyncio.get_running_loop().call_soon(self._store_gathered)
            gathered = self._gathering[queue] = _Gathered(cached)
        gathered.sends.append((messages, done))

    def _store_gathered(self) -> None:
        gathering, self._gathering = self._gathering, {}
        for queue, gathered in gathering.items():
            for chunk in gathered.chunks():
                store = self._store_chunk(queue, gathered.config, chunk)
                task = asyncio.get_running_loop().create_task(store)
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _store_chunk(
        self, queue: str, config: tuple[QueueConfig, str], sends: list[_Send]
    ) -> None:
        messages = [m for batch, _ in sends for m in batch]
        try:
            results = await self._send_once(queue, *config, messages)
        except _StaleConfig:
            # Changed since they were checked: each send again on its own, checked anew.
            self._configs.pop(queue, None)
            for batch, done in sends:
                send_as_task(self._sending, self.send(queue, batch), done)
            return
        except SluiceError as error:
            _tell(sends, error)
            return
        except Exception as error:  # each caller is told: none may wait forever
            _tell(sends, Unavailable(f"the send failed: {error!r}"))
            return
        at = 0
        for batch, done in sends:
            _call(done, results[at : at + len(batch)])
            at += len(batch)

    async def _send_once(
        self, queue: str, config: QueueConfig, ver: str, messages: Sequence[OutgoingMessage]
    ) -> list[SendResult]:
        ids = _new_message_ids(len(messages))
        # Per-queue values looked up once: this loop is most of a big batch's client time.
        fifo, queue_delay = config.fifo, _ms(config.delay)
        batch = [
            (
                message_id,
                m.body,
                orjson.dumps(m.attributes).decode() if m.attributes else "",
                queue_delay if m.delay is None else _ms(m.delay),
                m.group_id or "",
                m.deduplication_id or (content_dedup_id(m.body) if fifo else ""),
            )
            for message_id, m in zip(ids, messages, strict=True)
        ]
        args = [ver, uuid.uuid4().hex, _ms(DEDUP_WINDOW), orjson.dumps(batch)]
        outcome = await self._script("send", queue, args)
        if not outcome:  # a standard queue: every message stored under its new id
            return [
                SendResult(message_id, body=m.body)
                for message_id, m in zip(ids, messages, strict=True)
            ]
        results = []
        for message_id, m, tag in zip(ids, messages, orjson.loads(outcome), strict=True):
            md5 = md5_of_body(m.body)
            if tag.startswith("N:"):
                results.append(SendResult(message_id, md5, sequence_number=tag[2:]))
            else:  # "D:<sequence>:<original id>": suppressed as a duplicate
                _, sequence, original = tag.split(":", 2)
                results.append(SendResult(original, md5, sequence, duplicate=True))
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
        if visibility_timeout is not None:
            _check_visibility(visibility_timeout)
        timeout = -1 if visibility_timeout is None else _ms(visibility_timeout)
        loop = asyncio.get_running_loop()
        give_up, pause = loop.time() + wait, _POLL_FIRST
        while True:
            config, ver = await self._config(queue)
            dlq = await self._dlq_flag(config)
            reply = await self._script("receive", queue, [max_messages, timeout, dlq])
            gen, current, outbox, rows = orjson.loads(reply)
            if current != ver:  # changed by another process: reload before the next receive
                self._configs.pop(queue, None)
            if outbox:
                await self._flush_outbox(queue)
            left = give_up - loop.time()
            if rows or left <= 0:  # an empty Lua table arrives as {}, not []
                return [_message(gen, row) for row in rows or ()]
            # Long polling: poll with growing pauses (20 ms up to 200 ms) until the wait ends.
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX)

    async def delete(self, queue: str, receipt_handles: Sequence[str]) -> list[bool]:
        args = [part for handle in receipt_handles for part in _parse_receipt(handle)]
        if not args:
            return []
        return [bool(done) for done in await self._script("delete", queue, args)]

    async def change_visibility(self, queue: str, receipt_handle: str, timeout: float) -> bool:
        receipt = _parse_receipt(receipt_handle)
        _check_visibility(timeout)
        changed = await self._script("change_visibility", queue, [*receipt, _ms(timeout)])
        return bool(changed)

    async def dead_letter(self, queue: str, receipt_handle: str, reason: str) -> bool:
        receipt = _parse_receipt(receipt_handle)
        config, _ = await self._config(queue)
        dlq = await self._dlq_flag(config)
        moved, outbox = await self._script("dead_letter", queue, [*receipt, reason, dlq])
        if outbox:
            await self._flush_outbox(queue)
        return bool(moved)

    async def purge(self, queue: str) -> int:
        return int(await self._script("purge", queue, [uuid.uuid4().hex[:12]]))

    async def stats(self, queue: str) -> QueueStats:
        visible, in_flight, delayed, oldest = await self._script("stats", queue, [])
        age = max(0.0, self._clock() - int(oldest) / 1000) if oldest else 0.0
        return QueueStats(queue, int(visible), int(in_flight), int(delayed), age)

    async def redrive(
        self, dead_letter_queue: str, to: str | None = None, limit: int | None = None
    ) -> int:
        source, _ = await self._config(dead_letter_queue)
        target = await self._redrive_target(dead_letter_queue, to)
        if target.name == dead_letter_queue:
            raise ValidationError("cannot redrive a queue into itself")
        if target.fifo != source.fifo:
            raise ValidationError(
                f"cannot redrive {dead_letter_queue!r} into {target.name!r}: "
                "both must be FIFO or both standard"
            )
        if limit is not None and limit < 1:
            raise ValidationError("redrive limit must be positive")
        moved = 0
        while limit is None or moved < limit:
            want = _TRANSFER_CHUNK if limit is None else min(_TRANSFER_CHUNK, limit - moved)
            took = int(await self._script("redrive_take", dead_letter_queue, [want, target.name]))
            await self._flush_outbox(dead_letter_queue)
            moved += took
            if took < want:
                break
        return moved

    async def _redrive_target(self, dead_letter_queue: str, to: str | None) -> QueueConfig:
        if to is not None:
            return await self.get_queue(to)
        sources = []
        for name in await self.list_queues():
            try:
                config = await self.get_queue(name)
            except QueueDoesNotExist:  # deleted meanwhile
                continue
            if config.dead_letter == dead_letter_queue:
                sources.append(config)
        if len(sources) != 1:
            names = ", ".join(sorted(c.name for c in sources)) or "none"
            raise ValidationError(
                f"redrive of {dead_letter_queue!r} needs `to`: queues using it as DLQ: {names}"
            )
        return sources[0]

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def _registry(self) -> str:
        return f"{{{self._namespace}}}:queues"

    def _prefix(self, queue: str) -> str:
        return f"{{{self._namespace}:{queue}}}:"

    def _require_client(self) -> RedisClient:
        if self._client is None:
            raise RuntimeError("RedisBroker is not started: await broker.start() first")
        return self._client

    async def _redis(self, command: Callable[[RedisClient], Any]) -> Any:
        client = self._require_client()
        return await call(lambda: command(client), where=self._where)

    async def _script(self, name: str, queue: str, args: Sequence[Any]) -> Any:
        self._require_client()
        script = self._scripts[name]
        keys = [self._prefix(queue)]
        try:
            return await call(
                lambda: script(keys=keys, args=[_ms(self._clock()), *args]), where=self._where
            )
        except redis_errors.ResponseError as exc:
            error = _script_error(queue, exc)
            if isinstance(error, QueueDoesNotExist):
                self._configs.pop(queue, None)
            raise error from exc

    async def _config(self, queue: str) -> tuple[QueueConfig, str]:
        cached = self._configs.get(queue)
        return cached if cached is not None else await self._load_config(queue)

    async def _load_config(self, queue: str) -> tuple[QueueConfig, str]:
        key = self._prefix(queue) + "c"
        stored, ver = await self._redis(lambda c: c.hmget(key, "json", "ver"))
        if stored is None or ver is None:
            self._configs.pop(queue, None)
            raise QueueDoesNotExist(f"queue {queue!r} does not exist")
        config = QueueConfig.from_dict(orjson.loads(stored))
        self._configs[queue] = (config, ver)
        return config, ver

    async def _dlq_flag(self, config: QueueConfig) -> str:
        """'1' when the queue's DLQ exists, so scripts may move messages there; as in the SQLite
        broker, messages of a queue whose DLQ does not exist are delivered as usual. A DLQ seen
        missing is looked up again after a second; one seen existing until a move finds it gone."""
        name = config.dead_letter
        if not name:
            return ""
        checked = self._dlq_checked.get(name)
        if checked is None or (not checked[0] and time.monotonic() - checked[1] > 1.0):
            key = self._prefix(name) + "c"
            exists = bool(await self._redis(lambda c: c.exists(key)))
            checked = self._dlq_checked[name] = (exists, time.monotonic())
        return "1" if checked[0] else ""

    async def _flush_outbox(self, queue: str) -> None:
        """Finish moving the messages parked in ``queue``'s outbox to their target queues."""
        parked = await self._script("outbox_take", queue, [])
        by_target: dict[str, list[tuple[str, str]]] = {}
        for entry_id, payload in zip(parked[::2], parked[1::2], strict=True):
            by_target.setdefault(orjson.loads(payload)[0], []).append((entry_id, payload))
        prefix = self._prefix(queue)
        for target, items in by_target.items():
            for start in range(0, len(items), _TRANSFER_CHUNK):
                chunk = items[start : start + _TRANSFER_CHUNK]
                args = [part for eid, payload in chunk for part in (prefix + eid, payload)]
                try:
                    await self._script("transfer_in", target, args)
                except QueueDoesNotExist:
                    self._dlq_checked[target] = (False, time.monotonic())
                    log.warning(
                        "queue %r does not exist: %d messages from %r wait for it",
                        target,
                        len(items),
                        queue,
                    )
                    break
                await self._script("outbox_done", queue, [entry_id for entry_id, _ in chunk])


_Send = tuple[Sequence[OutgoingMessage], Callable[[SendOutcome], None]]


class _Gathered:
    """One iteration's `send_soon` calls to one queue, checked against ``config``."""

    __slots__ = ("config", "sends")

    def __init__(self, config: tuple[QueueConfig, str]) -> None:
        self.config = config
        self.sends: list[_Send] = []

    def chunks(self) -> list[list[_Send]]:
        """The sends in order, cut into script calls of bounded size (a send is never cut)."""
        chunks: list[list[_Send]] = []
        count = size = 0
        for send in self.sends:
            n, b = len(send[0]), sum(len(m.body) for m in send[0])
            if not chunks or count + n > _GATHER_MESSAGES or size + b > _GATHER_BYTES:
                chunks.append([])
                count = size = 0
            chunks[-1].append(send)
            count, size = count + n, size + b
        return chunks


def _call(done: Callable[[SendOutcome], None], outcome: SendOutcome) -> None:
    try:
        done(outcome)
    except Exception:  # one caller's failure must not keep the others from their answers
        log.exception("a send's callback failed")


def _tell(sends: list[_Send], error: SluiceError) -> None:
    for _, done in sends:
        _call(done, error)


def _new_message_ids(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs, from one read of the OS's random source."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])  # RFC 4122 variant
    text = raw.hex()
    return [
        f"{text[i : i + 8]}-{text[i + 8 : i + 12]}-{text[i + 12 : i + 16]}-"
        f"{text[i + 16 : i + 20]}-{text[i + 20 : i + 32]}"
        for i in range(0, len(text), 32)
    ]


def _check_visibility(timeout: float) -> None:
    if not 0 <= timeout <= MAX_VISIBILITY_TIMEOUT:
        raise ValidationError(
            f"visibility timeout must be between 0 and {MAX_VISIBILITY_TIMEOUT:g} seconds"
        )


def _parse_receipt(handle: str) -> tuple[str, ...]:
    match = _RECEIPT.fullmatch(handle) if isinstance(handle, str) else None
    if match is None:
        raise ReceiptHandleIsInvalid(f"receipt handle {handle!r} is not one this broker issued")
    return match.groups()


def _script_error(queue: str, exc: redis_errors.ResponseError) -> Exception:
    code = str(exc).split(" ", 1)[0]
    if code == "NOQUEUE":
        return QueueDoesNotExist(f"queue {queue!r} does not exist")
    if code == "STALE":
        return _StaleConfig(queue)
    return exc


def _message(gen: str, row: list[Any]) -> Message:
    entry_id, count, first, flat = row
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    body = fields["b"]
    return Message(
        message_id=fields["i"],
        receipt_handle=f"{gen}.{entry_id}.{count}",
        body=body,
        attributes=orjson.loads(fields["a"]) if "a" in fields else {},
        receive_count=int(count),
        sent_timestamp=int(fields["t"]),
        first_receive_timestamp=int(first),
        md5_of_body=md5_of_body(body),
        group_id=fields.get("g"),
        deduplication_id=fields.get("d"),
        sequence_number=fields.get("n"),
        dead_letter_reason=fields.get("r"),
    )
