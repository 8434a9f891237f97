"""Fault injection under load (slow: `make faults`). Each scenario sends
$SLUICE_FAULTS_MESSAGES messages (100,000 by default) while injecting one fault, and checks that
every accepted message was processed or dead-lettered, that every fault was injected as many
times as planned, and that the platform answered only what it should have.

The full-size figures are written by ``benchmarks/faults.py`` (same scenarios) to
benchmarks/results/faults.{json,md}."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from faults import (
    Ledger,
    Outcome,
    messages_per_run,
    scenario_disk,
    scenario_gateway,
    scenario_postgres,
    scenario_redis,
    scenario_workers,
)
from tests.servers import require_postgres

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture
def ledger() -> Ledger:
    require_postgres()
    return Ledger()


@pytest.fixture
def redis_server() -> None:
    """The suite starts its own Redis (it kills it): the binary must be installed."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (the suite starts a dedicated instance)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def no_loss(o: Outcome, injections: int) -> None:
    assert o.injections == injections, o
    assert o.notes.get("drained") is not False, f"the queue did not drain: {o}"
    assert o.accepted > 0, o
    assert o.lost == 0, o
    assert o.processed + o.in_dlq >= o.accepted, o


def statuses(o: Outcome) -> dict[int, int]:
    return {int(k): v for k, v in o.notes["statuses"].items()}


def test_workers_sigkilled_50_times(ledger: Ledger, redis_server: None) -> None:
    o = scenario_workers(ledger, messages_per_run(), kills=50)
    no_loss(o, 50)
    assert o.accepted == o.messages  # every send returned: Redis was up throughout
    # A killed worker's execution environments go with it.
    assert o.notes["orphaned_processes"] == 0, o


def test_gateway_sigkilled_10_times(ledger: Ledger, redis_server: None) -> None:
    o = scenario_gateway(ledger, messages_per_run(), kills=10)
    no_loss(o, 10)
    assert set(statuses(o)) == {202}, o  # requests cut by a kill fail; none is answered wrongly


def test_redis_restarted_3_times(ledger: Ledger, redis_server: None) -> None:
    o = scenario_redis(ledger, messages_per_run(), restarts=3)
    no_loss(o, 3)
    assert set(statuses(o)) <= {202, 503}, o  # Redis down is 503 (retry), never a 500


def test_postgres_refusing_for_10_s(ledger: Ledger) -> None:
    o = scenario_postgres(ledger, messages_per_run(), outage=10.0)
    no_loss(o, 1)
    assert o.in_dlq == 0, o  # 10 s of failures is far from max_receive_count deliveries
    assert o.processed == o.accepted + o.stored_unacknowledged, o


def test_disk_full_answers_503_then_recovers(ledger: Ledger) -> None:
    o = scenario_disk(ledger, messages_per_run(), full_for=5.0)
    if "skipped" in o.notes:
        pytest.skip(o.notes["skipped"])
    no_loss(o, 1)
    notes: dict[str, Any] = o.notes
    assert notes["seconds_full_to_first_503"] is not None, o  # SQLite ran out of space
    # A 202 while the disk was full is a message SQLite did store (lost == 0 counts the probes);
    # a 503 is one it did not: never a false refusal, never a 500 or a dropped connection.
    assert notes["probes_answered_503_yet_stored"] == 0, o
    for phase in ("full_before_first_503", "full_after_first_503", "freed_before_first_202"):
        assert set(notes[phase]) <= {"202", "503"}, o
    assert notes["seconds_freed_to_first_202"] is not None, o
    assert set(statuses(o)) <= {202, 503}, o
