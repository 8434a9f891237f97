"""Integration timeouts for many concurrent calls, at the cost of a set insertion each.

`asyncio.timeout()` arms and cancels a timer per call, which is a measurable share of a sync
request's cost in the gateway. Integration timeouts are coarse (API Gateway's default is 29 s),
so calls are grouped into slots of ``resolution`` seconds and one timer, running only while
something waits, expires every call whose slot has passed: a call expires at most one slot after
its deadline, never before it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from time import monotonic

log = logging.getLogger("sluice.gateway")


class Deadline:
    __slots__ = ("expire", "slot")

    def __init__(self, expire: Callable[[], None], slot: int) -> None:
        self.expire = expire
        self.slot = slot


class Deadlines:
    """Watches the calls of one event loop; `start` when a call begins, `finish` when it ends.
    A call not finished by its deadline has its ``expire`` called (once)."""

    def __init__(self, resolution: float = 0.05) -> None:
        self._resolution = resolution
        self._slots: dict[int, set[Deadline]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self, timeout: float, expire: Callable[[], None]) -> Deadline:
        # time.monotonic, not the loop's clock: while the timer runs (always, under load) no
        # asyncio.get_running_loop() is needed, which on CPython 3.11 is a getpid() system call.
        slot = math.ceil((monotonic() + timeout) / self._resolution)
        deadline = Deadline(expire, slot)
        waiting = self._slots.get(slot)
        if waiting is None:
            self._slots[slot] = {deadline}
        else:
            waiting.add(deadline)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._resolution, self._tick, loop)
        return deadline

    def finish(self, deadline: Deadline) -> None:
        waiting = self._slots.get(deadline.slot)
        if waiting is not None:
            waiting.discard(deadline)
            if not waiting:
                del self._slots[deadline.slot]

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = monotonic() / self._resolution
        for slot in [slot for slot in self._slots if slot <= now]:
            for deadline in self._slots.pop(slot):
                try:
                    deadline.expire()
                except Exception:
                    log.exception("a deadline's expiry failed")
        self._timer = loop.call_later(self._resolution, self._tick, loop) if self._slots else None
