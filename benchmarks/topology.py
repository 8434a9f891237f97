"""Issue 4 acceptance at full size: 2 gateways + 3 workers + Redis + PostgreSQL on one machine,
200,000 messages POSTed through the gateways while workers are SIGKILLed (whole process tree)
at random and restarted. Reports lost messages (must be 0), duplicates, the peak number of
concurrent batches against the mapping's global `max_concurrency`, and the rates.

Redis is a dedicated ``redis-server`` (``appendonly yes``, ``appendfsync always``) in a temporary
directory; PostgreSQL is the local server (``--postgres``), in tables of the run's own.

    .venv/bin/python benchmarks/topology.py [--messages 200000] [--kills 20] [--kill-every 4]

writes ``benchmarks/results/topology.{json,md}``. The same run, small, is
tests/scaleout/test_topology.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT), str(ROOT / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from harness import Report, Result, console, load_average  # noqa: E402
from tests.scaleout.cluster import (  # noqa: E402
    MAX_CONCURRENCY,
    TopologyConfig,
    TopologyResult,
    run_topology,
)

GROUP = "2 gateways + 3 workers, workers SIGKILLed and restarted"


def report_of(result: TopologyResult) -> Report:
    report = Report("topology")
    report.machine["redis persistence"] = "AOF appendfsync=always (dedicated redis-server)"
    c = result.config
    settings = {
        "messages": c.messages,
        "kills": result.kills,
        "kill every s": c.kill_every,
        "HTTP connections": c.connections * c.gateways,
    }
    rows = [
        ("accepted (202)", "msgs", result.accepted, {"sent": result.sent, **_errors(result)}),
        ("lost (accepted, neither processed nor in DLQ)", "msgs", result.lost, {}),
        ("in dead-letter queue", "msgs", result.in_dlq, {}),
        ("duplicate deliveries", "msgs", result.duplicates, {"ids": result.processed_ids}),
        (
            "peak concurrent batches",
            "batches",
            result.peak_concurrency,
            {"max_concurrency": MAX_CONCURRENCY, "batches": result.batches},
        ),
        (
            "intake through the gateways",
            "msgs/s",
            result.accepted / result.load_seconds,
            {
                "seconds": round(result.load_seconds, 1),
                "p50 ms": round(result.p50_ms, 1),
                "p99 ms": round(result.p99_ms, 1),
            },
        ),
        (
            "end to end (first request to last message processed)",
            "msgs/s",
            result.accepted / result.total_seconds,
            {"seconds with startup": round(result.total_seconds, 1)},
        ),
    ]
    for name, metric, value, extra in rows:
        report.add(Result(GROUP, name, metric, value, extra=extra, settings=settings))
    report.notes += [
        "Each kill SIGKILLs a random worker's whole process tree (the worker and its execution "
        "environments) and starts a new worker at once; gateways are not killed.",
        "The handler writes each message id with its request body's key into PostgreSQL in one "
        "transaction per batch (INSERT .. ON CONFLICT counts a second delivery as a duplicate) "
        "and records the batch's start/end time; the peak is the largest number of those "
        "intervals open at one instant. A batch killed before its commit leaves no interval.",
        "Every request carries a distinct body, so with no failed request the accepted "
        "messages are exactly the bodies sent: lost = accepted - |processed or dead-lettered|.",
        f"load average (1/5/15 min) at the end: {load_average()}",
    ]
    return report


def _errors(result: TopologyResult) -> dict[str, int]:
    other = {f"status {k}": v for k, v in result.statuses.items() if int(k) != 202}
    return {**other, **{f"error {k}": v for k, v in result.errors.items()}}


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--kill-every", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=64, help="per gateway")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args(argv)
    config = TopologyConfig(
        messages=args.messages,
        kills=args.kills,
        kill_every=args.kill_every,
        connections=args.connections,
        drain_timeout=900.0,
    )
    out = console()
    with tempfile.TemporaryDirectory(prefix="sluice-topology-") as work:
        result = run_topology(config, args.postgres, Path(work), log=out.log)
    report = report_of(result)
    for path in report.write():
        out.log(f"wrote {path}")
    print(report.markdown())
    if result.lost or result.peak_concurrency > MAX_CONCURRENCY:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
