"""The peers, end to end on the real local Redis, at a size that takes seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from exec_counter import ExecutionCounter
from harness import flush_redis_db, measure_drain, measure_enqueue
from peers import celery_app, dramatiq_app
from tests.servers import require_redis

# Not the main suite's db 15 (flushed by its tests) nor the benchmark's db 14.
REDIS_URL = "redis://127.0.0.1:6379/13"


@pytest.fixture
def redis_url() -> Iterator[str]:
    require_redis()
    flush_redis_db(REDIS_URL)
    yield REDIS_URL
    flush_redis_db(REDIS_URL)


def test_celery_enqueue_forms_each_queue_every_message(redis_url: str) -> None:
    peer = celery_app.make_peer(celery_app.CeleryConfig(redis_url))
    result = measure_enqueue("delay", lambda n: celery_app.enqueue_delay(peer, n), 30, warmup=5)
    assert result.value > 0 and result.extra["n"] == 30
    celery_app.enqueue_batch(peer, 45, batch_size=10)
    assert celery_app.queue_depth(redis_url) == 5 + 30 + 45


@pytest.mark.parametrize("acks_late", [False, True])
def test_celery_drain_executes_each_message_once(redis_url: str, acks_late: bool) -> None:
    target = celery_app.CeleryDrain(celery_app.CeleryConfig(redis_url, acks_late=acks_late))
    result = measure_drain(
        "celery", target, n=200, processes=1, counter=ExecutionCounter(redis_url), timeout=60
    )
    assert result.extra["executed"] == 200
    assert result.value > 0
    assert target.depth() == 0


def test_dramatiq_drain_executes_each_message_once(redis_url: str) -> None:
    target = dramatiq_app.DramatiqDrain(redis_url, threads=4)
    result = measure_drain(
        "dramatiq", target, n=200, processes=1, counter=ExecutionCounter(redis_url), timeout=60
    )
    assert result.extra["executed"] == 200
    assert result.settings["processes"] == 1
    assert target.depth() == 0


class _ShortCeleryDrain(celery_app.CeleryDrain):
    def prefill(self, n: int) -> None:
        super().prefill(n - 1)


def test_drain_refuses_to_run_when_the_queue_does_not_hold_n(redis_url: str) -> None:
    target = _ShortCeleryDrain(celery_app.CeleryConfig(redis_url))
    with pytest.raises(AssertionError, match="expected 10 queued messages, found 9"):
        measure_drain("short", target, n=10, processes=1, counter=ExecutionCounter(redis_url))
