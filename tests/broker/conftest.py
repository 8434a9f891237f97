"""Fixtures for the broker contract suite: one event loop per test, an injectable clock, and a
`broker` fixture parametrized over every backend.

`run` and `Clock` are meant for other suites too: ``run(coro)`` runs a coroutine to completion on
the test's one event loop (no pytest-asyncio needed), so objects bound to that loop (connections,
events) survive between calls.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sluice.broker.contract import Broker
from sluice.broker.groupcommit import GroupCommitWriter
from sluice.broker.sqlite import SQLiteBroker
from tests.redis_cluster import RedisServer
from tests.servers import require_redis

T = TypeVar("T")
Run = Callable[[Awaitable[T]], T]


class Clock:
    """Wall-clock time plus an offset the test moves forward: real waits (long polls, 1 s
    visibility timeouts) and jumps of minutes (dedup window, retention) both work."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def run() -> Iterator[Run[Any]]:
    with asyncio.Runner() as runner:
        yield runner.run


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _redis_broker(clock: Clock) -> tuple[Broker, Callable[[], None]]:
    try:
        from sluice.broker.redis import RedisBroker
    except ModuleNotFoundError as error:
        if error.name != "sluice.broker.redis":
            raise
        pytest.skip("redis backend not built yet")
    import redis

    url = require_redis()
    namespace = f"contract-{uuid.uuid4().hex}"

    def clean() -> None:
        with redis.Redis.from_url(url) as client:
            keys = list(client.scan_iter(match=f"*{namespace}*", count=1000))
            if keys:
                client.delete(*keys)

    return RedisBroker(url, namespace=namespace, clock=clock), clean


@pytest.fixture(
    params=["sqlite", "sqlite-send-process", pytest.param("redis", marks=pytest.mark.redis)]
)
def broker(
    request: pytest.FixtureRequest, run: Run[Any], clock: Clock, tmp_path: Path
) -> Iterator[Broker]:
    clean: Callable[[], None] | None = None
    if request.param.startswith("sqlite"):
        backend: Broker = SQLiteBroker(
            tmp_path / "broker.db", clock=clock, send_process=request.param.endswith("process")
        )
    else:
        backend, clean = _redis_broker(clock)
    run(backend.start())
    try:
        yield backend
    finally:
        run(backend.close())
        if clean is not None:
            clean()


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[GroupCommitWriter, Path, list[str]]]:
    """A group-commit writer on a fresh database with a table ``t (v TEXT)``, and the list of
    every statement it ran (so tests can count commits and see what shared a transaction)."""
    path = tmp_path / "g.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("CREATE TABLE t (v TEXT)")
    setup.close()
    statements: list[str] = []

    class Recording(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
            statements.append(sql)
            return super().execute(sql, *args)

    writer = GroupCommitWriter(
        lambda: sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, factory=Recording
        )
    )
    writer.start()
    yield writer, path, statements
    writer.stop()


def stored(path: Path) -> list[str]:
    """The values in table ``t``, sorted."""
    with sqlite3.connect(path) as conn:
        return sorted(v for (v,) in conn.execute("SELECT v FROM t"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own that fsyncs its append-only file on every write, to
    kill and start again (same directory and port)."""
    durable = RedisServer(
        tmp_path / "redis", options=["--appendonly", "yes", "--appendfsync", "always"]
    )
    durable.start()
    yield durable
    durable.stop()
