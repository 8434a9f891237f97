"""Dramatiq peer: one no-op actor on the local Redis broker, no result backend.

Harness side: :func:`make_peer`, :func:`enqueue_send` and :class:`DramatiqDrain` (a
``harness.DrainTarget``). Worker side: ``python -m dramatiq peers.dramatiq_app:setup_worker
--processes P --threads T --queues bench``; Dramatiq calls :func:`setup_worker` in each
worker process, which reads the Redis URL from ``BENCH_REDIS_URL``.

Dramatiq has no batch enqueue: ``group(...).run()`` and ``pipeline`` send one message at a
time (one Lua script call each), so only ``.send()`` is measured.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from exec_counter import DEFAULT_REDIS_URL, REDIS_URL_ENV, ExecutionCounter

QUEUE = "bench"
ACTOR_NAME = "bench_noop"
NAMESPACE = "dramatiq"
DEFAULT_THREADS = 8
"""Dramatiq's own default worker threads per process."""


@dataclass(frozen=True)
class DramatiqPeer:
    broker: RedisBroker
    noop: dramatiq.Actor


def make_peer(redis_url: str = DEFAULT_REDIS_URL) -> DramatiqPeer:
    broker = RedisBroker(url=redis_url, namespace=NAMESPACE)
    counter = ExecutionCounter(redis_url)

    def noop() -> None:
        counter.hit()

    actor = dramatiq.actor(noop, broker=broker, actor_name=ACTOR_NAME, queue_name=QUEUE)
    return DramatiqPeer(broker, actor)


def enqueue_send(peer: DramatiqPeer, n: int) -> None:
    """``.send()`` in a loop: one Redis script call per message."""
    for _ in range(n):
        peer.noop.send()


def setup_worker() -> None:
    """Called by ``dramatiq`` in each worker process; its CLI needs a process-wide broker."""
    peer = make_peer(os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL))
    dramatiq.set_broker(peer.broker)


class DramatiqDrain:
    """``harness.DrainTarget`` for ``dramatiq`` worker processes."""

    def __init__(self, redis_url: str = DEFAULT_REDIS_URL, *, threads: int = 1) -> None:
        self.redis_url = redis_url
        self.threads = threads
        self.peer = make_peer(redis_url)

    def settings(self) -> dict[str, str | int]:
        return {"threads": self.threads, "prefetch": "default (2 x threads)"}

    def prefill(self, n: int) -> None:
        enqueue_send(self.peer, n)

    def worker_argv(self, processes: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dramatiq",
            "peers.dramatiq_app:setup_worker",
            f"--processes={processes}",
            f"--threads={self.threads}",
            f"--queues={QUEUE}",
        ]

    def depth(self) -> int:
        # Message bodies stay in the ".msgs" hash until acknowledged, queued or not.
        with redis.Redis.from_url(self.redis_url) as client:
            return int(client.hlen(f"{NAMESPACE}:{QUEUE}.msgs"))
