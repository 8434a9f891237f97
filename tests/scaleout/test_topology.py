"""Issue 4 acceptance, small: 2 gateways + 3 workers + Redis (AOF, fsync always) + PostgreSQL on
one machine; messages POSTed through both gateways while workers are SIGKILLed (whole process
tree) and restarted. Nothing accepted is lost, duplicates are counted, and the mapping's global
`max_concurrency` holds across the workers. The full size is benchmarks/topology.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.scaleout.cluster import MAX_CONCURRENCY, TopologyConfig, run_topology
from tests.scaleout.topo_app import BATCH_SIZE
from tests.servers import require_postgres

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def test_kills_lose_nothing_and_keep_the_concurrency_cap(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:  # the run starts a redis-server of its own
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (CI=true: the tests need it)")
        pytest.skip("redis-server is not installed")
    postgres = require_postgres()
    config = TopologyConfig(messages=20_000, kills=5, kill_every=2.0, drain_timeout=60.0)
    result = run_topology(config, postgres, tmp_path)

    assert result.sent == config.messages
    assert result.accepted == config.messages, (result.statuses, result.errors)
    assert result.kills == config.kills
    assert result.lost == 0, result.to_dict()
    assert result.processed_keys + result.in_dlq == config.messages
    # One message id per accepted request: a gateway never stored a request twice.
    assert result.processed_ids == result.processed_keys
    # Only batches in flight on a killed worker come back: at most max_concurrency of them.
    assert result.duplicates <= result.kills * MAX_CONCURRENCY * BATCH_SIZE, result.to_dict()
    assert 1 <= result.peak_concurrency <= MAX_CONCURRENCY, result.to_dict()
