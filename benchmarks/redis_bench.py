"""Sluice on Redis against Celery and Dramatiq on the same Redis, in one run (issue 4).

* enqueue, one client thread: Celery ``.delay()`` and ``Producer.batch()``, Dramatiq ``.send()``,
  Sluice ``broker.send`` one message per call and in batches;
* batch send against the floor: ``redis-benchmark`` XADD with pipelining, same server;
* drain of pre-enqueued no-op messages with the same number of handler processes (Celery prefork
  children, Dramatiq worker processes, Sluice execution environments);
* Sluice's drain with 1, 2 and 4 ``sluice worker`` processes (two environments each).

The Redis server is a dedicated ``redis-server`` this script starts in a temporary directory
(``--persistence``: AOF fsync always by default, what Sluice's durability docs ask for), so every
system pays the same persistence cost and no one else's data is touched.

    .venv/bin/python benchmarks/redis_bench.py [--n-enqueue 20000] [--n-drain 20000]

writes ``benchmarks/results/redis.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from baselines import redis_benchmark_xadd  # noqa: E402
from exec_counter import ExecutionCounter  # noqa: E402
from harness import (  # noqa: E402
    Report,
    Result,
    console,
    flush_redis_db,
    measure_drain,
    measure_enqueue,
    redis_persistence,
)
from peers_bench import ENQUEUE_GROUP, add_drain, add_enqueue, drain_group  # noqa: E402
from tests.scaleout.servers import RedisServer  # noqa: E402

from sluice.broker.contract import OutgoingMessage  # noqa: E402
from sluice.broker.redis import RedisBroker  # noqa: E402

APP = str(Path(__file__).resolve().parent / "peers" / "sluice_app.py")
QUEUE = "bench"
BODY = "x" * 64  # redis-benchmark's XADD payload below is 64 bytes too
BATCH = 1000
XADD_GROUP = "batch send vs. redis-benchmark XADD -P 100 -c 50, same server"
SCALE_GROUP = "sluice drain by sluice worker processes (2 environments each)"


class SluiceQueue:
    """A RedisBroker on a private event loop, so the harness's synchronous callables can use it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.broker = RedisBroker(url)
        self.loop.run_until_complete(self.broker.start())

    def reset(self) -> None:
        """Empty the db and declare the queue again."""
        from sluice.runtime.loader import load_app

        flush_redis_db(self.url)
        app, _ = load_app(APP)
        self.loop.run_until_complete(self.broker.create_queue(app.queues[QUEUE]))

    def close(self) -> None:
        self.loop.run_until_complete(self.broker.close())
        self.loop.close()

    def send_one_by_one(self, n: int) -> None:
        async def run() -> None:
            message = [OutgoingMessage(BODY)]
            for _ in range(n):
                await self.broker.send(QUEUE, message)

        self.loop.run_until_complete(run())

    def send_batches(self, n: int, *, concurrent: int = 1) -> None:
        async def one(count: int) -> None:
            while count > 0:
                k = min(BATCH, count)
                await self.broker.send(QUEUE, [OutgoingMessage(BODY)] * k)
                count -= k

        async def run() -> None:
            shares = [n // concurrent + (1 if i < n % concurrent else 0) for i in range(concurrent)]
            await asyncio.gather(*(one(s) for s in shares))

        self.loop.run_until_complete(run())

    def depth(self) -> int:
        return self.loop.run_until_complete(self.broker.stats(QUEUE)).total


class SluiceDrain:
    """``harness.DrainTarget``: ``workers`` ``sluice worker`` processes sharing a mapping of up to
    ``environments`` concurrent batches of ``batch`` messages (max_concurrency is global)."""

    def __init__(
        self, queue: SluiceQueue, work_dir: Path, *, workers: int, environments: int, batch: int
    ) -> None:
        self.queue, self.work_dir = queue, work_dir
        self.workers, self.environments, self.batch = workers, environments, batch

    def settings(self) -> dict[str, str | int]:
        return {
            "sluice workers": self.workers,
            "max_concurrency": self.environments,
            "batch_size": self.batch,
        }

    def prefill(self, n: int) -> None:
        self.queue.send_batches(n)

    def worker_argv(self, processes: int) -> list[str]:
        env = [
            f"SLUICE_BROKER={self.queue.url}",
            f"BENCH_SLUICE_CONCURRENCY={self.environments}",
            f"BENCH_SLUICE_BATCH={self.batch}",
        ]
        one = f"{sys.executable} -m sluice.cli --data-dir {self.work_dir} worker {APP}"
        # One shell owns the workers' process group, so the harness's group signal reaches every
        # worker; on that signal the shell waits for them, so "stopped" means they are gone.
        script = "trap wait TERM; " + " & ".join([one] * self.workers) + " & wait"
        return ["env", *env, "sh", "-c", script]

    def depth(self) -> int:
        return self.queue.depth()


def regroup(result: Result, group: str) -> Result:
    return Result(
        group, result.name, result.metric, result.value, False, result.extra, result.settings
    )


def sluice_drains(
    queue: SluiceQueue, work: Path, batches: Sequence[int], n: int
) -> dict[tuple[int, int], Result]:
    """Drain rates by (sluice worker processes, batch size): 1, 2 and 4 workers with the first
    batch size, one worker with the others."""
    counter = ExecutionCounter(queue.url)
    results = {}
    for batch in batches:
        for workers in (1, 2, 4) if batch == batches[0] else (1,):
            queue.reset()
            target = SluiceDrain(
                queue, work, workers=workers, environments=2 * workers, batch=batch
            )
            name = (
                f"sluice, {workers} worker process(es), {2 * workers} environments, batch {batch}"
            )
            results[(workers, batch)] = measure_drain(
                name,
                target,
                n=n,
                processes=2 * workers,
                counter=counter,
                settings=target.settings(),
            )
    return results


def add_sluice_enqueue(report: Report, queue: SluiceQueue, n: int) -> list[Result]:
    """Sluice's enqueue rows; returns the batch-send results."""
    batch_sends = []
    cases = [
        ("sluice broker.send, 1 message per call", queue.send_one_by_one, {}),
        ("sluice broker.send, batches of 1000", queue.send_batches, {"batch": BATCH}),
        (
            "sluice broker.send, batches of 1000, 4 in flight (asyncio)",
            lambda k: queue.send_batches(k, concurrent=4),
            {"batch": BATCH, "in flight": 4},
        ),
    ]
    for name, enqueue, settings in cases:
        queue.reset()
        console().log(f"enqueue: {name} x{n}")
        result = measure_enqueue(name, enqueue, n, group=ENQUEUE_GROUP, settings=settings)
        report.add(result)
        if "batches" in name:
            batch_sends.append(result)
    return batch_sends


PROFILE_GROUP = "where batch send time goes (batches of 1000; cProfile, so Python parts inflated)"
_PROFILED = ("validate_messages", "md5_of_body", "_new_message_ids", "_send_once")


def add_send_profile(report: Report, queue: SluiceQueue, n: int) -> None:
    """Batch send under cProfile: client functions' cumulative time and Redis's own time for the
    send script (INFO commandstats), per message."""
    import redis

    queue.reset()
    queue.send_batches(BATCH)  # warm: connection and script cache
    with redis.Redis.from_url(queue.url) as client:
        before = client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0)
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        queue.send_batches(n)
        profile.disable()
        elapsed = time.perf_counter() - started
        after = client.info("commandstats")["cmdstat_evalsha"]["usec"]
    cumulative: dict[str, float] = dict.fromkeys(_PROFILED, 0.0)
    waiting = 0.0
    for (_, _, function), row in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        if function in cumulative:
            cumulative[function] += row[3]
        if function == "<method 'poll' of 'select.epoll' objects>":
            waiting += row[2]
    rows = [("whole send, wall clock under the profiler", elapsed * 1e6 / n)]
    rows.append(("Redis: send script (INFO commandstats)", (after - before) / n))
    rows.append(("client: event loop waiting for Redis (epoll)", waiting * 1e6 / n))
    rows += [(f"client: {name} (cumulative)", cumulative[name] * 1e6 / n) for name in _PROFILED]
    for name, value in rows:
        report.add(Result(PROFILE_GROUP, name, "µs/msg", value, extra={"n": n}))


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-enqueue", type=int, default=20_000)
    parser.add_argument("--n-drain", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[100, 1000], help="Sluice mapping batch sizes"
    )
    parser.add_argument("--xadd-requests", type=int, default=500_000)
    parser.add_argument("--persistence", choices=("always", "everysec", "none"), default="always")
    parser.add_argument("--skip-peers", action="store_true", help="only the Sluice rows")
    args = parser.parse_args(argv)

    report = Report("redis")
    out = console()
    with RedisServer(fsync=args.persistence) as server, tempfile.TemporaryDirectory() as work:
        url = f"redis://127.0.0.1:{server.port}/1"  # the harness refuses to flush db 0
        report.machine["redis persistence"] = redis_persistence(url)
        queue = SluiceQueue(url)
        try:
            out.log(f"redis-benchmark XADD x{args.xadd_requests}")
            xadd = redis_benchmark_xadd(url, requests=args.xadd_requests)
            xadd_row = Result(
                XADD_GROUP,
                "redis-benchmark XADD -P 100 -c 50",
                "msgs/s",
                xadd.requests_per_s,
                baseline=True,
                extra={"p50 ms": xadd.p50_ms, "n": args.xadd_requests},
            )
            if not args.skip_peers:
                add_enqueue(report, n=args.n_enqueue, redis_url=url)
            batch_sends = add_sluice_enqueue(report, queue, args.n_enqueue)
            report.add(xadd_row)
            for result in batch_sends:
                report.add(regroup(result, XADD_GROUP))
            add_send_profile(report, queue, 100_000)
            if not args.skip_peers:
                add_drain(report, n=args.n_drain, processes=args.processes, redis_url=url)
            drains = sluice_drains(queue, Path(work), args.batches, args.n_drain)
            for (workers, _), result in drains.items():
                if 2 * workers == args.processes:
                    report.add(regroup(result, drain_group(args.processes)))
            for (_, batch), result in drains.items():
                if batch == args.batches[0]:
                    report.add(regroup(result, SCALE_GROUP))
        finally:
            queue.close()
    report.notes += notes(args)
    report.finish()


def notes(args: argparse.Namespace) -> list[str]:
    return [
        f"One dedicated redis-server (appendfsync={args.persistence}) for every system, "
        "the counters and redis-benchmark; each measurement starts from an empty db.",
        "Drain 'processes' are the processes that run the handler: Celery prefork children, "
        "Dramatiq worker processes, Sluice execution environments (the mapping's "
        "max_concurrency). Each system also runs a supervising process (Celery's main process, "
        "Dramatiq's supervisor, the sluice worker and its fork template).",
        "Sluice drains with the mapping's batch_size as shown: per batch one concurrency lease "
        "(acquire + release), one receive script, one invoke and one delete, each a Redis write "
        "that waits for the AOF fsync; the handler calls counter.hit() per record.",
        "Drain rate = N / (last execution - first execution) as for the peers (worker boot "
        "excluded; 'with boot s' includes it).",
    ]


if __name__ == "__main__":
    main(sys.argv[1:])
