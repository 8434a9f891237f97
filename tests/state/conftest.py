"""The `state` fixture: one contract suite, run against every state backend.

There is no pytest-asyncio: a store belongs to the event loop it started in, so the fixture hands
out a backend that opens stores by URL and runs an async test body in a fresh loop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest

from sluice.state import StateStore, open_state
from tests.servers import require_postgres

T = TypeVar("T")


@dataclass(frozen=True)
class Backend:
    name: str
    url: str

    def open(self) -> StateStore:
        """A new, not yet started store on this test's database."""
        return open_state(self.url)

    def run(self, body: Callable[[StateStore], Awaitable[T]]) -> T:
        """Start a store, run `body(store)` in a fresh event loop, close the store."""

        async def main() -> T:
            store = self.open()
            await store.start()
            try:
                return await body(store)
            finally:
                await store.close()

        return asyncio.run(main())


def postgres_schema_url(base: str, schema: str) -> str:
    return f"{base}{'&' if '?' in base else '?'}schema={schema}"


def drop_schema(base: str, schema: str) -> None:
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """(server URL, unique schema name); the schema is dropped afterwards."""
    base = require_postgres()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    try:
        yield base, schema
    finally:
        drop_schema(base, schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path / 'state.db'}")
    base, schema = request.getfixturevalue("pg_schema")
    return Backend("postgres", postgres_schema_url(base, schema))
