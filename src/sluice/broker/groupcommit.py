"""Group commit for SQLite: one writer thread runs every pending operation in one transaction.

Callers submit a function of the write connection and await its result. The writer drains all
pending operations, runs each inside its own SAVEPOINT (so one failing operation rolls back only
its own writes), commits once (one fsync for the whole group) and then resolves every future.
A result is only handed back after the commit succeeded: an operation that returned is durable.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sluice.errors import SluiceError, Unavailable

T = TypeVar("T")
Connect = Callable[[], sqlite3.Connection]


def as_unavailable(error: sqlite3.Error) -> Unavailable:
    return Unavailable(f"SQLite database cannot be written: {error}")


@dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class GroupCommitWriter:
    """Owns the write connection and the thread that uses it."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._pending: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

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

    async def submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise Unavailable("the SQLite broker is not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.put(_Op(fn, future, loop))
        return await future

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as error:
            self._start_error = as_unavailable(error) if isinstance(error, sqlite3.Error) else error
            self._ready.set()
            return
        self._ready.set()
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
                try:
                    self._run_batch(conn, batch)
                except Exception as error:  # never leave a caller waiting on a dead batch
                    if conn.in_transaction:
                        conn.rollback()
                    failed = (False, Unavailable(f"SQLite write failed: {error}"))
                    self._resolve(batch, [failed] * len(batch))
                if stop:
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            self._resolve(batch, [(False, as_unavailable(error))] * len(batch))
            return
        lost: sqlite3.Error | None = None
        for op in batch:
            conn.execute("SAVEPOINT op")
            try:
                value = op.fn(conn)
            except Exception as error:
                outcomes.append((False, _translate(error)))
                # Some errors (SQLITE_FULL among them) roll back the whole transaction by
                # themselves: then the writes of the operations before this one are gone too.
                if not conn.in_transaction:
                    lost = error if isinstance(error, sqlite3.Error) else sqlite3.Error(str(error))
                    break
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            else:
                conn.execute("RELEASE op")
                outcomes.append((True, value))
        if lost is None:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as error:
                lost = error
        if lost is not None:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failed = (False, as_unavailable(lost))
            outcomes = [o if not o[0] else failed for o in outcomes]
            outcomes += [failed] * (len(batch) - len(outcomes))
        self._resolve(batch, outcomes)

    @staticmethod
    def _resolve(batch: list[_Op], outcomes: list[tuple[bool, Any]]) -> None:
        for op, (ok, value) in zip(batch, outcomes, strict=True):
            op.loop.call_soon_threadsafe(_settle, op.future, ok, value)


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
