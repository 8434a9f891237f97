"""The embedded state backend: one SQLite file, safe to share between processes on one host.

WAL journal with ``synchronous=FULL`` (a returned write is on disk), every write in its own
``BEGIN IMMEDIATE`` transaction (processes queue on the file lock instead of failing half-way),
and a busy timeout that bounds how long a caller waits for another process's lock before getting
`Unavailable`. All SQLite calls run on one private thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sluice.errors import NotFound, Unavailable
from sluice.sqlite_wal import enable_wal
from sluice.state import codec
from sluice.state.contract import Conflict, Record

T = TypeVar("T")

# Numbered migrations; each is a list of statements applied in one transaction with its number.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE records (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            version INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (kind, key)
        ) WITHOUT ROWID""",
        "CREATE TABLE blobs (digest TEXT PRIMARY KEY, data BLOB NOT NULL)",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    ),
)

_COLUMNS = "kind, key, value, version, updated_at"


def _record(row: tuple[Any, ...]) -> Record:
    kind, key, value, version, updated_at = row
    return Record(kind, key, codec.decode_value(value), version, updated_at)


class SQLiteState:
    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sluice-state")
        try:
            await self._call(self._open)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, self._close_connection)
        executor.shutdown(wait=True)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; timeout is SQLite's busy handler.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        self._conn = conn
        enable_wal(conn, self.busy_timeout)
        conn.execute("PRAGMA synchronous=FULL")
        self._write(self._migrate)

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for number, statements in enumerate(MIGRATIONS, start=1):
            if number in applied:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (number, time.time()))

    # -- plumbing ------------------------------------------------------------------------------

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise Unavailable(f"state store {self.path} is not started (or already closed)")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except (sqlite3.OperationalError, OSError) as exc:
            # "database is locked" after busy_timeout, or the file cannot be created/opened.
            raise Unavailable(f"state database {self.path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise Unavailable(f"state store {self.path} is closed")
        return self._conn

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    @staticmethod
    def _version(conn: sqlite3.Connection, kind: str, key: str) -> int:
        row = conn.execute(
            "SELECT version FROM records WHERE kind = ? AND key = ?", (kind, key)
        ).fetchone()
        return row[0] if row else 0

    # -- records -------------------------------------------------------------------------------

    async def put(
        self, kind: str, key: str, value: dict[str, Any], *, expect_version: int | None = None
    ) -> Record:
        codec.check_name("kind", kind)
        codec.check_name("key", key)
        codec.check_expect_version(expect_version)
        text = codec.encode_value(value)

        def write(conn: sqlite3.Connection) -> Record:
            current = self._version(conn, kind, key)
            if expect_version is not None and current != expect_version:
                raise Conflict(kind, key, expect_version, current)
            now = time.time()
            conn.execute(
                f"INSERT OR REPLACE INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (kind, key, text, current + 1, now),
            )
            return Record(kind, key, codec.decode_value(text), current + 1, now)

        return await self._call(lambda: self._write(write))

    async def get(self, kind: str, key: str) -> Record | None:
        codec.check_name("kind", kind)
        codec.check_name("key", key)

        def read() -> Record | None:
            row = (
                self._connection()
                .execute(f"SELECT {_COLUMNS} FROM records WHERE kind = ? AND key = ?", (kind, key))
                .fetchone()
            )
            return _record(row) if row else None

        return await self._call(read)

    async def list(
        self, kind: str, prefix: str = "", limit: int | None = None, *, after: str | None = None
    ) -> builtins.list[Record]:
        where, params = codec.list_filter(kind, prefix, limit, after, "?")
        query = f"SELECT {_COLUMNS} FROM records WHERE {where} ORDER BY key LIMIT ?"
        params.append(-1 if limit is None else limit)

        def read() -> builtins.list[Record]:
            return [_record(row) for row in self._connection().execute(query, params)]

        return await self._call(read)

    async def delete(self, kind: str, key: str, *, expect_version: int | None = None) -> bool:
        codec.check_name("kind", kind)
        codec.check_name("key", key)
        codec.check_expect_version(expect_version, allow_zero=False)

        def write(conn: sqlite3.Connection) -> bool:
            if expect_version is not None:
                current = self._version(conn, kind, key)
                if current != expect_version:
                    raise Conflict(kind, key, expect_version, current)
            cursor = conn.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))
            return cursor.rowcount > 0

        return await self._call(lambda: self._write(write))

    # -- blobs and counters --------------------------------------------------------------------

    async def put_blob(self, data: bytes) -> str:
        digest = codec.blob_digest(data)
        payload = bytes(data)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?)", (digest, payload))

        await self._call(lambda: self._write(write))
        return digest

    async def get_blob(self, digest: str) -> bytes:
        codec.check_digest(digest)

        def read() -> bytes | None:
            row = (
                self._connection()
                .execute("SELECT data FROM blobs WHERE digest = ?", (digest,))
                .fetchone()
            )
            return bytes(row[0]) if row else None

        data = await self._call(read)
        if data is None:
            raise NotFound(f"no blob with digest {digest}")
        return data

    async def incr(self, counter: str, by: int = 1) -> int:
        codec.check_name("counter", counter)
        step = codec.check_increment(by)

        def write(conn: sqlite3.Connection) -> int:
            # Read-modify-write is atomic under BEGIN IMMEDIATE; doing the sum here (rather than
            # in SQL, where SQLite silently turns an overflowing integer into a float) lets us
            # refuse leaving the 64-bit range as PostgreSQL does.
            row = conn.execute("SELECT value FROM counters WHERE name = ?", (counter,)).fetchone()
            value = (row[0] if row else 0) + step
            if not codec.COUNTER_MIN <= value <= codec.COUNTER_MAX:
                raise codec.counter_overflow(counter, step)
            conn.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (counter, value))
            return value

        return await self._call(lambda: self._write(write))
