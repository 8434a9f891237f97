"""Sluice's core against Celery and Dramatiq, and its runtime against the floors, in one run.

    .venv/bin/python benchmarks/core_bench.py [--n 100000] [--repeats 3] \
        [--sections send drain cold warm memory]

writes ``benchmarks/results/core.{json,md}``:

(a) send: 100,000 messages from one client thread. Sluice ``SQLiteBroker.send`` and
    ``sluice.Client.send_batch`` in batches (each batch durable: committed and fsynced) against
    Celery ``.delay()``, Celery ``apply_async`` in ``Producer.batch()`` and Dramatiq ``.send()``
    on the local Redis.
(b) drain: 100,000 pre-enqueued messages through a no-op handler, every system with the same
    number of processes running the handler, counted the same way (``ExecutionCounter``).
(c) cold start (invoke until the handler is entered, on a new environment) against a fresh
    interpreter importing the same app module; warm invoke of a no-op function against a bare
    pipe round trip between two Python processes, both pinned to one core and unpinned.
(d) memory: USS of an idle warm environment, and the peak RSS/USS of the whole worker process
    tree while 1,000 and while 100,000 messages wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import uvloop
from baselines import cold_start, pipe_round_trip
from exec_counter import ExecutionCounter
from harness import (
    BENCH_DIR,
    Distribution,
    DrainTarget,
    Report,
    Result,
    Scalar,
    console,
    flush_redis_db,
    measure_drain,
    measure_enqueue,
    redis_persistence,
    tree_memory,
)
from peers import celery_app, dramatiq_app
from peers.senders import BASELINE, send_cases

from sluice import Client
from sluice.broker.contract import OutgoingMessage, QueueConfig
from sluice.broker.sqlite import SQLiteBroker
from sluice.runtime.loader import load_app
from sluice.runtime.pool import Runtime

APP_FILE = BENCH_DIR / "core_app.py"
APP_MODULE = "core_app"
QUEUE = "core"
SEND_GROUP = "send 100,000 messages, one client thread"
SECTIONS = ("send", "drain", "cold", "warm", "memory")
BODY = '{"n": 1}'
# Its own Redis db: other benchmarks on this shared machine flush the default one (14) mid-run.
REDIS_URL = "redis://127.0.0.1:6379/9"
DRAIN_TIMEOUT = 1800.0  # Celery drains a few hundred messages/s when the machine is busy


def _app_queue() -> QueueConfig:
    app, _ = load_app(str(APP_FILE))
    return app.queues[QUEUE]


# -- (a) send ----------------------------------------------------------------------------


def sluice_broker_sender(data_dir: Path, batch: int) -> Callable[[int], None]:
    """``SQLiteBroker.send`` of ``batch`` messages per call, awaited one call at a time."""
    config = _app_queue()
    message = OutgoingMessage(BODY)

    def send(n: int) -> None:
        async def run() -> None:
            broker = SQLiteBroker(data_dir / "broker.db")
            await broker.start()
            try:
                await broker.create_queue(config)
                for start in range(0, n, batch):
                    await broker.send(QUEUE, [message] * min(batch, n - start))
            finally:
                await broker.close()

        uvloop.run(run())

    return send


def sluice_client_sender(client: Client, batch: int) -> Callable[[int], None]:
    bodies = [BODY] * batch

    def send(n: int) -> None:
        for start in range(0, n, batch):
            client.send_batch(QUEUE, bodies[: min(batch, n - start)])

    return send


@contextlib.contextmanager
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sluice-core-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def add_send(report: Report, *, n: int, redis_url: str) -> None:
    out = console()
    for batch in (100, 1000):
        with data_dir() as path:
            out.log(f"send: sluice SQLiteBroker.send, batches of {batch}, x{n}")
            report.add(
                measure_enqueue(
                    f"sluice SQLiteBroker.send, {batch} per call",
                    sluice_broker_sender(path, batch),
                    n,
                    group=SEND_GROUP,
                    settings={"batch": batch, "durable": "fsync per commit"},
                )
            )
    with data_dir() as path, Client(data_dir=path) as client:
        out.log(f"send: sluice Client.send_batch x{n}")
        sluice_broker_sender(path, 1)(0)  # creates the queue
        report.add(
            measure_enqueue(
                "sluice Client.send_batch, 1000 per call",
                sluice_client_sender(client, 1000),
                n,
                group=SEND_GROUP,
                settings={"batch": 1000, "durable": "fsync per commit"},
            )
        )
    for name, enqueue, settings in send_cases(redis_url):
        flush_redis_db(redis_url)
        out.log(f"send: {name} x{n}")
        result = measure_enqueue(name, enqueue, n, group=SEND_GROUP, settings=settings)
        result.baseline = name == BASELINE
        report.add(result)
    flush_redis_db(redis_url)


# -- (b) drain ---------------------------------------------------------------------------


class SluiceDrain:
    """``harness.DrainTarget``: a ``sluice worker`` on a pre-filled embedded data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._client: Client | None = None

    def prefill(self, n: int) -> None:
        sluice_broker_sender(self.path, 1000)(n)

    def worker_argv(self, processes: int) -> list[str]:
        sluice = str(Path(sys.executable).parent / "sluice")
        env = f"BENCH_CORE_CONCURRENCY={processes}"
        return ["env", env, sluice, "--data-dir", str(self.path), "worker", str(APP_FILE)]

    def depth(self) -> int:
        if self._client is None:
            self._client = Client(data_dir=self.path)
        return self._client.stats(QUEUE).total

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass
class Peak:
    rss_mb: float = 0.0
    uss_mb: float = 0.0
    processes: int = 0


@contextlib.contextmanager
def peak_tree_memory(interval: float = 0.5) -> Iterator[Peak]:
    """Sample the memory of every process below this one until the block ends; the peak. Every
    drain is sampled alike (a sample reads each process's smaps: CPU taken from the systems
    measured, so not more often than needed for a steady footprint)."""
    peak = Peak()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            now = tree_memory(os.getpid(), include_root=False)
            if now.rss_mb > peak.rss_mb:
                peak.rss_mb, peak.uss_mb, peak.processes = now.rss_mb, now.uss_mb, now.processes

    thread = threading.Thread(target=sample, name="peak-memory", daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def drain_group(processes: int) -> str:
    return f"drain pre-enqueued no-op messages, {processes} handler processes"


def drain_sampled(
    name: str,
    target: DrainTarget,
    *,
    n: int,
    processes: int,
    counter: ExecutionCounter,
    group: str,
    settings: Mapping[str, Scalar],
    sample_every: float = 0.5,
) -> tuple[Result, Peak]:
    """`measure_drain`, with the peak memory of the workers' tree sampled meanwhile (every
    system's drain alike) and added to the row."""
    with peak_tree_memory(sample_every) as peak:
        result = measure_drain(
            name,
            target,
            n=n,
            processes=processes,
            counter=counter,
            group=group,
            timeout=DRAIN_TIMEOUT,
            settings=settings,
        )
    result.extra["peak rss MB"] = round(peak.rss_mb, 1)
    result.extra["peak uss MB"] = round(peak.uss_mb, 1)
    return result, peak


def sluice_drain(
    *, n: int, processes: int, counter: ExecutionCounter, group: str, sample_every: float = 0.5
) -> tuple[Result, Peak]:
    with data_dir() as path:
        target = SluiceDrain(path)
        try:
            return drain_sampled(
                f"sluice worker, batch_size=100, max_concurrency={processes}",
                target,
                n=n,
                processes=processes,
                counter=counter,
                group=group,
                settings={"batch_size": 100, "broker": "embedded SQLite"},
                sample_every=sample_every,
            )
        finally:
            target.close()


def add_drain(
    report: Report, *, n: int, n_peers: int, processes: int, redis_url: str, all_peers: bool
) -> Peak:
    counter = ExecutionCounter(redis_url)
    group = drain_group(processes)
    flush_redis_db(redis_url)
    console().log(f"drain: sluice x{n}")
    result, peak = sluice_drain(n=n, processes=processes, counter=counter, group=group)
    report.add(result)
    celery_config = celery_app.CeleryConfig(redis_url)
    peers: list[tuple[str, celery_app.CeleryDrain | dramatiq_app.DramatiqDrain, dict]] = [
        (
            f"celery prefork -c {processes}",
            celery_app.CeleryDrain(celery_config),
            celery_config.settings(),
        )
    ]
    for threads in (
        (1, dramatiq_app.DEFAULT_THREADS) if all_peers else (dramatiq_app.DEFAULT_THREADS,)
    ):
        target = dramatiq_app.DramatiqDrain(redis_url, threads=threads)
        peers.append(
            (f"dramatiq --processes {processes} --threads {threads}", target, target.settings())
        )
    for name, target, settings in peers:
        flush_redis_db(redis_url)
        console().log(f"drain: {name} x{n_peers}")
        row, _ = drain_sampled(
            name,
            target,
            n=n_peers,
            processes=processes,
            counter=counter,
            group=group,
            settings=settings,
        )
        row.baseline = name.startswith("celery")
        report.add(row)
    flush_redis_db(redis_url)
    return peak


# -- (c) cold and warm starts ------------------------------------------------------------


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Pin this process (and the processes it starts meanwhile) to one core."""
    affinity = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, affinity)


async def _started_runtime(log_dir: Path | None = None) -> Runtime:
    app, source = load_app(str(APP_FILE))
    runtime = Runtime(source.ref, app.functions, log_dir=log_dir)
    await runtime.start()
    return runtime


async def _cold_starts(runs: int) -> tuple[list[float], list[float], list[float]]:
    """Per run: ms until the handler was entered, ms until the answer, reported init ms."""
    entered, answered, init = [], [], []
    runtime = await _started_runtime()
    try:
        for i in range(runs + 2):
            runtime.stop_idle("entered")
            await asyncio.sleep(0.02)  # let the stopped environment go before the next starts
            start = time.monotonic()
            result = await runtime.invoke("entered", b"{}")
            done = time.monotonic()
            if not result.cold or not result.ok:
                raise RuntimeError(f"expected a cold start: {result!r}")
            if i >= 2:  # the first two warm the template's caches
                entered.append((float(result.payload) - start) * 1e3)
                answered.append((done - start) * 1e3)
                init.append(result.init_duration_ms or 0.0)
    finally:
        await runtime.close()
    return entered, answered, init


def add_cold(report: Report, *, runs: int) -> None:
    group = "cold start: until the handler runs, vs a new interpreter importing the app"
    console().log(f"cold start: new interpreter + import {APP_MODULE} x{runs}")
    fresh = cold_start(APP_MODULE, runs)
    report.add(
        Result(
            group,
            f"python -c 'import {APP_MODULE}' (new process, same app module)",
            "p50 ms",
            fresh.p50,
            baseline=True,
            extra={"p99 ms": round(fresh.p99, 2), "n": fresh.n},
        )
    )
    console().log(f"cold start: sluice invoke on a new environment x{runs}")
    entered, answered, init = uvloop.run(_cold_starts(runs))
    dist = Distribution.of(entered)
    report.add(
        Result(
            group,
            "sluice invoke -> handler entered, new environment (fork of the template)",
            "p50 ms",
            dist.p50,
            extra={
                "p99 ms": round(dist.p99, 2),
                "answer p50 ms": round(statistics.median(answered), 2),
                "reported Init Duration p50 ms": round(statistics.median(init), 2),
                "n": dist.n,
            },
        )
    )


async def _warm_invokes(rounds: int, log_dir: Path | None) -> Distribution:
    runtime = await _started_runtime(log_dir)
    try:
        for _ in range(1000):
            await runtime.invoke("noop", b"{}")
        samples = []
        clock = time.perf_counter_ns
        for _ in range(rounds):
            start = clock()
            await runtime.invoke("noop", b"{}")
            samples.append((clock() - start) / 1e3)
    finally:
        await runtime.close()
    return Distribution.of(samples)


@dataclass
class Repeated:
    p50s: list[float]
    p99s: list[float]

    def add(self, dist: Distribution) -> None:
        self.p50s.append(dist.p50)
        self.p99s.append(dist.p99)

    def row(self, group: str, name: str, *, baseline: bool = False) -> Result:
        return Result(
            group,
            name,
            "p50 µs",
            statistics.median(self.p50s),
            baseline=baseline,
            extra={
                "p99 µs": round(statistics.median(self.p99s), 1),
                "p50 of each run": " ".join(f"{v:.1f}" for v in self.p50s),
            },
        )


def add_warm(report: Report, *, rounds: int, repeats: int) -> None:
    for cpu in (0, None):
        where = "both pinned to cpu 0" if cpu is not None else "unpinned"
        group = f"warm invoke of a no-op function vs a pipe round trip, {where}"
        pipe, bare, logged = Repeated([], []), Repeated([], []), Repeated([], [])
        # Interleaved, so drifting load on the shared machine touches every row alike.
        for i in range(repeats):
            console().log(f"warm invoke ({where}), run {i + 1}/{repeats}")
            with pinned(cpu):
                pipe.add(pipe_round_trip(rounds))
                bare.add(uvloop.run(_warm_invokes(rounds, None)))
                with data_dir() as logs:
                    logged.add(uvloop.run(_warm_invokes(rounds, logs)))
        report.add(pipe.row(group, "two Python processes, os.pipe, 64 B each way", baseline=True))
        report.add(bare.row(group, "sluice Runtime.invoke, no log files"))
        report.add(bare_note(logged.row(group, "sluice Runtime.invoke, log files (as sluice dev)")))


def bare_note(result: Result) -> Result:
    result.settings["log files"] = "written behind, every 50 ms"
    return result


# -- (d) memory --------------------------------------------------------------------------


async def _idle_environment_uss() -> tuple[float, float]:
    runtime = await _started_runtime()
    try:
        result = await runtime.invoke("noop", b"{}")
        assert result.ok
        await asyncio.sleep(0.2)
        me = psutil.Process()
        template = next(p for p in me.children() if "sluice.runtime.template" in p.cmdline())
        env = template.children()[0]
        return env.memory_full_info().uss / 2**20, template.memory_full_info().uss / 2**20
    finally:
        await runtime.close()


def add_memory(
    report: Report, *, processes: int, redis_url: str, big: int, big_peak: Peak | None
) -> None:
    env_uss, template_uss = uvloop.run(_idle_environment_uss())
    report.add(
        Result(
            "memory: idle warm environment",
            "sluice environment (fork of the template), after one invocation",
            "USS MB",
            env_uss,
            extra={"template USS MB": round(template_uss, 1)},
        )
    )
    group = "memory: peak of the whole worker process tree while messages wait"
    counter = ExecutionCounter(redis_url)
    for n in (1000, big):
        if n == big and big_peak is not None:
            peak = big_peak  # measured during the drain above, same worker and settings
        else:
            flush_redis_db(redis_url)
            console().log(f"memory: sluice worker with {n} messages waiting")
            # A short drain: sampled often, or its environments could come and go unseen.
            _, peak = sluice_drain(
                n=n,
                processes=processes,
                counter=counter,
                group="memory scratch",
                sample_every=0.02,
            )
        report.add(
            Result(
                group,
                f"sluice worker, {n:,} messages waiting",
                "peak RSS MB",
                peak.rss_mb,
                baseline=n == 1000,
                extra={"USS MB at that peak": round(peak.uss_mb, 1), "procs": peak.processes},
            )
        )
    flush_redis_db(redis_url)


# -- main --------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="Sluice's core vs Celery and Dramatiq.")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--n", type=int, default=100_000, help="messages sent and drained")
    parser.add_argument(
        "--n-drain-peers", type=int, default=None, help="messages the peers drain (default --n)"
    )
    parser.add_argument(
        "--all-peers", action="store_true", help="also Dramatiq --threads 1 (slow: backs off)"
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20_000, help="warm invokes per run")
    parser.add_argument("--cold-runs", type=int, default=30)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--name", default="core", help="results/<name>.{json,md}")
    args = parser.parse_args(argv)

    report = Report(args.name)
    report.machine["redis persistence"] = redis_persistence(args.redis_url)
    if "send" in args.sections:
        add_send(report, n=args.n, redis_url=args.redis_url)
    big_peak = None
    if "drain" in args.sections:
        big_peak = add_drain(
            report,
            n=args.n,
            n_peers=args.n_drain_peers or args.n,
            processes=args.processes,
            redis_url=args.redis_url,
            all_peers=args.all_peers,
        )
    if "cold" in args.sections:
        add_cold(report, runs=args.cold_runs)
    if "warm" in args.sections:
        add_warm(report, rounds=args.rounds, repeats=args.repeats)
    if "memory" in args.sections:
        add_memory(
            report,
            processes=args.processes,
            redis_url=args.redis_url,
            big=args.n,
            big_peak=big_peak,
        )
    report.notes += method_notes(args.processes)
    report.finish()


def method_notes(processes: int) -> list[str]:
    return [
        "Send: one client thread; 100 untimed warm-up messages first. A Sluice send returns "
        "once its batch is committed and fsynced (SQLite WAL, synchronous=FULL); Celery and "
        "Dramatiq return once Redis holds the message in memory (persistence: machine line).",
        f"Drain: N messages are enqueued, then the workers start; each handler counts every "
        f"message with ExecutionCounter.hit() and msgs/s = N / (last - first execution), which "
        f"excludes boot for every system alike. Processes that run the handler: {processes} for "
        f"every system. Sluice = the `sluice worker` supervisor (broker, poller, runtime) + the "
        f"template (forks only) + {processes} environments; Celery -c {processes} = consumer + "
        f"{processes} prefork children; Dramatiq --processes {processes} = supervisor + "
        f"{processes} workers. 'procs' and the memory columns count every process of the tree.",
        "Sluice hands each environment one SQS event of up to 100 messages (batch_size=100, "
        "the event source mapping's point); Celery and Dramatiq run one task per message.",
        "Cold start: Sluice's figure is the time from invoke() until the handler's first line "
        "ran in a freshly forked environment (the handler returns time.monotonic(), a clock "
        "shared by all processes); the baseline is a new interpreter that imports the same app "
        "module and exits. 'reported Init Duration' is what the REPORT line says.",
        "Warm invoke: Runtime.invoke awaited in a loop on uvloop, in the benchmark process; "
        "the pipe baseline runs in the same run, interleaved with it, pinned and unpinned. "
        "Each row is the median over the runs of each run's p50 (p99 likewise).",
        "Memory: USS counts pages private to a process (a forked environment shares the "
        "template's imported code); the peak is sampled every 0.5 s over the workers' whole "
        "process tree during every system's drain.",
    ]


if __name__ == "__main__":
    main(sys.argv[1:])
