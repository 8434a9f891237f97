"""Issue 4 acceptance, small: 2 gateways + 3 workers + Redis (AOF, fsync always) + PostgreSQL on
one machine; messages POSTed through both gateways while workers are SIGKILLed (whole process
tree) and restarted. Nothing accepted is lost, duplicates are counted, and the mapping's global
`max_concurrency` holds across the workers. The full size is benchmarks/topology.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scaleout.cluster import MAX_CONCURRENCY, TopologyConfig, run_topology
from tests.servers import require_postgres, require_redis

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


def test_kills_lose_nothing_and_keep_the_concurrency_cap(tmp_path: Path) -> None:
    require_redis()  # the run starts its own redis-server; this checks the tool set is there
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
    assert result.duplicates >= 0
    assert 1 <= result.peak_concurrency <= MAX_CONCURRENCY, result.to_dict()
