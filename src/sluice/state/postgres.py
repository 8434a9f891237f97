"""The scale-out state backend: PostgreSQL through psycopg 3 and an async connection pool.

All tables live in one schema (``sluice`` by default) so several deployments can share a
database. Schema migrations are numbered; ``start`` applies the missing ones in one transaction
under an advisory lock, so processes starting together neither race nor apply one twice.

Reaching the server is bounded by ``timeout``: the pool reconnects with backoff in the
background, a connection is checked before each use, and a caller that cannot get a working one
in time gets `Unavailable` — never a hang. Reads are retried on a lost connection within that
bound; a write whose connection drops mid-flight is not retried (it may have committed), it
raises `Unavailable` saying so.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from sluice.errors import NotFound, Unavailable, ValidationError
from sluice.state import codec
from sluice.state.contract import Conflict, Record

T = TypeVar("T")
Connection = psycopg.AsyncConnection[tuple[Any, ...]]

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_COLUMNS = "kind, key, value, version, updated_at"

# Numbered migrations; `{s}` is the schema. Keys collate as "C" so that list order is code point
# order, the same as Python's and SQLite's.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE {s}.records (
            kind text COLLATE "C" NOT NULL,
            key text COLLATE "C" NOT NULL,
            value text NOT NULL,
            version bigint NOT NULL,
            updated_at double precision NOT NULL,
            PRIMARY KEY (kind, key)
        )""",
        "CREATE TABLE {s}.blobs (digest text PRIMARY KEY, data bytea NOT NULL)",
        "CREATE TABLE {s}.counters (name text PRIMARY KEY, value bigint NOT NULL)",
    ),
)


def _advisory_lock_id(schema: str) -> int:
    """A stable signed 64-bit id for this schema's migration lock, the same in every process."""
    digest = hashlib.sha256(f"sluice.state.migrations:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _record(row: tuple[Any, ...]) -> Record:
    kind, key, value, version, updated_at = row
    return Record(kind, key, codec.decode_value(value), version, updated_at)


class PostgresState:
    def __init__(
        self,
        url: str,
        *,
        schema: str = "sluice",
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValidationError(f"invalid PostgreSQL schema name {schema!r}")
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValidationError(
                f"need 0 <= min_size <= max_size, max_size >= 1: {min_size}, {max_size}"
            )
        if timeout <= 0:
            raise ValidationError(f"timeout must be positive, got {timeout}")
        self.url = url
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self._schema_id = sql.Identifier(schema)
        self._pool: AsyncConnectionPool[Connection] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self.url,
            min_size=self.min_size,
            max_size=self.max_size,
            open=False,
            timeout=self.timeout,
            check=AsyncConnectionPool.check_connection,
            name=f"sluice-state-{self.schema}",
            kwargs={
                "autocommit": True,
                # libpq's own bound on one connection attempt (it accepts whole seconds, >= 2).
                "connect_timeout": max(2, math.ceil(self.timeout)),
                "application_name": f"sluice-state:{self.schema}",
            },
        )
        try:
            await pool.open(wait=self.min_size > 0, timeout=self.timeout)
        except PoolTimeout as exc:  # `open` has closed the pool already
            raise self._unreachable() from exc
        self._pool = pool
        try:
            await self._run(self._migrate, retry=True)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _migrate(self, conn: Connection) -> None:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s)", (_advisory_lock_id(self.schema),)
            )
            await conn.execute(self._sql("CREATE SCHEMA IF NOT EXISTS {s}"))
            await conn.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {s}.schema_migrations"
                    " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
            )
            cursor = await conn.execute(self._sql("SELECT version FROM {s}.schema_migrations"))
            applied = {row[0] for row in await cursor.fetchall()}
            for number, statements in enumerate(MIGRATIONS, start=1):
                if number in applied:
                    continue
                for statement in statements:
                    await conn.execute(self._sql(statement))
                await conn.execute(
                    self._sql("INSERT INTO {s}.schema_migrations (version) VALUES (%s)"), (number,)
                )

    # -- plumbing ------------------------------------------------------------------------------

    def _sql(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._schema_id)

    def _unreachable(self) -> Unavailable:
        return Unavailable(
            f"PostgreSQL state store (schema {self.schema}) unreachable for {self.timeout:g}s"
        )

    async def _run(self, op: Callable[[Connection], Awaitable[T]], *, retry: bool) -> T:
        """Run `op` on a checked pooled connection, within the store's time bound."""
        pool = self._pool
        if pool is None:
            raise Unavailable("PostgreSQL state store is not started (or already closed)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        delay = 0.05
        while True:
            try:
                async with pool.connection(timeout=max(deadline - loop.time(), 0.01)) as conn:
                    return await op(conn)
            except PoolTimeout as exc:
                raise self._unreachable() from exc
            except PoolClosed as exc:
                raise Unavailable("PostgreSQL state store was closed") from exc
            except psycopg.OperationalError as exc:
                if not retry:
                    raise Unavailable(
                        f"PostgreSQL state store: connection failed during a write ({exc});"
                        " it may or may not have been applied"
                    ) from exc
                if loop.time() + delay >= deadline:
                    raise self._unreachable() from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _fetchone(
        self, conn: Connection, query: str, params: tuple[Any, ...]
    ) -> tuple[Any, ...] | None:
        cursor = await conn.execute(self._sql(query), params)
        return await cursor.fetchone()

    async def _version(self, conn: Connection, kind: str, key: str) -> int:
        row = await self._fetchone(
            conn, "SELECT version FROM {s}.records WHERE kind = %s AND key = %s", (kind, key)
        )
        return row[0] if row else 0

    # -- records -------------------------------------------------------------------------------

    async def put(
        self, kind: str, key: str, value: dict[str, Any], *, expect_version: int | None = None
    ) -> Record:
        codec.check_name("kind", kind)
        codec.check_name("key", key)
        codec.check_expect_version(expect_version)
        text = codec.encode_value(value)

        async def write(conn: Connection) -> Record:
            now = time.time()
            if expect_version is None:
                query = (
                    f"INSERT INTO {{s}}.records ({_COLUMNS}) VALUES (%s, %s, %s, 1, %s)"
                    " ON CONFLICT (kind, key) DO UPDATE SET value = EXCLUDED.value,"
                    " version = records.version + 1, updated_at = EXCLUDED.updated_at"
                    " RETURNING version"
                )
                params: tuple[Any, ...] = (kind, key, text, now)
            elif expect_version == 0:
                query = (
                    f"INSERT INTO {{s}}.records ({_COLUMNS}) VALUES (%s, %s, %s, 1, %s)"
                    " ON CONFLICT (kind, key) DO NOTHING RETURNING version"
                )
                params = (kind, key, text, now)
            else:
                query = (
                    "UPDATE {s}.records SET value = %s, version = version + 1, updated_at = %s"
                    " WHERE kind = %s AND key = %s AND version = %s RETURNING version"
                )
                params = (text, now, kind, key, expect_version)
            row = await self._fetchone(conn, query, params)
            if row is None:
                assert expect_version is not None
                raise Conflict(kind, key, expect_version, await self._version(conn, kind, key))
            return Record(kind, key, codec.decode_value(text), row[0], now)

        return await self._run(write, retry=False)

    async def get(self, kind: str, key: str) -> Record | None:
        codec.check_name("kind", kind)
        codec.check_name("key", key)

        async def read(conn: Connection) -> Record | None:
            row = await self._fetchone(
                conn,
                f"SELECT {_COLUMNS} FROM {{s}}.records WHERE kind = %s AND key = %s",
                (kind, key),
            )
            return _record(row) if row else None

        return await self._run(read, retry=True)

    async def list(
        self, kind: str, prefix: str = "", limit: int | None = None, *, after: str | None = None
    ) -> builtins.list[Record]:
        where, params = codec.list_filter(kind, prefix, limit, after, "%s")
        query = f"SELECT {_COLUMNS} FROM {{s}}.records WHERE {where} ORDER BY key LIMIT %s"
        params.append(limit)  # LIMIT NULL means no limit

        async def read(conn: Connection) -> builtins.list[Record]:
            cursor = await conn.execute(self._sql(query), params)
            return [_record(row) for row in await cursor.fetchall()]

        return await self._run(read, retry=True)

    async def delete(self, kind: str, key: str, *, expect_version: int | None = None) -> bool:
        codec.check_name("kind", kind)
        codec.check_name("key", key)
        codec.check_expect_version(expect_version, allow_zero=False)

        async def write(conn: Connection) -> bool:
            query = "DELETE FROM {s}.records WHERE kind = %s AND key = %s"
            params: tuple[Any, ...] = (kind, key)
            if expect_version is not None:
                query += " AND version = %s"
                params = (kind, key, expect_version)
            cursor = await conn.execute(self._sql(query), params)
            if cursor.rowcount > 0:
                return True
            if expect_version is not None:
                raise Conflict(kind, key, expect_version, await self._version(conn, kind, key))
            return False

        return await self._run(write, retry=False)

    # -- blobs and counters --------------------------------------------------------------------

    async def put_blob(self, data: bytes) -> str:
        digest = codec.blob_digest(data)
        payload = bytes(data)

        async def write(conn: Connection) -> None:
            await conn.execute(
                self._sql("INSERT INTO {s}.blobs VALUES (%s, %s) ON CONFLICT (digest) DO NOTHING"),
                (digest, payload),
            )

        await self._run(write, retry=True)  # content-addressed: repeating it is harmless
        return digest

    async def get_blob(self, digest: str) -> bytes:
        codec.check_digest(digest)

        async def read(conn: Connection) -> tuple[Any, ...] | None:
            return await self._fetchone(
                conn, "SELECT data FROM {s}.blobs WHERE digest = %s", (digest,)
            )

        row = await self._run(read, retry=True)
        if row is None:
            raise NotFound(f"no blob with digest {digest}")
        return bytes(row[0])

    async def incr(self, counter: str, by: int = 1) -> int:
        codec.check_name("counter", counter)
        step = codec.check_increment(by)

        async def write(conn: Connection) -> int:
            try:
                row = await self._fetchone(
                    conn,
                    "INSERT INTO {s}.counters VALUES (%s, %s) ON CONFLICT (name)"
                    " DO UPDATE SET value = counters.value + EXCLUDED.value RETURNING value",
                    (counter, step),
                )
            except psycopg.errors.NumericValueOutOfRange:
                raise codec.counter_overflow(counter, step) from None
            assert row is not None
            value: int = row[0]
            return value

        return await self._run(write, retry=False)
