from __future__ import annotations

import os
import subprocess

import pytest
import redis
from baselines import (
    cold_start,
    parse_redis_benchmark_csv,
    pipe_round_trip,
    redis_benchmark_xadd,
)
from tests.servers import require_redis

REDIS_URL = "redis://127.0.0.1:6379/13"

CSV = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
    '"p99_latency_ms","max_latency_ms"\n'
    '"XADD bench:xadd * payload x","512000.25","2.1","1.0","2.0","3.5","4.25","9.0"\n'
)


def test_pipe_round_trip_measures_every_round_and_restores_affinity() -> None:
    before = os.sched_getaffinity(0)
    free = pipe_round_trip(200, warmup=10)
    pinned = pipe_round_trip(200, warmup=10, cpu=min(before))
    assert os.sched_getaffinity(0) == before
    for dist in (free, pinned):
        assert dist.n == 200
        assert 0 < dist.min <= dist.p50 <= dist.p99 <= dist.max


def test_cold_start_times_a_real_import_and_fails_on_a_missing_module() -> None:
    dist = cold_start("peers.lambda_handler", runs=2, warmup=0)
    assert dist.n == 2 and dist.min > 1.0  # milliseconds: no interpreter starts in < 1 ms
    with pytest.raises(subprocess.CalledProcessError):
        cold_start("peers.no_such_module", runs=1, warmup=0)


def test_parse_redis_benchmark_csv() -> None:
    result = parse_redis_benchmark_csv(CSV)
    assert (result.requests_per_s, result.p50_ms, result.p99_ms) == (512000.25, 2.0, 4.25)
    with pytest.raises(ValueError, match="one redis-benchmark result row"):
        parse_redis_benchmark_csv(CSV.splitlines()[0] + "\n")


def test_redis_benchmark_xadd_runs_and_leaves_no_stream_behind() -> None:
    require_redis()
    result = redis_benchmark_xadd(REDIS_URL, requests=2000, clients=4)
    assert result.requests_per_s > 0
    with redis.Redis.from_url(REDIS_URL) as client:
        assert client.exists("bench:xadd") == 0


def test_redis_benchmark_xadd_refuses_db_zero() -> None:
    with pytest.raises(ValueError, match="not 0"):
        redis_benchmark_xadd("redis://127.0.0.1:6379/0", requests=10)
