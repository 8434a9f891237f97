"""Concurrency leases that hold across every process using the same backend."""

from sluice.limits.contract import Limiter
from sluice.limits.local import LocalLimiter

__all__ = ["Limiter", "LocalLimiter", "RedisLimiter"]


def __getattr__(name: str) -> object:
    # The Redis backend imports redis-py; load it only when asked for.
    if name == "RedisLimiter":
        from sluice.limits.redis import RedisLimiter

        return RedisLimiter
    raise AttributeError(name)
