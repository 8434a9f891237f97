"""Exact, cheap counting of task executions across worker processes.

Every benchmarked system (Celery, Dramatiq, Sluice) runs the same no-op task body:
``counter.hit()``. A per-task ``INCR`` would add one Redis round trip to every task and
make a no-op task measure the counter rather than the queue. Instead each worker process
counts locally and a background thread flushes the count every few milliseconds in one
pipeline, together with the earliest and latest execution time seen in that process.

The drain time of a run is ``last - first`` over all processes: worker boot is excluded
the same way for every system, and the flush delay does not bias it because the times are
taken inside the task, not at flush.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import redis

REDIS_URL_ENV = "BENCH_REDIS_URL"
"""Environment variable that tells worker processes which Redis (and db) to use."""

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"


@dataclass(frozen=True)
class CounterSnapshot:
    count: int
    first: float | None
    """Earliest execution, wall-clock seconds (``time.time()``) across all processes."""
    last: float | None

    @property
    def span(self) -> float:
        if self.first is None or self.last is None:
            return 0.0
        return self.last - self.first


class ExecutionCounter:
    """Counts ``hit()`` calls from any number of processes into a few Redis keys.

    Safe to create in a parent before ``fork``: the connection and flusher thread are
    created lazily in whichever process first calls ``hit()``.
    """

    def __init__(self, redis_url: str, *, key: str = "bench:exec", flush_every: float = 0.005):
        self._url = redis_url
        self._count_key = f"{key}:count"
        self._times_key = f"{key}:times"
        self._flush_every = flush_every
        self._pid = -1
        self._lock = threading.Lock()
        self._pending = 0
        self._first = 0.0
        self._last = 0.0
        self._client: redis.Redis | None = None

    @property
    def url(self) -> str:
        return self._url

    # -- worker side -------------------------------------------------------------------

    def hit(self) -> None:
        now = time.time()
        if self._pid != os.getpid():
            self._start_in_this_process()
        with self._lock:
            if not self._pending:
                self._first = now
            self._pending += 1
            self._last = now

    def _start_in_this_process(self) -> None:
        # After fork the parent's lock, client and thread are not ours: start afresh.
        self._lock = threading.Lock()
        self._pending = 0
        self._client = redis.Redis.from_url(self._url)
        self._pid = os.getpid()
        threading.Thread(target=self._flush_loop, name="exec-counter", daemon=True).start()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(self._flush_every)
            with self._lock:
                pending, first, last = self._pending, self._first, self._last
                self._pending = 0
            if pending:
                self._flush(pending, first, last)

    def _flush(self, pending: int, first: float, last: float) -> None:
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        pipe.incrby(self._count_key, pending)
        # One sorted set, two members: LT keeps the minimum, GT the maximum (both still
        # add the member when it is missing).
        pipe.zadd(self._times_key, {"first": first}, lt=True)
        pipe.zadd(self._times_key, {"last": last}, gt=True)
        pipe.execute()

    # -- harness side ------------------------------------------------------------------

    def reset(self) -> None:
        with redis.Redis.from_url(self._url) as client:
            client.delete(self._count_key, self._times_key)

    def snapshot(self) -> CounterSnapshot:
        with redis.Redis.from_url(self._url) as client:
            pipe = client.pipeline(transaction=False)
            pipe.get(self._count_key)
            pipe.zscore(self._times_key, "first")
            pipe.zscore(self._times_key, "last")
            count, first, last = pipe.execute()
        return CounterSnapshot(int(count or 0), first, last)


def counter_from_env() -> ExecutionCounter:
    """The counter a worker process should use, as configured by the harness."""
    return ExecutionCounter(os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL))
