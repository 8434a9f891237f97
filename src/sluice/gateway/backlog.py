"""Back-pressure for queue targets: refuse sends (429) while a queue holds its max_backlog."""

from __future__ import annotations

import asyncio

from sluice.broker.contract import Broker
from sluice.errors import QueueFull


class BacklogGuard:
    """Refuses sends while a queue holds ``max_backlog`` messages. The broker's count is re-read
    at most every ``interval`` seconds (by one request at a time); sends made since are added,
    so a burst cannot overshoot by more than what one refresh interval lets through."""

    def __init__(self, broker: Broker, queue: str, limit: int, interval: float, wait: float):
        self.broker = broker
        self.queue = queue
        self.limit = limit
        self.interval = interval
        self.wait = wait
        self._count = 0
        self._read_at = -1e9
        self._refresh: asyncio.Task[None] | None = None

    async def check(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._read_at > self.interval and self._refresh is None:
            self._refresh = asyncio.get_running_loop().create_task(self._read(now))
        if self._refresh is not None and (self._read_at < 0 or self._count >= self.limit):
            # Accept on a slightly stale count, but never refuse on one: wait for the fresh one.
            await asyncio.shield(self._refresh)
        if self._count >= self.limit:
            raise QueueFull(
                f"queue {self.queue!r} holds {self._count} messages (max_backlog {self.limit})",
                retry_after=self.wait,
            )

    def sent(self) -> None:
        self._count += 1

    async def _read(self, now: float) -> None:
        try:
            self._count = (await self.broker.stats(self.queue)).total
            self._read_at = now
        finally:
            self._refresh = None
