"""Every peer measurement once, on this machine, into one table.

    .venv/bin/python benchmarks/peers_bench.py [--n-enqueue 5000] [--n-drain 10000] \
        [--processes 2] [--wrk-duration 5] [--sections enqueue drain http baselines]

writes ``benchmarks/results/peers.{json,md}``. Each ``add_*`` function fills one part of a
``harness.Report``; a script measuring Sluice calls them and adds its own rows to the same
groups (same group name, same metric) so ratios come out of one run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from baselines import DEFAULT_COLD_MODULES, add_baselines
from exec_counter import DEFAULT_REDIS_URL, ExecutionCounter
from harness import (
    ManagedProcess,
    Report,
    WrkOptions,
    bench_env,
    console,
    flush_redis_db,
    free_port,
    measure_drain,
    measure_enqueue,
    measure_http,
    redis_persistence,
)
from peers import celery_app, dramatiq_app
from peers.http_servers import SERVERS, server_argv
from peers.senders import send_cases

ENQUEUE_GROUP = "enqueue, one client thread"
HTTP_HELLO_GROUP = "HTTP hello world, 1 server worker"
HTTP_ACCEPT_GROUP = "HTTP accept work onto a queue, 1 server worker"
SECTIONS = ("enqueue", "drain", "http", "baselines")


def drain_group(processes: int) -> str:
    return f"drain pre-enqueued no-op messages, {processes} worker processes"


def add_enqueue(report: Report, *, n: int, redis_url: str) -> None:
    for name, enqueue, settings in send_cases(redis_url):
        flush_redis_db(redis_url)
        console().log(f"enqueue: {name} x{n}")
        report.add(measure_enqueue(name, enqueue, n, group=ENQUEUE_GROUP, settings=settings))
    flush_redis_db(redis_url)


def add_drain(report: Report, *, n: int, processes: int, redis_url: str) -> None:
    counter = ExecutionCounter(redis_url)
    targets: list[tuple[str, celery_app.CeleryDrain | dramatiq_app.DramatiqDrain, dict]] = []
    for acks_late in (False, True):
        config = celery_app.CeleryConfig(redis_url, acks_late=acks_late)
        name = f"celery prefork -c {processes}, acks_late={acks_late}"
        targets.append((name, celery_app.CeleryDrain(config), config.settings()))
    for threads in (1, dramatiq_app.DEFAULT_THREADS):
        target = dramatiq_app.DramatiqDrain(redis_url, threads=threads)
        name = f"dramatiq --processes {processes} --threads {threads}"
        targets.append((name, target, target.settings()))
    for name, target, settings in targets:
        flush_redis_db(redis_url)
        report.add(
            measure_drain(
                name,
                target,
                n=n,
                processes=processes,
                counter=counter,
                group=drain_group(processes),
                settings=settings,
            )
        )
    flush_redis_db(redis_url)


def add_http(report: Report, *, options: WrkOptions, redis_url: str) -> None:
    for spec in SERVERS:
        port = free_port()
        server = ManagedProcess(
            spec.kind, server_argv(spec.kind, port), port=port, env=bench_env(redis_url)
        )
        console().log(f"http: {spec.description}")
        url = f"http://127.0.0.1:{port}{spec.path}"
        if spec.kind != "fastapi-celery":
            report.add(
                measure_http(spec.description, server, url, group=HTTP_HELLO_GROUP, options=options)
            )
            continue
        result = measure_http(
            spec.description,
            server,
            url,
            group=HTTP_ACCEPT_GROUP,
            options=options,
            after_warmup=lambda: flush_redis_db(redis_url),
        )
        # Every answered request must have left a message (more may be in flight at the end).
        queued = celery_app.queue_depth(redis_url)
        result.extra["queued"] = queued
        if queued < int(result.extra["requests"] or 0) - int(result.extra["errors"] or 0):
            report.notes.append(f"{spec.description}: fewer messages queued than accepted")
        report.add(result)
        flush_redis_db(redis_url)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="Measure Sluice's peers on this machine.")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--n-enqueue", type=int, default=5_000)
    parser.add_argument("--n-drain", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--wrk-duration", type=int, default=5)
    parser.add_argument("--wrk-connections", type=int, default=64)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10_000, help="pipe round trips")
    parser.add_argument("--cold-runs", type=int, default=20)
    parser.add_argument("--xadd-requests", type=int, default=200_000)
    parser.add_argument("--name", default="peers", help="results/<name>.{json,md}")
    args = parser.parse_args(argv)

    report = Report(args.name)
    report.machine["redis persistence"] = redis_persistence(args.redis_url)
    if "enqueue" in args.sections:
        add_enqueue(report, n=args.n_enqueue, redis_url=args.redis_url)
    if "drain" in args.sections:
        add_drain(report, n=args.n_drain, processes=args.processes, redis_url=args.redis_url)
    if "http" in args.sections:
        options = WrkOptions(args.wrk_duration, args.wrk_connections, args.wrk_threads)
        add_http(report, options=options, redis_url=args.redis_url)
    if "baselines" in args.sections:
        add_baselines(
            report,
            rounds=args.rounds,
            cold_runs=args.cold_runs,
            cold_modules=DEFAULT_COLD_MODULES,
            redis_url=args.redis_url,
            xadd_requests=args.xadd_requests,
        )
    report.notes += method_notes(args.processes)
    report.finish()


def method_notes(processes: int) -> list[str]:
    return [
        "Enqueue: one client thread calling the library in a loop; 100 untimed warm-up "
        "messages first. Celery's batch form is kombu's Producer.batch(), which pipelines the "
        "LPUSHes; Dramatiq has no batch enqueue (group/pipeline send one by one).",
        "Drain: N messages are enqueued, then the workers start. Each no-op task calls "
        "ExecutionCounter.hit(): a per-process count flushed to Redis every 5 ms in one "
        "pipeline with the earliest/latest execution time, so no task pays a Redis round trip "
        "of its own. msgs/s = N / (last execution - first execution), which excludes worker "
        "boot for every system alike ('with boot s' includes it). The run only counts once "
        "the queue is empty and every message acknowledged; 'executed' > N would show "
        "duplicates.",
        f"Celery -c {processes} runs {processes} prefork children plus its consumer process; "
        "Dramatiq runs a supervisor plus one process per --processes. Memory is the sum over "
        "the worker process tree after the drain (RSS double-counts shared pages; USS does not).",
        "Dramatiq --threads 1 prefetches 2 messages; when both are outstanding its Redis "
        "consumer treats the empty fetch as a miss and backs off, which caps its rate.",
        "HTTP: wrk without Lua (GET only), so the FastAPI + Celery endpoint is GET /enqueue. "
        "wrk and the server share the machine's cores.",
        "Pipe round trip: unpinned, the scheduler may put the two processes on different "
        "cores, and a cross-core wake-up on this VM costs tens of µs (p50 55-67 µs was seen "
        "while another engineer's job kept one core busy, ~2.7 µs when idle); the row pinned "
        "to one core is the stable floor.",
        "Redis durability is whatever the local server is configured with (see machine line); "
        "Celery and Dramatiq acknowledge a send once Redis has it in memory.",
    ]


if __name__ == "__main__":
    main(sys.argv[1:])
