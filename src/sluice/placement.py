"""CPU placement of a serving process: its event loop on a CPU of its own, or shared.

Every request through a gateway passes its single event-loop thread. By default (``shared``) the
loop, the execution environments and the SQLite send process may all run on any CPU, and the
scheduler often runs a woken environment on the loop's CPU, where the loop then waits for it. With
``dedicated`` the loop thread keeps the first CPU this process may use, and the processes it
starts (the runtime's template, whose environments inherit its CPUs, and the send process) get
the others: on a 2-CPU machine the sync route served 15 % more requests
(`benchmarks/gateway_bench.py`). The price: functions share one CPU less. Linux only, and only
with at least two CPUs; otherwise ``dedicated`` changes nothing (with a warning).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass

from sluice.errors import ValidationError

log = logging.getLogger("sluice.platform")

SHARED, DEDICATED = "shared", "dedicated"
MODES = (SHARED, DEDICATED)


@dataclass(frozen=True, slots=True)
class Placement:
    """Which CPUs the event-loop thread keeps and which the processes it starts get."""

    loop: frozenset[int]
    others: frozenset[int]

    @classmethod
    def plan(cls, mode: str, cpus: Collection[int] | None = None) -> Placement | None:
        """The placement ``mode`` asks for on ``cpus`` (default: the CPUs this process could use
        when it first asked), or None when everything shares every CPU."""
        if mode not in MODES:
            raise ValidationError(f"cpu placement must be one of {MODES}, got {mode!r}")
        if mode == SHARED:
            return None
        available = sorted(_process_cpus() if cpus is None else cpus)
        if len(available) < 2:
            log.warning("cpu placement %r needs two CPUs or more; everything shares them", mode)
            return None
        return cls(frozenset(available[:1]), frozenset(available[1:]))

    def pin_loop(self) -> None:
        """Keep the calling thread (the event loop's) on its CPU. Threads it starts from now on
        inherit that CPU; those started before keep theirs."""
        os.sched_setaffinity(0, self.loop)


def place(pid: int, cpus: Collection[int] | None) -> None:
    """Run process ``pid`` (and what it forks from now on) on ``cpus``; None leaves it as it is.
    A process that already exited is left alone."""
    if cpus is not None:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(pid, cpus)


@functools.cache
def _process_cpus() -> frozenset[int]:
    """The CPUs this process may use, as first asked: asked again on a pinned loop thread, the
    answer would be that thread's one CPU."""
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return frozenset()
    return frozenset(os.sched_getaffinity(0))
