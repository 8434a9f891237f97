"""Connecting to Redis or Redis Cluster by URL, and turning an unreachable server into
`sluice.errors.Unavailable` after a short, bounded retry. Shared by the Redis broker and limiter.

URLs: ``redis://host:port/db`` (or ``rediss://``, ``unix://``) for one server;
``redis+cluster://host:port`` (or ``rediss+cluster://``) for a Redis Cluster, given any one node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sluice.errors import Unavailable

T = TypeVar("T")
RedisClient = Redis | RedisCluster

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# Failures that say "the server is not there right now", as opposed to a bad request.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # includes BusyLoadingError: a restarted server replaying AOF
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
    OSError,
)


def connect(url: str, *, timeout: float = 5.0) -> RedisClient:
    """A client for ``url``; no I/O happens until the first command. redis-py's own retries are
    off: `call` owns the retry policy, so the time to `Unavailable` is bounded in one place."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    scheme, sep, rest = url.partition("://")
    if scheme in _CLUSTER_SCHEMES:
        return RedisCluster.from_url(f"{_CLUSTER_SCHEMES[scheme]}{sep}{rest}", **options)
    return Redis.from_url(url, **options)


async def initialize(client: RedisClient, *, where: str) -> None:
    """Discover a cluster's nodes and slots before the client's first concurrent use: redis-py's
    asyncio `RedisCluster` can fail with AttributeError when many commands race its lazy
    initialization (seen with 200 concurrent first commands). A no-op for a single server."""
    if isinstance(client, RedisCluster):
        await call(client.initialize, where=where)


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in _CLUSTER_SCHEMES


async def call(
    operation: Callable[[], Awaitable[T]],
    *,
    where: str,
    attempts: int = 3,
    backoff: float = 0.05,
) -> T:
    """Run ``operation``, retrying transient failures ``attempts`` times in all with growing
    pauses (0.05 s, 0.2 s by default), then raise `Unavailable`. Callers make the operation
    idempotent when a lost reply would make a retry unsafe."""
    pause = backoff
    for attempt in range(attempts):
        try:
            return await operation()
        except TRANSIENT_ERRORS as exc:
            if attempt == attempts - 1:
                raise Unavailable(f"Redis at {where} cannot be reached: {exc}") from exc
        await asyncio.sleep(pause)
        pause *= 4
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def describe(url: str) -> str:
    """The URL without credentials, for error messages."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"
