"""The app the core benchmark runs: a queue drained by a no-op function through an event source
mapping (batch size 100), and two functions invoked directly (warm and cold starts).

The drain handler counts each message with one ``counter_from_env()`` made on its first batch,
as the peers' tasks count theirs. ``BENCH_CORE_CONCURRENCY`` (default 2) is the mapping's
max_concurrency: the number of execution environments that run batches.
"""

from __future__ import annotations

import os
import time
from typing import Any

from exec_counter import ExecutionCounter, counter_from_env

import sluice

QUEUE = "core"
BATCH_SIZE = 100
VISIBILITY_TIMEOUT = 120.0

app = sluice.App("core-bench")
app.queue(QUEUE, visibility_timeout=VISIBILITY_TIMEOUT)

_counter: list[ExecutionCounter] = []  # made in the environment, on its first batch


@app.consume(
    QUEUE,
    batch_size=BATCH_SIZE,
    max_concurrency=int(os.environ.get("BENCH_CORE_CONCURRENCY", "2")),
)
def drain(event: dict[str, Any], context: Any) -> None:
    if not _counter:
        _counter.append(counter_from_env())
    hit = _counter[0].hit
    for _ in event["Records"]:
        hit()


@app.function
def noop(event: Any, context: Any) -> None:
    return None


@app.function
def entered(event: Any, context: Any) -> float:
    """When the handler began, on the clock every process shares."""
    return time.monotonic()
