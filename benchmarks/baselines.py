"""Yardsticks no Python platform can beat on this machine, measured in the same run.

(a) a pipe round trip between two Python processes: the floor for a warm invoke, where
    the gateway hands an event to a running execution environment and reads the result;
(b) a fresh interpreter starting and importing a module: the floor for a cold start;
(c) ``redis-benchmark`` XADD with pipelining: the floor for a durable append to Redis.

    .venv/bin/python benchmarks/baselines.py [--rounds 10000] [--cold-runs 20]

writes ``benchmarks/results/baselines.{json,md}``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import redis
from exec_counter import DEFAULT_REDIS_URL
from harness import Distribution, Report, Result, bench_env, console
from redis.connection import parse_url

DEFAULT_COLD_MODULES: tuple[str, ...] = ("", "peers.lambda_handler", "sluice", "fastapi")
"""Modules whose import is timed; "" is the bare interpreter (``python -c pass``)."""


# -- (a) pipe round trip -----------------------------------------------------------------


def _echo() -> None:
    """Child side: copy stdin to stdout unbuffered until EOF."""
    while data := os.read(0, 65536):
        os.write(1, data)


def pipe_round_trip(
    rounds: int = 10_000, size: int = 64, *, warmup: int = 500, cpu: int | None = None
) -> Distribution:
    """Latency of ``size`` bytes to a child process and back over two pipes, in µs.

    With ``cpu`` both processes are pinned to that one core: the wake-up then never
    crosses cores, which makes the figure far less sensitive to other load on the machine.
    """
    affinity = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # the child inherits it
    try:
        return _round_trips(rounds, size, warmup)
    finally:
        os.sched_setaffinity(0, affinity)


def _round_trips(rounds: int, size: int, warmup: int) -> Distribution:
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "echo"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        return time_round_trips(child.stdin.fileno(), child.stdout.fileno(), rounds, size, warmup)
    finally:
        child.stdin.close()
        child.wait(timeout=10)
        child.stdout.close()


def time_round_trips(out_fd: int, in_fd: int, rounds: int, size: int, warmup: int) -> Distribution:
    """Latency in µs of ``size`` bytes written to ``out_fd`` and echoed back on ``in_fd``."""
    message = b"x" * size
    samples: list[float] = []
    for i in range(warmup + rounds):
        start = time.perf_counter_ns()
        os.write(out_fd, message)
        received = 0
        while received < size:
            chunk = os.read(in_fd, size - received)
            if not chunk:
                raise RuntimeError("the echo child closed its end")
            received += len(chunk)
        if i >= warmup:
            samples.append((time.perf_counter_ns() - start) / 1e3)
    return Distribution.of(samples)


# -- (b) cold start ----------------------------------------------------------------------


def cold_start(module: str, runs: int = 20, *, warmup: int = 2) -> Distribution:
    """Wall time for a fresh interpreter to start, import ``module`` and exit, in ms."""
    if module:
        code = ["-c", "import importlib, sys; importlib.import_module(sys.argv[1])", module]
    else:
        code = ["-c", "pass"]
    argv = [sys.executable, *code]
    env = bench_env()
    samples: list[float] = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
        if i >= warmup:
            samples.append((time.perf_counter() - start) * 1e3)
    return Distribution.of(samples)


# -- (c) redis-benchmark XADD ------------------------------------------------------------


@dataclass(frozen=True)
class RedisBenchmark:
    requests_per_s: float
    p50_ms: float
    p99_ms: float


def parse_redis_benchmark_csv(output: str) -> RedisBenchmark:
    rows = list(csv.DictReader(StringIO(output)))
    if len(rows) != 1:
        raise ValueError(f"expected one redis-benchmark result row, got:\n{output}")
    row = rows[0]
    return RedisBenchmark(
        float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"])
    )


def redis_benchmark_xadd(
    url: str = DEFAULT_REDIS_URL,
    *,
    requests: int = 200_000,
    pipeline: int = 100,
    clients: int = 50,
    payload_bytes: int = 64,
) -> RedisBenchmark:
    """``redis-benchmark`` running XADD into one stream in the benchmark's db."""
    kwargs = parse_url(url)
    host, port, db = kwargs.get("host", "127.0.0.1"), kwargs.get("port", 6379), kwargs.get("db")
    if not db:
        raise ValueError(f"give the benchmark its own Redis db (not 0): {url}")
    key = "bench:xadd"
    argv = ["redis-benchmark", "-h", str(host), "-p", str(port), "--dbnum", str(db)]
    argv += ["-n", str(requests), "-P", str(pipeline), "-c", str(clients), "--csv"]
    argv += ["XADD", key, "*", "payload", "x" * payload_bytes]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300)
    finally:
        with redis.Redis.from_url(url) as client:
            client.delete(key)
    return parse_redis_benchmark_csv(done.stdout)


# -- report ------------------------------------------------------------------------------


def add_baselines(
    report: Report,
    *,
    rounds: int,
    cold_runs: int,
    cold_modules: Sequence[str],
    redis_url: str,
    xadd_requests: int,
) -> None:
    out = console()
    for cpu in (None, 0):
        out.log(f"pipe round trip x{rounds}" + ("" if cpu is None else f", pinned to cpu {cpu}"))
        rtt = pipe_round_trip(rounds, cpu=cpu)
        report.add(
            Result(
                "warm invoke floor: pipe round trip",
                "two Python processes, os.pipe, 64 B each way"
                + ("" if cpu is None else f", both pinned to cpu {cpu}"),
                "p50 µs",
                rtt.p50,
                extra={"p99 µs": round(rtt.p99, 1), "mean µs": round(rtt.mean, 1), "n": rtt.n},
            )
        )
    for module in cold_modules:
        out.log(f"cold start {module or 'bare interpreter'} x{cold_runs}")
        dist = cold_start(module, cold_runs)
        report.add(
            Result(
                "cold start floor: new interpreter + import",
                f"python -c 'import {module}'" if module else "python -c pass",
                "p50 ms",
                dist.p50,
                extra={"p99 ms": round(dist.p99, 1), "n": dist.n},
            )
        )
    out.log(f"redis-benchmark XADD x{xadd_requests}")
    xadd = redis_benchmark_xadd(redis_url, requests=xadd_requests)
    report.add(
        Result(
            "durable append floor: redis-benchmark",
            "redis-benchmark XADD -P 100 -c 50",
            "msgs/s",
            xadd.requests_per_s,
            extra={"p50 ms": xadd.p50_ms, "p99 ms": xadd.p99_ms, "n": xadd_requests},
        )
    )


def main(argv: Sequence[str]) -> None:
    if list(argv) == ["echo"]:
        _echo()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10_000)
    parser.add_argument("--cold-runs", type=int, default=20)
    parser.add_argument("--cold-modules", nargs="*", default=list(DEFAULT_COLD_MODULES))
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--xadd-requests", type=int, default=200_000)
    args = parser.parse_args(argv)
    report = Report("baselines")
    add_baselines(
        report,
        rounds=args.rounds,
        cold_runs=args.cold_runs,
        cold_modules=args.cold_modules,
        redis_url=args.redis_url,
        xadd_requests=args.xadd_requests,
    )
    for path in report.write():
        console().log(f"wrote {path}")
    print(report.markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
