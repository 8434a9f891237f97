"""Celery peer: one no-op task on the local Redis broker, no result backend.

Harness side: :func:`make_peer`, :func:`enqueue_delay`, :func:`enqueue_batch` and
:class:`CeleryDrain` (a ``harness.DrainTarget``). Worker side: ``python -m
peers.celery_app [--acks-late] [--prefetch-multiplier K] -c P`` runs a prefork worker; it
reads the Redis URL from ``BENCH_REDIS_URL``. This module does not import the harness, so
a worker's memory is Celery's own.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from celery import Celery, Task
from exec_counter import DEFAULT_REDIS_URL, REDIS_URL_ENV, ExecutionCounter

QUEUE = "bench"
TASK_NAME = "bench.noop"
BATCH_SIZE = 1000


@dataclass(frozen=True)
class CeleryConfig:
    redis_url: str = DEFAULT_REDIS_URL
    acks_late: bool = False
    """Celery's default: a message is acknowledged when a worker receives it, not after."""
    prefetch_multiplier: int = 4
    """Celery's default: each pool process may hold 4 unacknowledged messages."""

    def settings(self) -> dict[str, str | int | bool]:
        return {
            "pool": "prefork",
            "acks_late": self.acks_late,
            "prefetch_multiplier": self.prefetch_multiplier,
            "loglevel": "WARNING",
        }


@dataclass(frozen=True)
class CeleryPeer:
    app: Celery
    noop: Task


def make_peer(config: CeleryConfig) -> CeleryPeer:
    app = Celery("sluice-bench", broker=config.redis_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_acks_late=config.acks_late,
        worker_prefetch_multiplier=config.prefetch_multiplier,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    counter = ExecutionCounter(config.redis_url)

    @app.task(name=TASK_NAME, ignore_result=True)
    def noop() -> None:
        counter.hit()

    return CeleryPeer(app, noop)


def enqueue_delay(peer: CeleryPeer, n: int) -> None:
    """``.delay()`` in a loop: one Redis LPUSH round trip per message."""
    for _ in range(n):
        peer.noop.delay()


def enqueue_batch(peer: CeleryPeer, n: int, *, batch_size: int = BATCH_SIZE) -> None:
    """``apply_async`` inside kombu's ``Producer.batch()``: LPUSHes pipelined per batch."""
    with peer.app.producer_or_acquire() as producer, producer.batch(max_size=batch_size):
        for _ in range(n):
            peer.noop.apply_async(producer=producer)


class CeleryDrain:
    """``harness.DrainTarget`` for a Celery prefork worker."""

    def __init__(self, config: CeleryConfig) -> None:
        self.config = config
        self.peer = make_peer(config)

    def prefill(self, n: int) -> None:
        enqueue_batch(self.peer, n)

    def worker_argv(self, processes: int) -> list[str]:
        argv = [sys.executable, "-m", "peers.celery_app", "-c", str(processes)]
        argv += ["--prefetch-multiplier", str(self.config.prefetch_multiplier)]
        if self.config.acks_late:
            argv.append("--acks-late")
        return argv

    def depth(self) -> int:
        return queue_depth(self.config.redis_url)


def queue_depth(redis_url: str) -> int:
    """Messages queued plus received-but-unacknowledged, on kombu's Redis transport."""
    # The queue is a list; messages a worker holds unacknowledged wait in the "unacked"
    # hash until acked (restored from it if the worker dies).
    with redis.Redis.from_url(redis_url) as client:
        pipe = client.pipeline(transaction=False)
        pipe.llen(QUEUE)
        pipe.hlen("unacked")
        queued, unacked = pipe.execute()
    return int(queued) + int(unacked)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="Run the benchmark's Celery worker.")
    parser.add_argument("-c", "--concurrency", type=int, required=True)
    parser.add_argument("--prefetch-multiplier", type=int, default=4)
    parser.add_argument("--acks-late", action="store_true")
    args = parser.parse_args(argv)
    config = CeleryConfig(
        redis_url=os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL),
        acks_late=args.acks_late,
        prefetch_multiplier=args.prefetch_multiplier,
    )
    peer = make_peer(config)
    peer.app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={args.concurrency}",
            f"--queues={QUEUE}",
            "--loglevel=WARNING",
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
