"""One suite for every `Limiter` backend: in-process, Redis, and a three-node Redis Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from sluice.limits import Limiter, LocalLimiter
from sluice.limits.redis import RedisLimiter
from tests.redis_cluster import redis_cluster  # noqa: F401  (session fixture, used by name)
from tests.servers import require_redis

# peers(n): n limiters that share their leases, as n worker hosts would.
Peers = Callable[[int], AbstractAsyncContextManager[list[Limiter]]]

TTL = 0.3  # short leases keep the expiry tests fast


@pytest.fixture(params=["local", "redis", "redis-cluster"])
def peers(request: pytest.FixtureRequest) -> Peers:
    if request.param == "local":

        @asynccontextmanager
        async def local(n: int) -> AsyncIterator[list[Limiter]]:
            shared = LocalLimiter()
            yield [shared] * n

        return local

    if request.param == "redis":
        url = require_redis()
    else:
        url = request.getfixturevalue("redis_cluster").url
    namespace = f"test-limits-{uuid.uuid4().hex[:8]}"

    @asynccontextmanager
    async def remote(n: int) -> AsyncIterator[list[Limiter]]:
        limiters = [RedisLimiter(url, namespace) for _ in range(n)]
        try:
            yield list(limiters)
        finally:
            for limiter in limiters:
                await limiter.aclose()

    return remote


def test_limit_holds_under_200_concurrent_acquirers_on_several_hosts(peers: Peers) -> None:
    async def scenario() -> None:
        async with peers(4) as hosts:
            tokens = await asyncio.gather(*(hosts[i % 4].acquire("db", 7, 30) for i in range(200)))
            granted = [t for t in tokens if t is not None]
            assert len(granted) == 7
            assert len(set(granted)) == 7
            assert await hosts[1].held("db") == 7
            assert await hosts[2].acquire("db", 7, 30) is None
            # Other keys are independent.
            assert await hosts[3].acquire("other", 1, 30) is not None

    asyncio.run(scenario())


def test_expiry_frees_a_slot(peers: Peers) -> None:
    async def scenario() -> None:
        async with peers(2) as (a, b):
            assert await a.acquire("k", 1, TTL) is not None
            assert await b.acquire("k", 1, TTL) is None
            await asyncio.sleep(TTL + 0.1)
            assert await b.held("k") == 0
            assert await b.acquire("k", 1, TTL) is not None

    asyncio.run(scenario())


def test_renew_extends_a_held_lease_and_fails_once_expired(peers: Peers) -> None:
    async def scenario() -> None:
        async with peers(2) as (a, b):
            token = await a.acquire("k", 1, TTL)
            assert token is not None
            await asyncio.sleep(TTL / 2)
            assert await a.renew("k", token, 3 * TTL)
            await asyncio.sleep(TTL)  # past the first expiry, within the renewed one
            assert await b.held("k") == 1
            assert await b.acquire("k", 1, TTL) is None
            short = await a.acquire("short", 1, TTL)
            assert short is not None
            await asyncio.sleep(TTL + 0.1)
            assert not await a.renew("short", short, TTL)
            assert await b.acquire("short", 1, TTL) is not None
            assert not await a.renew("k", "not-a-token", TTL)

    asyncio.run(scenario())


def test_release_frees_the_slot_at_once(peers: Peers) -> None:
    async def scenario() -> None:
        async with peers(2) as (a, b):
            first = await a.acquire("k", 2, 30)
            second = await a.acquire("k", 2, 30)
            assert first is not None and second is not None
            assert await b.acquire("k", 2, 30) is None
            await a.release("k", first)
            assert await b.held("k") == 1
            assert await b.acquire("k", 2, 30) is not None
            await b.release("k", "unknown-token")  # not an error, changes nothing
            await b.release("k", first)  # releasing twice is harmless
            assert await a.held("k") == 2

    asyncio.run(scenario())


def test_held_counts_only_unexpired_leases(peers: Peers) -> None:
    async def scenario() -> None:
        async with peers(1) as (limiter,):
            assert await limiter.held("k") == 0
            assert await limiter.acquire("k", 5, TTL) is not None
            assert await limiter.acquire("k", 5, 30) is not None
            assert await limiter.held("k") == 2
            await asyncio.sleep(TTL + 0.1)
            assert await limiter.held("k") == 1

    asyncio.run(scenario())
