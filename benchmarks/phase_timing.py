"""Imported into a `sluice worker` by `drain_phases.py`: times each phase of a mapping's batches.

Wraps the SQLite broker's receive and delete, the runtime's invoke and the writer's groups with
timers, and writes the totals as JSON to ``$SLUICE_PHASES_OUT`` every 0.2 s. Receives and
deletes of the app's internal async-invoke queues (idle long polls) are counted apart.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections import defaultdict
from typing import Any

from sluice.broker import groupcommit
from sluice.broker.sqlite import SQLiteBroker
from sluice.runtime.pool import Runtime

totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # name -> [count, seconds]


def _add(name: str, seconds: float) -> None:
    entry = totals[name]
    entry[0] += 1
    entry[1] += seconds


def _timed(cls: type, method: str, by_queue: bool) -> None:
    original = getattr(cls, method)

    @functools.wraps(original)
    async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(self, *args, **kwargs)
        finally:
            internal = by_queue and str(args[0]).startswith("_")
            _add(
                f"{method}{' (async-invoke queues)' if internal else ''}",
                time.perf_counter() - started,
            )

    setattr(cls, method, timed)


def _timed_groups() -> None:
    original = groupcommit.commit_group

    def timed(conn: Any, batch: list[Any]) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(conn, batch)
        finally:
            _add("writer group (wall)", time.perf_counter() - started)
            _add("writer group (CPU)", time.thread_time() - cpu)

    groupcommit.commit_group = timed


def _dump(path: str) -> None:
    while True:
        time.sleep(0.2)
        snapshot = {
            k: {"n": int(n), "mean ms": s / n * 1e3 if n else 0.0} for k, (n, s) in totals.items()
        }
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(snapshot, f)
        os.replace(tmp, path)


_timed(SQLiteBroker, "receive", by_queue=True)
_timed(SQLiteBroker, "delete", by_queue=True)
_timed(Runtime, "invoke", by_queue=False)
_timed_groups()
threading.Thread(target=_dump, args=(os.environ["SLUICE_PHASES_OUT"],), daemon=True).start()
