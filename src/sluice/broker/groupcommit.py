"""Group commit for SQLite: one writer thread runs every pending operation in one transaction.

Callers submit a function of the write connection and await its result. The writer drains all
pending operations, runs each inside its own SAVEPOINT (so one failing operation rolls back only
its own writes), commits once (one fsync for the whole group) and then resolves every future.
A result is only handed back after the commit succeeded: an operation that returned is durable.

Batched operations (`submit_batched`) are for many small writes of one kind, e.g. sends to one
queue: the pending items of one key run as a single call under a single savepoint, so the per-item
cost in the writer thread (which every commit waits for) is a few Python operations rather than
three statements. A batch function validates each item before it writes anything and reports one
outcome per item; if it raises, every item of the batch fails. The savepoint is skipped when a
transaction holds only one operation or batch (its rollback is the transaction's).

An operation or a batch may also bring an ``alone`` function, for when it is all the writer has
to do: it does the same work in single statements outside any transaction (SQLite commits, and
fsyncs, such a statement by itself), or returns None having written nothing, and the operation
runs as usual. Each trip into SQLite releases the GIL and takes it back, and while the event loop
holds it the writer waits: one trip instead of four or more (BEGIN, lookup, the write, COMMIT)
lets it commit sooner.

Only what a caller is promised must survive a power loss needs an fsync: an operation submitted
with ``durable=False`` (a receive's visibility change, a delete) commits with
``synchronous=NORMAL`` when nothing durable shares its transaction. A process crash loses nothing
either way (the commit is in the OS page cache); a power loss can undo such a commit, which
redelivers a message, the at-least-once outcome that is promised anyway. The next durable commit
fsyncs the log, and with it every commit before it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sluice.errors import SluiceError, Unavailable
from sluice.futures import settle

log = logging.getLogger("sluice.broker")

T = TypeVar("T")
Connect = Callable[[], sqlite3.Connection]
Outcome = tuple[bool, Any]  # (True, result) or (False, the exception to raise)
BatchFn = Callable[[sqlite3.Connection, list[Any]], Sequence[Outcome]]
# Writes the items in one statement that commits by itself, or returns None having written nothing.
AloneFn = Callable[[sqlite3.Connection, list[Any]], Sequence[Outcome] | None]
# The same for a plain operation: its result, or None having written nothing.
AloneOpFn = Callable[[sqlite3.Connection], Any]


def as_unavailable(error: sqlite3.Error) -> Unavailable:
    return Unavailable(f"SQLite database cannot be written: {error}")


@dataclass(slots=True)
class Operation:
    """One submitted write: a plain operation, or the gathered items of a batched one."""

    fn: Callable[[sqlite3.Connection], Any] | BatchFn
    loop: asyncio.AbstractEventLoop | None  # where its futures are resolved (None: no futures)
    future: asyncio.Future[Any] | None = None  # a plain operation's
    key: Hashable = None  # None: a plain operation; else batched with the same key's items
    items: list[Any] = field(default_factory=list)  # batched: gathered in one loop iteration
    futures: list[asyncio.Future[Any]] = field(default_factory=list)  # one per item
    durable: bool = True  # needs an fsync before its result is handed back
    alone: AloneFn | AloneOpFn | None = None  # when it is all there is to write


def _settle_all(settled: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for future, (ok, value) in settled:
        settle(future, None if ok else value, value if ok else None)


class GroupCommitWriter:
    """Owns the write connection and the thread that uses it."""

    def __init__(self, connect: Connect, on_commit: Callable[[], None] | None = None) -> None:
        self._connect = connect
        self._on_commit = on_commit  # told after every group it ran (e.g. a `Checkpointer`)
        self._pending: queue.SimpleQueue[Operation | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        # Batched items of the current event-loop iteration, per (loop, key): handed to the
        # writer as one operation when the iteration's callbacks are done.
        self._gathering: dict[tuple[asyncio.AbstractEventLoop, Hashable], Operation] = {}

    def start(self) -> None:
        """Open the connection on the writer thread; raise what opening it raised."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="sluice-sqlite-writer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error

    def stop(self) -> None:
        """Finish every submitted operation, then close the connection."""
        if self._thread is None:
            return
        self._pending.put(None)
        self._thread.join()
        self._thread = None

    async def submit(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        durable: bool = True,
        alone: AloneOpFn | None = None,
    ) -> T:
        if self._thread is None:
            raise Unavailable("the SQLite broker is not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.put(Operation(fn, loop, future, durable=durable, alone=alone))
        return await future

    async def submit_batched(
        self, key: Hashable, fn: BatchFn, item: Any, *, alone: AloneFn | None = None
    ) -> Any:
        """Run ``fn(conn, items)`` once for the pending items submitted under ``key`` (all with
        the same ``fn`` and ``alone``); this item's outcome is returned or raised once it is
        committed."""
        if self._thread is None:
            raise Unavailable("the SQLite broker is not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        op = self._gathering.get((loop, key))
        if op is None:
            op = self._gathering[(loop, key)] = Operation(fn, loop, key=key, alone=alone)
            loop.call_soon(self._hand_over, loop, key)
        op.items.append(item)
        op.futures.append(future)
        return await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop, key: Hashable) -> None:
        op = self._gathering.pop((loop, key))
        if self._thread is None:  # stopped since the items were submitted
            self._resolve([op], [(False, Unavailable("the SQLite broker is not started"))])
        else:
            self._pending.put(op)

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as error:
            self._start_error = as_unavailable(error) if isinstance(error, sqlite3.Error) else error
            self._ready.set()
            return
        self._ready.set()
        synchronous = "FULL"  # as the connection was opened
        try:
            while True:
                first = self._pending.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while True:
                    try:
                        op = self._pending.get_nowait()
                    except queue.Empty:
                        break
                    if op is None:
                        stop = True
                        break
                    batch.append(op)
                wanted = "FULL" if any(op.durable for op in batch) else "NORMAL"
                if wanted != synchronous:
                    conn.execute(f"PRAGMA synchronous = {wanted}")
                    synchronous = wanted
                self._resolve(batch, commit_group(conn, batch))
                if self._on_commit is not None:
                    self._on_commit()
                if stop:
                    return
        finally:
            conn.close()
            self._refuse_leftovers()

    def _refuse_leftovers(self) -> None:
        """Operations handed over after `stop` began are never run: fail them, never hang."""
        left: list[Operation] = []
        while True:
            try:
                op = self._pending.get_nowait()
            except queue.Empty:
                break
            if op is not None:
                left.append(op)
        if left:
            refused = (False, Unavailable("the SQLite broker is not started"))
            self._resolve(left, [refused] * len(left))

    @staticmethod
    def _resolve(batch: list[Operation], outcomes: list[Outcome]) -> None:
        """One wake-up per event loop for the whole batch, not one per operation. A batched
        operation's outcome is the list of its items' outcomes, or one failure for them all."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
        for op, outcome in zip(batch, outcomes, strict=True):
            assert op.loop is not None
            settled = by_loop.setdefault(op.loop, [])
            if op.future is not None:
                settled.append((op.future, outcome))
            elif outcome[0]:
                settled.extend(zip(op.futures, outcome[1], strict=True))
            else:
                settled.extend((future, outcome) for future in op.futures)
        for loop, settled in by_loop.items():
            loop.call_soon_threadsafe(_settle_all, settled)


def commit_group(conn: sqlite3.Connection, batch: list[Operation]) -> list[Outcome]:
    """Run a group of operations and commit it once; each operation's outcome, in ``batch``'s
    order. An outcome is success only if the commit succeeded. It never raises: anything
    unexpected fails the whole group (rolled back), so no caller waits on a dead group. Used by
    the writer thread and by the send process (`sluice.broker.send_process`)."""
    try:
        outcomes = _run_group(conn, batch)
    except Exception as error:
        if conn.in_transaction:
            conn.rollback()
        return [(False, Unavailable(f"SQLite write failed: {error}"))] * len(batch)
    return [outcomes[id(op)] for op in batch]


def _run_group(conn: sqlite3.Connection, batch: list[Operation]) -> dict[int, Outcome]:
    units = _units(batch)
    # Alone: one unit; or several that need no fsync (each statement commits by itself, and
    # without one a commit costs less than the savepoints that a shared transaction needs).
    if all(unit[0].alone is not None for unit in units) and (
        len(units) == 1 or not any(op.durable for op in batch)
    ):
        outcomes: dict[int, Outcome] = {}  # id(op) -> outcome
        left = []
        for unit in units:
            ran = _ran_alone(conn, unit)
            if ran is None:
                left.append(unit)
            else:
                outcomes.update(zip(map(id, unit), ran, strict=True))
        if left:
            outcomes.update(_in_transaction(conn, [op for unit in left for op in unit], left))
        return outcomes
    return _in_transaction(conn, batch, units)


def _in_transaction(
    conn: sqlite3.Connection, batch: list[Operation], units: list[list[Operation]]
) -> dict[int, Outcome]:
    """The units in one transaction, each in its own savepoint when there are several."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as error:
        return {id(op): (False, as_unavailable(error)) for op in batch}
    outcomes: dict[int, Outcome] = {}
    savepoints = len(units) > 1
    lost: Exception | None = None
    for unit in units:
        if savepoints:
            conn.execute("SAVEPOINT op")
        try:
            results = _run_unit(conn, unit)
        except Exception as error:
            failed = (False, _translate(error))
            outcomes.update((id(op), failed) for op in unit)
            # Some errors (SQLITE_FULL among them) roll back the whole transaction by
            # themselves: then the writes of the operations before this one are gone too.
            if not savepoints or not conn.in_transaction:
                lost = error
                break
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
        else:
            if savepoints:
                conn.execute("RELEASE op")
            outcomes.update(zip(map(id, unit), results, strict=True))
    if lost is None:
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            lost = error
    if lost is not None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        # Nothing of this transaction is stored: what succeeded or did not run yet fails as
        # Unavailable; what failed keeps its own error.
        gone = lost if isinstance(lost, sqlite3.Error) else sqlite3.Error(str(lost))
        failed = (False, as_unavailable(gone))
        for op in batch:
            outcome = outcomes.get(id(op))
            if outcome is None or outcome[0]:
                outcomes[id(op)] = failed
    return outcomes


def _ran_alone(conn: sqlite3.Connection, unit: list[Operation]) -> list[Outcome] | None:
    """Run one operation, or one batched unit's items, in self-committing statements: the
    unit's outcomes, or None (nothing written) when its ``alone`` function declines."""
    first = unit[0]
    assert first.alone is not None
    try:
        if first.key is None:
            result = first.alone(conn)  # type: ignore[call-arg]
            return None if result is None else [(True, result)]
        outcomes = first.alone(conn, _items(unit))  # type: ignore[call-arg]
        return None if outcomes is None else _shares(unit, outcomes)
    except Exception as error:  # the statement is atomic: nothing of it is stored
        if conn.in_transaction:
            conn.rollback()
        gone = error if isinstance(error, sqlite3.Error) else sqlite3.Error(str(error))
        return [(False, as_unavailable(gone))] * len(unit)


def _units(batch: list[Operation]) -> list[list[Operation]]:
    """Plain operations one by one; batched ones grouped by key, where the key first appears."""
    units: list[list[Operation]] = []
    keyed: dict[Hashable, list[Operation]] = {}
    for op in batch:
        if op.key is None:
            units.append([op])
        elif (unit := keyed.get(op.key)) is not None:
            unit.append(op)
        else:
            keyed[op.key] = unit = [op]
            units.append(unit)
    return units


def _run_unit(conn: sqlite3.Connection, unit: list[Operation]) -> Sequence[Outcome]:
    first = unit[0]
    if first.key is None:
        return [(True, first.fn(conn))]  # type: ignore[call-arg]
    return _shares(unit, first.fn(conn, _items(unit)))  # type: ignore[call-arg]


def _items(unit: list[Operation]) -> list[Any]:
    return unit[0].items if len(unit) == 1 else [item for op in unit for item in op.items]


def _shares(unit: list[Operation], outcomes: Sequence[Outcome]) -> list[Outcome]:
    """A batch's outcomes (one per item) as each operation's share, in the order its items
    were gathered."""
    items = sum(len(op.items) for op in unit)
    if len(outcomes) != items:
        raise RuntimeError(f"a batch of {items} items gave {len(outcomes)} outcomes")
    translated = [(ok, value if ok else _translate(value)) for ok, value in outcomes]
    results: list[Outcome] = []
    start = 0
    for op in unit:
        end = start + len(op.items)
        results.append((True, translated[start:end]))
        start = end
    return results


def _translate(error: Exception) -> Exception:
    if isinstance(error, SluiceError):
        return error
    if isinstance(error, sqlite3.OperationalError | sqlite3.DatabaseError):
        return as_unavailable(error)
    return error


class Reader:
    """A read connection on its own thread, for queries that change nothing."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sluice-sqlite-reader")
            try:
                self._conn = self._executor.submit(self._connect).result()
            except sqlite3.Error as error:
                self.stop()
                raise as_unavailable(error) from error

    def stop(self) -> None:
        if self._executor is None:
            return
        if self._conn is not None:
            self._executor.submit(self._conn.close).result()
            self._conn = None
        self._executor.shutdown()
        self._executor = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None or self._conn is None:
            raise Unavailable("the SQLite broker is not started")
        conn = self._conn
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)
        except sqlite3.Error as error:
            raise Unavailable(f"SQLite database cannot be read: {error}") from error


class Checkpointer:
    """Copies the write-ahead log back into the database on its own thread and connection, a
    moment after commits, so that no commit waits for a checkpoint's I/O (SQLite would otherwise
    run one inside the commit that crosses ``wal_autocheckpoint``, on the writer thread that every
    caller waits for). PASSIVE: it never blocks the writer or readers. The writer keeps a high
    ``wal_autocheckpoint`` as a backstop should this thread fall behind."""

    def __init__(self, connect: Connect, delay: float) -> None:
        self._connect = connect
        self._delay = delay
        self._dirty = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            conn = self._connect()  # fails here, in the caller, if the file cannot be opened
            self._thread = threading.Thread(
                target=self._run, args=(conn,), name="sluice-sqlite-checkpointer", daemon=True
            )
            self._thread.start()

    def committed(self) -> None:
        self._dirty.set()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping = True
            self._dirty.set()
            self._thread.join()
            self._thread = None

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                self._dirty.wait()
                if not self._stopping:
                    time.sleep(self._delay)  # let more commits gather: one checkpoint for all
                self._dirty.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as error:  # busy or I/O: the next commit brings a retry
                    log.warning("WAL checkpoint failed: %s", error)
                if self._stopping:  # set before the event: seen here or after the next wait
                    return
        finally:
            conn.close()
