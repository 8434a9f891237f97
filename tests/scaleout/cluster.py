"""Run an app scaled out on one machine: gateways and workers as separate `sluice` processes
on a shared Redis, HTTP load through the gateways, workers SIGKILLed and restarted at random,
then an account of every accepted request.

`run_topology` is shared by tests/scaleout/test_topology.py (small) and
benchmarks/topology.py (the issue's full size).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from tests.scaleout.servers import RecordTables, RedisServer, free_port, peak_overlap
from tests.scaleout.topo_app import MAX_CONCURRENCY

APP = str(Path(__file__).with_name("topo_app.py"))
ROOT = Path(__file__).resolve().parents[2]
SLUICE = [sys.executable, "-m", "sluice.cli"]


@dataclass(frozen=True)
class TopologyConfig:
    messages: int
    kills: int
    kill_every: float  # seconds between kills
    gateways: int = 2
    workers: int = 3
    connections: int = 64  # HTTP connections per gateway
    drain_timeout: float = 300.0
    seed: int = 1


@dataclass
class TopologyResult:
    config: TopologyConfig
    sent: int = 0
    accepted: int = 0  # 202 responses
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    processed_ids: int = 0
    processed_keys: int = 0
    in_dlq: int = 0
    lost: int = 0
    duplicates: int = 0
    peak_concurrency: int = 0
    batches: int = 0
    load_seconds: float = 0.0
    total_seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "config"}
        return {"config": vars(self.config), **out}


class Role:
    """One `sluice gateway` or `sluice worker` process; `kill` takes down its whole tree (the
    execution environments run in sessions of their own, so a group kill would miss them)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            root = psutil.Process(proc.pid)
            victims = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            victims = []
        for p in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        psutil.wait_procs(victims, timeout=15)
        proc.wait()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-30:]
            code = self.proc.returncode
            raise RuntimeError(f"{self.name} exited with {code}:\n" + "\n".join(tail))


def _wait_for_port(port: int, role: Role, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        role.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{role.name} is not listening on {port}") from None
            time.sleep(0.05)


class Killer(threading.Thread):
    """SIGKILLs a random worker's process tree every ``every`` seconds, ``count`` times, and
    starts a fresh worker in its place at once."""

    def __init__(self, workers: list[Role], count: int, every: float, seed: int) -> None:
        super().__init__(name="topology-killer", daemon=True)
        self.workers, self.count, self.every = workers, count, every
        self.random = random.Random(seed)
        self.done = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.done < self.count and not self.stop.wait(self.every):
                worker = self.random.choice(self.workers)
                worker.kill()
                worker.start()
                self.done += 1
        except BaseException as exc:  # surfaced by the caller after join()
            self.error = exc


def _load(url: str, group: int, requests: int, connections: int) -> Any:
    # benchmarks/ holds the load generator; it is a script directory, not a package.
    bench = str(ROOT / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from loadgen import run_load

    body = f'{{"g": {group}, "n": {{n}}}}'
    return run_load(url, connections=connections, requests=requests, body=body, processes=1)


async def _dlq_keys(redis_url: str) -> set[str]:
    """Bodies (as ``g:n``) of the messages in the dead-letter queue."""
    from sluice.broker.redis import RedisBroker

    broker = RedisBroker(redis_url)
    await broker.start()
    keys: set[str] = set()
    try:
        while batch := await broker.receive("work-dlq", 1000, visibility_timeout=600):
            for m in batch:
                body = orjson.loads(m.body)
                keys.add(f"{body['g']}:{body['n']}")
    finally:
        await broker.close()
    return keys


async def _backlog(redis_url: str) -> int:
    from sluice.broker.redis import RedisBroker

    broker = RedisBroker(redis_url)
    await broker.start()
    try:
        return (await broker.stats("work")).total
    finally:
        await broker.close()


def run_topology(
    config: TopologyConfig,
    postgres_url: str,
    work_dir: Path,
    log: Callable[[str], None] = lambda _: None,
) -> TopologyResult:
    result = TopologyResult(config)
    started = time.monotonic()
    with RedisServer() as server, RecordTables(postgres_url) as tables:
        env = dict(
            os.environ,
            SLUICE_BROKER=server.url,
            TOPO_PG=postgres_url,
            TOPO_TABLE=tables.prefix,
            PYTHONPATH=str(ROOT),
        )
        gateways, workers = [], []
        for i in range(config.gateways):
            port = free_port()
            argv = [*SLUICE, "--data-dir", str(work_dir / f"gateway{i}"), "gateway", APP]
            role = Role(f"gateway{i}", [*argv, "--port", str(port)], env, work_dir / f"gw{i}.log")
            gateways.append((role, port))
        for i in range(config.workers):
            argv = [*SLUICE, "--data-dir", str(work_dir / f"worker{i}"), "worker", APP]
            workers.append(Role(f"worker{i}", argv, env, work_dir / f"worker{i}.log"))
        roles = [g for g, _ in gateways] + workers
        try:
            for role, port in gateways:
                role.start()
                _wait_for_port(port, role)
            for role in workers:
                role.start()
            log(f"redis on {server.port}, {len(gateways)} gateways, {len(workers)} workers up")
            killer = Killer(workers, config.kills, config.kill_every, config.seed)
            killer.start()
            share = [config.messages // len(gateways)] * len(gateways)
            share[0] += config.messages - sum(share)
            load_started = time.monotonic()
            with ThreadPoolExecutor(len(gateways)) as pool:
                loads = [
                    pool.submit(_load, f"http://127.0.0.1:{port}/work", i, n, config.connections)
                    for i, ((_, port), n) in enumerate(zip(gateways, share, strict=True))
                ]
                outcomes = [f.result() for f in loads]
            result.load_seconds = time.monotonic() - load_started
            statuses: Counter[int] = Counter()
            errors: Counter[str] = Counter()
            latencies: list[float] = []
            for outcome in outcomes:
                result.sent += outcome.sent
                statuses.update(outcome.statuses)
                errors.update(outcome.errors)
                latencies += outcome.latencies_ms
            result.statuses, result.errors = dict(statuses), dict(errors)
            result.accepted = statuses[202]
            if latencies:
                latencies.sort()
                result.p50_ms = latencies[len(latencies) // 2]
                result.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            log(f"load done in {result.load_seconds:.1f}s: {dict(statuses)} {dict(errors)}")
            killer.join()  # the kills go on into the drain if the load finished first
            if killer.error is not None:
                raise killer.error
            result.kills = killer.done
            _drain(result, tables, server.url, log)
            for role in roles:
                role.check_alive()
        finally:
            for role in roles:
                role.kill(signal.SIGTERM)
        summary = tables.summary()
        processed = tables.keys()
        dlq = asyncio.run(_dlq_keys(server.url))
        result.processed_ids = summary["ids"]
        result.processed_keys = summary["keys"]
        result.duplicates = summary["duplicates"]
        result.in_dlq = len(dlq - processed)
        # Every request carried a distinct body, so with no failed request the accepted
        # messages are exactly the bodies sent; each must be processed or dead-lettered.
        result.lost = max(0, result.accepted - len(processed | dlq))
        intervals = tables.batches()
        result.batches = len(intervals)
        result.peak_concurrency = peak_overlap(intervals)
    result.total_seconds = time.monotonic() - started
    return result


def _drain(result: TopologyResult, tables: RecordTables, redis_url: str, log: Callable) -> None:
    deadline = time.monotonic() + result.config.drain_timeout
    while True:
        # Visible, in flight and delayed all count: zero means every accepted message was
        # deleted after processing or moved to the dead-letter queue.
        backlog = asyncio.run(_backlog(redis_url))
        done = tables.processed()
        if backlog == 0:
            log(f"drained: {done} processed")
            return
        if time.monotonic() > deadline:
            log(f"drain timed out: {done}/{result.accepted} processed, {backlog} left")
            return
        time.sleep(0.5)


__all__ = ["MAX_CONCURRENCY", "TopologyConfig", "TopologyResult", "run_topology"]
