from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from exec_counter import ExecutionCounter
from harness import (
    Distribution,
    ManagedProcess,
    ProcessFailed,
    Report,
    Result,
    WrkOptions,
    bench_env,
    flush_redis_db,
    free_port,
    parse_wrk,
    percentile,
    run_wrk,
    tree_memory,
)
from peers.http_servers import server_argv
from tests.servers import require_redis

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:8000/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.00us  101.00us   2.10ms   90.00%
    Req/Sec    19.10k     1.20k   20.50k    80.00%
  Latency Distribution
     50%  390.00us
     75%  450.00us
     90%  520.00us
     99%    1.25ms
  19012 requests in 1.00s, 2.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  19011.52
Transfer/sec:      2.10MB
"""


def test_percentile_interpolates_between_ranks() -> None:
    samples = [float(v) for v in range(1, 101)]
    assert percentile(samples, 50) == pytest.approx(50.5)
    assert percentile(samples, 99) == pytest.approx(99.01)
    assert percentile(samples, 0) == 1.0
    assert percentile(samples, 100) == 100.0
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize(("samples", "q"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_rejects_bad_input(samples: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(samples, q)


def test_distribution_summarises_and_scales() -> None:
    dist = Distribution.of([0.003, 0.001, 0.002])
    assert (dist.n, dist.min, dist.max, dist.p50) == (3, 0.001, 0.003, 0.002)
    assert dist.scaled(1e3).p50 == pytest.approx(2.0)


def test_parse_wrk_reads_rate_latencies_and_errors() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.requests_per_s == pytest.approx(19011.52)
    assert result.p50_ms == pytest.approx(0.39)
    assert result.p99_ms == pytest.approx(1.25)
    assert result.requests == 19012
    assert result.errors == 2 + 3 + 7


def test_parse_wrk_converts_seconds_and_rejects_foreign_text() -> None:
    slow = WRK_OUTPUT.replace("1.25ms", "2.50s").replace("390.00us", "1.50s")
    result = parse_wrk(slow)
    assert (result.p50_ms, result.p99_ms) == (pytest.approx(1500.0), pytest.approx(2500.0))
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def test_report_ratios_use_the_marked_baseline_and_write_both_files(tmp_path: Path) -> None:
    report = Report("unit", results_dir=tmp_path)
    report.add(Result("g", "peer", "msgs/s", 100.0))
    report.add(Result("g", "sluice", "msgs/s", 400.0, baseline=True))
    report.add(Result("g", "other unit", "p50 ms", 3.0))
    report.add(Result("h", "alone", "req/s", 5.0, extra={"p99 ms": 1.5}))
    assert report.ratios() == [0.25, 1.0, None, 1.0]

    json_path, md_path = report.write()
    data = json.loads(json_path.read_text())
    assert [r["ratio"] for r in data["results"]] == [0.25, 1.0, None, 1.0]
    markdown = md_path.read_text()
    assert "| sluice (baseline) | 400 msgs/s | 1.00 |" in markdown
    assert "| peer | 100 msgs/s | 0.25 |" in markdown
    assert "p99 ms=1.5" in markdown


def test_managed_process_reports_an_early_exit_with_its_output() -> None:
    argv = [sys.executable, "-c", "print('boom'); raise SystemExit(3)"]
    proc = ManagedProcess("exits", argv, port=free_port())
    with pytest.raises(ProcessFailed, match=r"exited with 3:\nboom"):
        proc.start(timeout=10)
    proc.stop()


def test_managed_process_stop_reaches_grandchildren() -> None:
    code = (
        "import subprocess, sys, time;"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "print(c.pid, flush=True); time.sleep(60)"
    )
    proc = ManagedProcess("tree", [sys.executable, "-c", code]).start()
    deadline = time.monotonic() + 10
    while not proc.log_tail().strip():
        assert time.monotonic() < deadline, "child never reported its grandchild"
        time.sleep(0.02)
    grandchild = psutil.Process(int(proc.log_tail().strip()))
    memory = tree_memory(proc.pid)
    assert memory.processes == 2
    assert memory.uss_mb > 0 and memory.rss_mb >= memory.uss_mb
    proc.stop(timeout=5)
    grandchild.wait(timeout=5)
    assert not grandchild.is_running()


def test_run_wrk_against_a_real_server() -> None:
    port = free_port()
    argv = server_argv("httptools-asyncio", port)
    with ManagedProcess("wrk-target", argv, port=port, env=bench_env()):
        result = run_wrk(f"http://127.0.0.1:{port}/", WrkOptions(duration=1, connections=4))
    assert result.requests > 100
    assert result.errors == 0
    assert 0 < result.p50_ms <= result.p99_ms


def test_execution_counter_counts_exactly_across_forked_processes() -> None:
    url = require_redis()
    counter = ExecutionCounter(url, key=f"bench-test:{uuid.uuid4().hex}", flush_every=0.002)
    counter.reset()
    start = time.time()
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            for _ in range(500):
                counter.hit()
            time.sleep(0.05)  # let the flusher thread send the last count
            os._exit(0)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    snap = counter.snapshot()
    counter.reset()
    assert snap.count == 1000
    assert snap.first is not None and snap.last is not None
    assert start <= snap.first <= snap.last <= time.time()
    assert snap.span == snap.last - snap.first


def test_flush_redis_db_refuses_db_zero() -> None:
    with pytest.raises(ValueError, match="db 0"):
        flush_redis_db("redis://127.0.0.1:6379/0")
