"""A gateway's queue route on the Redis broker (the scale-out deployment), side by side with the
embedded one, in one run:

    .venv/bin/python benchmarks/gateway_redis.py [--duration 4] [--connections 64] [--rounds 5]

Serves, in this process (as `gateway_profile` does, so that the event loop's CPU time can be
read), Sluice's `HttpServer` answering hello world, then ``gateway_app``'s queue route (POST JSON,
202 once the message is durable) on: the SQLite broker with its send process (the embedded
default); the Redis broker, whose `send_soon` stores one event-loop iteration's sends to a queue
in one script call; and, for comparison, the same Redis broker storing each send with a call of
its own, as a task (what its queue routes did before `send_soon`). Redis is a dedicated
``redis-server`` (``appendonly yes``, ``appendfsync always``) in a temporary directory. Every row
once per round, the order reversed every other round; each row is its median round. Writes
``benchmarks/results/gateway_redis.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest.mock import patch

from gateway_app import _hello
from gateway_bench import post_script
from gateway_profile import gateway_on, in_rounds, measured
from harness import WrkOptions

from faults import Redis
from sluice.broker.contract import SendOutcome, send_as_task
from sluice.broker.redis import RedisBroker
from sluice.broker.sqlite import SQLiteBroker
from sluice.gateway import GatewayConfig
from sluice.gateway.server import HttpServer


def _each_send_a_task(
    self: RedisBroker, queue: str, messages: Sequence[Any], done: Callable[[SendOutcome], None]
) -> None:
    """For comparison only: every send stored by its own script call, as a task."""
    send_as_task(self._sending, self.send(queue, messages), done)


async def compare(options: WrkOptions, workdir: Path, rounds: int) -> list[Any]:
    script = post_script(workdir)
    redis = Redis(workdir)
    redis.start()
    hello = HttpServer(GatewayConfig(access_log=False), _hello)
    await hello.start("127.0.0.1", 0)
    sqlite = SQLiteBroker(workdir / "broker.db", send_process=True)
    gathered = RedisBroker(redis.url, namespace="gathered")
    alone = RedisBroker(redis.url, namespace="alone")
    brokers = (sqlite, gathered, alone)
    for broker in brokers:
        await broker.start()
    gateways = [await gateway_on(sqlite), await gateway_on(gathered)]
    with patch.object(RedisBroker, "send_soon", _each_send_a_task):
        gateways.append(await gateway_on(alone))
    rows = [
        ("Sluice HttpServer, hello world (GET)", hello.port, "/", False),
        (
            "queue route, SQLite broker (send process), durable 202",
            gateways[0].port,
            "/enqueue",
            True,
        ),
        ("queue route, Redis broker, durable 202", gateways[1].port, "/enqueue", True),
        (
            "the same on Redis, each send its own script call (before send_soon)",
            gateways[2].port,
            "/enqueue",
            True,
        ),
    ]
    try:
        return await in_rounds(rows, options, script, rounds, "gateway on Redis")
    finally:
        for gateway in gateways:
            await gateway.shutdown(1)
        await hello.close(1)
        for broker in brokers:
            await broker.close()
        redis.stop()


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="The queue route on the Redis broker.")
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--name", default="gateway_redis")
    args = parser.parse_args(argv)
    report = measured(compare, WrkOptions(args.duration, args.connections), args.rounds, args.name)
    report.machine["redis persistence"] = "AOF appendfsync=always (dedicated redis-server)"
    report.notes.append(
        "Served in this process; 'loop thread µs/req' is the event loop's CPU per request, "
        "'children µs/req' that of the processes this one started: the send process (SQLite "
        "row) and the redis-server (Redis rows). "
        f"Each row is the median of {args.rounds} rounds, the order reversed every other round."
    )
    report.write()
    print(report.markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
