"""Sluice, benchmarked like the peers: one queue drained by a no-op function through an event
source mapping, run by ``sluice worker`` on the Redis broker.

Each execution environment counts its messages with one ``counter_from_env()`` made on its first
batch, exactly as the peers' tasks do. The mapping's settings come from the environment the
harness gives the worker: ``BENCH_SLUICE_CONCURRENCY`` (max_concurrency, i.e. execution
environments; default 2) and ``BENCH_SLUICE_BATCH`` (batch size; default 100).
"""

from __future__ import annotations

import os
from typing import Any

from exec_counter import ExecutionCounter, counter_from_env

import sluice

QUEUE = "bench"
DEFAULT_CONCURRENCY = 2
DEFAULT_BATCH = 100

app = sluice.App("bench")
app.queue(QUEUE, visibility_timeout=120)

_counters: list[ExecutionCounter] = []


@app.consume(
    QUEUE,
    batch_size=int(os.environ.get("BENCH_SLUICE_BATCH", DEFAULT_BATCH)),
    max_concurrency=int(os.environ.get("BENCH_SLUICE_CONCURRENCY", DEFAULT_CONCURRENCY)),
)
def noop(event: dict[str, Any], context: Any) -> None:
    if not _counters:
        _counters.append(counter_from_env())
    counter = _counters[0]
    for _ in event["Records"]:
        counter.hit()
