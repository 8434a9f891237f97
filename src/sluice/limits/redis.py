"""Leases in Redis, so a concurrency limit holds across every host that shares the server.

Each limiter key is one sorted set of lease tokens scored by expiry (ms, Redis server time: one
clock for all hosts, so clock skew between workers cannot stretch or shrink a lease). Every
operation is one Lua script that first drops expired leases; the set's key is its own hash tag
``{<namespace>:limit:<key>}``, so it works on Redis Cluster. The set expires with its last lease.
URLs as in `sluice.broker.redis_client` (``redis+cluster://`` for a cluster).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sluice.broker.redis_client import RedisClient, call, connect, describe, initialize

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function keep_until_last_lease()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if #last > 0 then redis.call('PEXPIREAT', KEYS[1], last[2]) end
end
"""

# ARGV: limit, ttl ms, token. Returns 1 when the lease was granted. Granting the same token again
# (a retry after a lost reply) is a no-op that reports success.
_ACQUIRE = (
    _NOW
    + """
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
keep_until_last_lease()
return 1
"""
)

# ARGV: token, ttl ms. Returns 1 when the lease was still held (and is extended).
_RENEW = (
    _NOW
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
keep_until_last_lease()
return 1
"""
)

_HELD = _NOW + "return redis.call('ZCARD', KEYS[1])\n"


class RedisLimiter:
    """`sluice.limits.Limiter` on Redis. Pass a URL (the limiter owns that connection; close it
    with `aclose`) or a redis-py asyncio client shared with other parts (left open)."""

    def __init__(
        self, url_or_client: str | RedisClient, namespace: str = "sluice", *, timeout: float = 5.0
    ) -> None:
        if isinstance(url_or_client, str):
            self._client, self._owned = connect(url_or_client, timeout=timeout), True
            self._where = describe(url_or_client)
        else:
            self._client, self._owned = url_or_client, False
            self._where = "the given client"
        self._namespace = namespace
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._held = self._client.register_script(_HELD)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    async def acquire(self, key: str, limit: int, ttl: float) -> str | None:
        token = uuid.uuid4().hex
        granted = await self._run(self._acquire, key, limit, _ms(ttl), token)
        return token if granted else None

    async def renew(self, key: str, token: str, ttl: float) -> bool:
        return bool(await self._run(self._renew, key, token, _ms(ttl)))

    async def release(self, key: str, token: str) -> None:
        await self._ensure_ready()
        name = self._key(key)
        await call(lambda: self._client.zrem(name, token), where=self._where)

    async def held(self, key: str) -> int:
        return int(await self._run(self._held, key))

    def _key(self, key: str) -> str:
        return f"{{{self._namespace}:limit:{key}}}"

    async def _ensure_ready(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                await initialize(self._client, where=self._where)
                self._ready = True

    async def _run(self, script: Any, key: str, *args: Any) -> Any:
        await self._ensure_ready()
        keys = [self._key(key)]
        return await call(lambda: script(keys=keys, args=list(args)), where=self._where)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
