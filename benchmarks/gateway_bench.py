"""The gateway against its goals (issue 3), every row in one run on this machine:

    .venv/bin/python benchmarks/gateway_bench.py [--rounds 3] [--duration 5] [--connections 64] \
        [--hold-connections 10000] [--hold-duration 10] [--rows 1 3] [--sweep 128 256]

writes ``benchmarks/results/gateway.{json,md}``. Rows, each its own fresh server process and the
same wrk settings (one wrk thread: wrk takes one core, the server the other):

1. Sluice's HTTP server answering hello world (the chosen server's bare number, the baseline);
2. a sync route to a no-op function (real runtime, execution environments);
3. a queue route: POST with a JSON body, 202 once the message is committed and fsynced;
4. FastAPI calling Celery ``.delay()`` on the local Redis, 202 (the peer);
5. FastAPI's hello world (uvicorn with httptools and uvloop, one worker);
6. an async (Event invoke) route: POST, 202 once the invocation is committed;
7. row 1's server answering row 3's request (the same POST with its JSON body; the body is
   read and ignored).

Each Sluice row is compared to the bare server answering the same request: (2) GET to (1) GET,
(3) POST to (7) POST, so that the ratio is what Sluice adds, not what a body costs to read. The
ratio of (3) to the GET hello world (1) is listed beside it.

Then the goals' rows (1), (2), (7) and (3) again at each ``--sweep`` connection count instead of
``--connections``: "(1@128)" and so on, in the same rounds. A durable 202 waits for a commit, so
the queue route's rate grows with the requests in flight while a hello world's does not; a sync
route needs one execution environment per request in flight. The sweep shows where each ratio
stands at each concurrency.

The machine is shared, so its load moves during a run: all rows are measured once per round,
``--rounds`` times (rows compared by a goal back to back, the order reversed every other round),
and each row reports its median round (the others beside it).

Goals: (3) >= 50 % of the bare server (7) and >= 10x (4); (2) >= 33 % of (1). Then the queue
route is held at ``--hold-connections`` concurrent keep-alive connections: errors and the gateway
process's peak RSS (sampled every 50 ms while wrk runs) are recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
from gateway_app import QUEUE
from harness import (
    BENCH_DIR,
    LOG_DIR,
    ManagedProcess,
    ProcessFailed,
    Report,
    Result,
    WrkOptions,
    bench_env,
    console,
    flush_redis_db,
    free_port,
    run_wrk,
    tree_memory,
)
from peers import celery_app
from peers.http_servers import server_argv

GROUP = "gateway paths, one server process"
HOLD_GROUP = "many concurrent connections, queue route"
BODY = b'{"account": "acc-1042", "amount": 1250, "currency": "EUR", "memo": "invoice 77"}'
# Not db 14 (the other benchmarks', which they flush) nor 13/15 (the test suites').
REDIS_URL = "redis://127.0.0.1:6379/12"
GOALS = {"queue_vs_hello": 0.5, "queue_vs_celery": 10.0, "sync_vs_hello": 1 / 3}


@dataclass(frozen=True)
class Row:
    key: str  # "1" .. "7"; at another connection count "1@128" and so on
    name: str
    server: str  # "hello", "gateway", "fastapi-celery" or "fastapi-hello"
    path: str
    post: bool = False
    connections: int | None = None  # None: the run's --connections

    def at(self, connections: int) -> Row:
        """This row at ``connections`` connections."""
        key = f"{self.key}@{connections}"
        name = f"({key}){self.name.split(')', 1)[1]}, {connections} connections"
        return replace(self, key=key, name=name, connections=connections)


ROWS = (
    Row("1", "(1) Sluice HttpServer, bare hello world", "hello", "/"),
    Row("2", "(2) sync route -> no-op function", "gateway", "/noop"),
    Row("3", "(3) queue route, durable 202 (POST JSON)", "gateway", "/enqueue", post=True),
    Row("4", "(4) FastAPI + Celery .delay() on Redis, 202", "fastapi-celery", "/enqueue"),
    Row("5", "(5) FastAPI hello world", "fastapi-hello", "/"),
    Row(
        "6",
        "(6) async route (Event invoke), durable 202 (POST JSON)",
        "gateway",
        "/jobs",
        post=True,
    ),
    Row("7", "(7) Sluice HttpServer, bare hello world, row 3's POST JSON", "hello", "/", post=True),
)
BY_KEY = {row.key: row for row in ROWS}
# Rows compared by a goal are measured back to back ((2) after (1), (3) after (7)), and every
# other round in reverse order, so that the machine's drift moves both rows of a pair alike.
MEASURE_ORDER = ("1", "2", "7", "3", "6", "4", "5")
# The rows the sweep repeats (the goals' pairs), in the same order.
SWEPT = ("1", "2", "7", "3")


def swept(counts: Sequence[int], chosen: Collection[str] = SWEPT) -> list[Row]:
    """The goals' rows among ``chosen`` again at each connection count of ``counts``."""
    return [BY_KEY[key].at(count) for count in counts for key in SWEPT if key in chosen]


def raise_nofile() -> int:
    """Children inherit the limit: wrk and the gateway each hold one descriptor per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def post_script(directory: Path) -> Path:
    """A wrk Lua script that turns every request into a POST of ``BODY``."""
    path = directory / "post.lua"
    body = BODY.decode().replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(
        f'wrk.method = "POST"\nwrk.body = "{body}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    return path


def queued(data_dir: Path, queue: str) -> int:
    """Messages stored in the gateway's SQLite broker for ``queue`` (read beside the writer)."""
    with contextlib.closing(sqlite3.connect(data_dir / "broker.db", timeout=10)) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM messages JOIN queues ON queues.id = messages.qid"
            " WHERE queues.name = ?",
            (queue,),
        ).fetchone()
    return int(row[0])


class RssSampler:
    """Peak RSS of one process and its children (the gateway's send process), sampled on a
    thread while a load runs."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0  # of the process
        self.tree_peak = 0  # of the process and its children
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.NoSuchProcess):
                rss = self.process.memory_info().rss
                self.peak = max(self.peak, rss)
                for child in self.process.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        rss += child.memory_info().rss
                self.tree_peak = max(self.tree_peak, rss)
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def running(self) -> Iterator[RssSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


class Servers:
    """The command line of each server kind, on a fresh port and (for Sluice) data directory."""

    def __init__(self, workdir: Path, redis_url: str) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.sluice = str(Path(sys.executable).parent / "sluice")
        self._count = 0

    def start_args(self, kind: str) -> tuple[ManagedProcess, int, Path | None]:
        port = free_port()
        self._count += 1
        data_dir = None
        if kind == "hello":
            argv = [sys.executable, str(BENCH_DIR / "gateway_app.py"), "hello", f"--port={port}"]
        elif kind == "gateway":
            data_dir = self.workdir / f"data{self._count}"
            app = str(BENCH_DIR / "gateway_app.py")
            argv = [self.sluice, f"--data-dir={data_dir}", "gateway", app, f"--port={port}"]
        else:
            argv = server_argv(kind, port)
        env = bench_env(self.redis_url)
        return ManagedProcess(f"gateway-bench {kind}", argv, port=port, env=env), port, data_dir


def measure_row(
    row: Row, servers: Servers, options: WrkOptions, script: Path, redis_url: str, warmup: int = 1
) -> Result:
    server, port, data_dir = servers.start_args(row.server)
    url = f"http://127.0.0.1:{port}{row.path}"
    if row.connections is not None:
        options = replace(options, connections=row.connections)
    script_for_row = script if row.post else None
    extra: dict[str, float | int | str] = {}
    with server:
        warm = WrkOptions(warmup, options.connections, options.threads, options.timeout)
        run_wrk(url, warm, script_for_row)
        if row.server == "fastapi-celery":
            flush_redis_db(redis_url)
        before = queued(data_dir, QUEUE) if row.path == "/enqueue" and data_dir else 0
        result = run_wrk(url, options, script_for_row)
        server.check_alive()
        if result.requests <= result.errors:
            raise ProcessFailed(f"{row.name}: no successful request:\n{server.log_tail()}")
        accepted = result.requests - result.errors
        if row.server == "fastapi-celery":
            extra["queued"] = celery_app.queue_depth(redis_url)
        elif row.path == "/enqueue" and data_dir is not None:
            # Every 202 was committed before it was sent: all of them must be in the queue.
            stored = queued(data_dir, QUEUE) - before
            extra["stored"] = stored
            if stored < accepted:
                raise ProcessFailed(f"{row.name}: {accepted} accepted but {stored} stored")
        server_rss = psutil.Process(server.pid).memory_info().rss / 2**20
        memory = tree_memory(server.pid)
    if row.server == "fastapi-celery":
        flush_redis_db(redis_url)
    return Result(
        GROUP,
        row.name,
        "req/s",
        result.requests_per_s,
        baseline=row.server == "hello" and not row.post,
        extra={
            "p50 ms": round(result.p50_ms, 3),
            "p99 ms": round(result.p99_ms, 3),
            "requests": result.requests,
            "errors": result.errors,
            **extra,
            "server rss MB": round(server_rss, 1),
            "tree rss MB": round(memory.rss_mb, 1),
        },
        settings={**options.settings(), "body": "JSON, POST" if row.post else "GET"},
    )


def hold_connections(servers: Servers, options: WrkOptions, script: Path) -> Result:
    server, port, data_dir = servers.start_args("gateway")
    url = f"http://127.0.0.1:{port}/enqueue"
    with server:
        process = psutil.Process(server.pid)
        idle_rss = process.memory_info().rss
        with RssSampler(server.pid).running() as sampler:
            result = run_wrk(url, options, script)
        server.check_alive()
        stored = queued(data_dir, QUEUE) if data_dir is not None else 0
    return Result(
        HOLD_GROUP,
        f"queue route, {options.connections} keep-alive connections",
        "req/s",
        result.requests_per_s,
        extra={
            "requests": result.requests,
            "errors": result.errors,
            "stored": stored,
            "p50 ms": round(result.p50_ms, 3),
            "p99 ms": round(result.p99_ms, 3),
            "gateway idle rss MB": round(idle_rss / 2**20, 1),
            "gateway peak rss MB": round(sampler.peak / 2**20, 1),
            "gateway + children peak rss MB": round(sampler.tree_peak / 2**20, 1),
        },
        settings=options.settings(),
    )


def median_round(results: list[Result]) -> Result:
    """The round with the median requests/s, listing every round's figure beside it."""
    ranked = sorted(results, key=lambda r: r.value)
    median = ranked[(len(ranked) - 1) // 2]
    median.extra["rounds req/s"] = " / ".join(f"{r.value:,.0f}" for r in results)
    return median


def verdicts(report: Report, rounds: dict[str, list[Result]]) -> list[str]:
    """One line per goal whose two rows were measured, for the base rows and then for each swept
    connection count: the ratio of the two rows' median rounds, and beside it the ratio within
    each round (rows measured minutes apart on a machine whose speed drifts; within a round they
    are back to back) with its median."""
    by_key = {_key(r.name): r.value for r in report.results if r.group == GROUP}
    per_round = {_key(name): [r.value for r in results] for name, results in rounds.items()}
    suffixes = dict.fromkeys(key.lstrip("0123456789") for key in by_key)
    lines = []
    pairs = [
        ("3", "7", GOALS["queue_vs_hello"]),
        ("3", "1", None),  # against the GET hello world: listed, not the goal's measure
        ("3", "4", GOALS["queue_vs_celery"]),
        ("2", "1", GOALS["sync_vs_hello"]),
    ]
    for suffix in suffixes:
        for a, b, goal in pairs:
            if b == "4" and suffix:
                continue  # the peer runs at the base connection count only
            a, b = a + suffix, b + suffix
            if a not in by_key or b not in by_key:
                continue
            value = by_key[a] / by_key[b]
            paired = [x / y for x, y in zip(per_round[a], per_round[b], strict=True)]
            verdict = (
                "no goal (a cheaper request than (3)'s)"
                if goal is None
                else f"goal >= {goal:.2f}: {'met' if value >= goal else 'NOT met'}"
            )
            lines.append(
                f"({a})/({b}) = {value:.2f} ({verdict}); within each round"
                f" {' / '.join(f'{r:.2f}' for r in paired)}, median {statistics.median(paired):.2f}"
            )
    return lines


def _key(name: str) -> str:
    """A row's key from its name: "(3@128) queue route ..." -> "3@128"."""
    return name[1 : name.index(")")]


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="Measure the gateway's paths on this machine.")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="seconds of load on each fresh server before it counts",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hold-connections", type=int, default=10_000)
    parser.add_argument("--hold-threads", type=int, default=2)
    parser.add_argument("--hold-duration", type=int, default=10)
    parser.add_argument("--name", default="gateway", help="results/<name>.{json,md}")
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=MEASURE_ORDER,
        metavar="N",
        help="measure only these rows (e.g. --rows 1 3); the default is all of them",
    )
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=[128, 256],
        metavar="C",
        help="repeat rows 1, 2, 7 and 3 at each of these connection counts (none: --sweep)",
    )
    args = parser.parse_args(argv)
    chosen = set(args.rows or MEASURE_ORDER)
    rows = [BY_KEY[key] for key in MEASURE_ORDER if key in chosen]
    rows += swept(args.sweep, chosen)
    nofile = raise_nofile()
    report = Report(args.name)
    options = WrkOptions(args.duration, args.connections, args.threads)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=LOG_DIR, prefix="gateway-bench-") as tmp:
        workdir = Path(tmp)
        script = post_script(workdir)
        servers = Servers(workdir, args.redis_url)
        rounds: dict[str, list[Result]] = {row.name: [] for row in rows}
        for round_no in range(args.rounds):
            for row in rows if round_no % 2 == 0 else rows[::-1]:
                console().log(f"gateway bench, round {round_no + 1}: {row.name}")
                rounds[row.name].append(
                    measure_row(row, servers, options, script, args.redis_url, args.warmup)
                )
        for results in rounds.values():
            report.add(median_round(results))
        if args.hold_connections:
            console().log(f"gateway bench: {args.hold_connections} connections")
            hold = WrkOptions(args.hold_duration, args.hold_connections, args.hold_threads, 10.0)
            report.add(hold_connections(servers, hold, script))
    report.notes += verdicts(report, rounds)
    report.notes.append(
        f"Every row is a fresh server process warmed by a {args.warmup} s wrk run; the Sluice "
        "gateway is "
        "`sluice gateway benchmarks/gateway_app.py` (gateway + runtime; SQLite broker, WAL, "
        "synchronous=FULL, sends group-committed by its send process); "
        f"RLIMIT_NOFILE {nofile}; measured at "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
    )
    json_path, md_path = report.write()
    console().log(f"wrote {json_path} and {md_path}")
    print(report.markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
