"""The peers' ways of sending n messages, as the send benchmarks run them side by side."""

from __future__ import annotations

from collections.abc import Callable

from peers import celery_app, dramatiq_app

# (name, send n messages, settings shown in the results table)
SendCase = tuple[str, Callable[[int], None], dict[str, int]]
BASELINE = "celery .delay()"


def send_cases(redis_url: str) -> list[SendCase]:
    celery = celery_app.make_peer(celery_app.CeleryConfig(redis_url))
    dramatiq = dramatiq_app.make_peer(redis_url)
    return [
        (BASELINE, lambda k: celery_app.enqueue_delay(celery, k), {}),
        (
            "celery apply_async in Producer.batch()",
            lambda k: celery_app.enqueue_batch(celery, k),
            {"batch": celery_app.BATCH_SIZE},
        ),
        ("dramatiq .send()", lambda k: dramatiq_app.enqueue_send(dramatiq, k), {}),
    ]
