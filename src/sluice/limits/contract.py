"""Concurrency leases: the one mechanism behind reserved concurrency and a mapping's
`max_concurrency`. A lease expires on its own if its holder dies without releasing it, so a
SIGKILLed worker cannot hold a slot forever. Backends: `local` (one process), `redis` (all hosts).
"""

from __future__ import annotations

from typing import Protocol


class Limiter(Protocol):
    async def acquire(self, key: str, limit: int, ttl: float) -> str | None:
        """A lease token if fewer than ``limit`` unexpired leases are held on ``key``, else None."""

    async def renew(self, key: str, token: str, ttl: float) -> bool:
        """Extend a held lease; False if it had already expired (the slot may be reused)."""

    async def release(self, key: str, token: str) -> None: ...

    async def held(self, key: str) -> int:
        """How many unexpired leases are held on ``key`` now."""
