"""In-process leases, for the embedded platform where all dispatching happens in one process."""

from __future__ import annotations

import time
import uuid


class LocalLimiter:
    """Leases held in this process only."""

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
