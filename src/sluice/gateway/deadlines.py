"""Integration timeouts for many concurrent calls, at the cost of a set insertion each.

`asyncio.timeout()` arms and cancels a timer per call, which is a measurable share of a sync
request's cost in the gateway. Integration timeouts are coarse (API Gateway's default is 29 s),
so calls are grouped into slots of ``resolution`` seconds and one timer, running only while
something waits, cancels every call whose slot has passed: a call ends at most one slot after
its deadline, never before it.
"""

from __future__ import annotations

import asyncio
import math


class Deadline:
    __slots__ = ("expired", "slot", "task")

    def __init__(self, task: asyncio.Task[object], slot: int) -> None:
        self.task = task
        self.slot = slot
        self.expired = False

    def timed_out(self) -> bool:
        """After a CancelledError: True when it was this deadline (and nothing else) that
        cancelled the task; the cancellation is then consumed."""
        return self.expired and self.task.uncancel() == 0


class Deadlines:
    """Watches the tasks of one event loop; `start` when a call begins, `finish` when it ends."""

    def __init__(self, resolution: float = 0.05) -> None:
        self._resolution = resolution
        self._slots: dict[int, set[Deadline]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self, timeout: float) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.start() must be called from a task")
        loop = task.get_loop()
        slot = math.ceil((loop.time() + timeout) / self._resolution)
        deadline = Deadline(task, slot)
        waiting = self._slots.get(slot)
        if waiting is None:
            self._slots[slot] = {deadline}
        else:
            waiting.add(deadline)
        if self._timer is None:
            self._timer = loop.call_later(self._resolution, self._tick, loop)
        return deadline

    def finish(self, deadline: Deadline) -> None:
        waiting = self._slots.get(deadline.slot)
        if waiting is not None:
            waiting.discard(deadline)
            if not waiting:
                del self._slots[deadline.slot]

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time() / self._resolution
        for slot in [slot for slot in self._slots if slot <= now]:
            for deadline in self._slots.pop(slot):
                deadline.expired = True
                deadline.task.cancel()
        self._timer = loop.call_later(self._resolution, self._tick, loop) if self._slots else None
