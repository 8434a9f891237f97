"""Concurrency leases: the one mechanism behind reserved concurrency and a mapping's
`max_concurrency`. A lease expires on its own if its holder dies without releasing it, so a
SIGKILLed worker cannot hold a slot forever. Backends: in-process (one host) and Redis (all hosts).
"""

from __future__ import annotations

import time
import uuid
from typing import Protocol


class Limiter(Protocol):
    async def acquire(self, key: str, limit: int, ttl: float) -> str | None:
        """A lease token if fewer than ``limit`` unexpired leases are held on ``key``, else None."""

    async def renew(self, key: str, token: str, ttl: float) -> bool:
        """Extend a held lease; False if it had already expired (the slot may be reused)."""

    async def release(self, key: str, token: str) -> None: ...

    async def held(self, key: str) -> int:
        """How many unexpired leases are held on ``key`` now."""


class LocalLimiter:
    """Leases for one process: the embedded platform, where all dispatching is in one process."""

    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock
        self._leases: dict[str, dict[str, float]] = {}

    def _live(self, key: str) -> dict[str, float]:
        now = self._clock()  # type: ignore[operator]
        leases = self._leases.setdefault(key, {})
        for token in [t for t, expiry in leases.items() if expiry <= now]:
            del leases[token]
        return leases

    async def acquire(self, key: str, limit: int, ttl: float) -> str | None:
        leases = self._live(key)
        if len(leases) >= limit:
            return None
        token = uuid.uuid4().hex
        leases[token] = self._clock() + ttl  # type: ignore[operator]
        return token

    async def renew(self, key: str, token: str, ttl: float) -> bool:
        leases = self._live(key)
        if token not in leases:
            return False
        leases[token] = self._clock() + ttl  # type: ignore[operator]
        return True

    async def release(self, key: str, token: str) -> None:
        self._leases.get(key, {}).pop(token, None)

    async def held(self, key: str) -> int:
        return len(self._live(key))
