"""PostgreSQL-specific behaviour: unreachable servers, lost connections, concurrent migrations."""

from __future__ import annotations

import asyncio
import socket
import time

import psycopg
import pytest

from sluice.errors import Unavailable, ValidationError
from sluice.state.postgres import MIGRATIONS, PostgresState
from tests.servers import POSTGRES_URL


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_refused_connection_gives_unavailable_within_the_bound() -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/test"

    async def body() -> None:
        store = PostgresState(url, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="unreachable for 1s"):
            await store.start()
        assert time.monotonic() - started < 4
        with pytest.raises(Unavailable):  # start failed: the store stays unusable
            await store.get("k", "k")
        await store.close()

    asyncio.run(body())


def test_a_refused_connection_without_a_minimum_pool_fails_on_first_use() -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/test"

    async def body() -> None:
        store = PostgresState(url, min_size=0, timeout=1.0)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await store.start()  # migrations need a connection, and there is none
        assert time.monotonic() - started < 4

    asyncio.run(body())


def _terminate(schema: str) -> int:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"sluice-state:{schema}",),
        ).fetchall()
    return len(rows)


@pytest.mark.postgres
def test_the_store_reconnects_after_its_connections_are_killed(
    pg_schema: tuple[str, str],
) -> None:
    base, schema = pg_schema

    async def body() -> None:
        store = PostgresState(base, schema=schema, min_size=2, max_size=2, timeout=5.0)
        await store.start()
        try:
            await store.put("function", "f", {"v": 1})
            assert _terminate(schema) >= 1
            record = await store.get("function", "f")
            assert record is not None and record.value == {"v": 1}
            assert _terminate(schema) >= 1
            assert (await store.put("function", "f", {"v": 2})).version == 2
            assert await store.incr("seq") == 1
        finally:
            await store.close()

    asyncio.run(body())


@pytest.mark.postgres
def test_migrations_are_applied_once_by_stores_starting_together(
    pg_schema: tuple[str, str],
) -> None:
    base, schema = pg_schema

    async def body() -> None:
        stores = [PostgresState(base, schema=schema, max_size=2) for _ in range(4)]
        await asyncio.gather(*(s.start() for s in stores))
        try:
            values = await asyncio.gather(*(s.incr("n") for s in stores))
            assert sorted(values) == [1, 2, 3, 4]
        finally:
            await asyncio.gather(*(s.close() for s in stores))
        again = PostgresState(base, schema=schema)
        await again.start()
        assert await again.incr("n") == 5
        await again.close()

    asyncio.run(body())
    with psycopg.connect(base) as conn:
        rows = conn.execute(
            f'SELECT version FROM "{schema}".schema_migrations ORDER BY version'
        ).fetchall()
    assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))


@pytest.mark.postgres
def test_schemas_keep_deployments_apart(pg_schema: tuple[str, str]) -> None:
    base, schema = pg_schema
    other_schema = f"{schema}_b"

    async def body() -> None:
        one = PostgresState(base, schema=schema)
        two = PostgresState(base, schema=other_schema)
        await one.start()
        await two.start()
        try:
            await one.put("function", "f", {"in": "one"})
            assert await two.get("function", "f") is None
            assert await two.incr("seq") == 1
            assert await one.incr("seq") == 1
        finally:
            await one.close()
            await two.close()

    try:
        asyncio.run(body())
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{other_schema}" CASCADE')


@pytest.mark.parametrize(
    "kwargs",
    [
        {"schema": "bad-name"},
        {"schema": 'x"; DROP TABLE y; --'},
        {"schema": ""},
        {"min_size": 3, "max_size": 2},
        {"timeout": 0},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PostgresState(POSTGRES_URL, **kwargs)  # type: ignore[arg-type]
