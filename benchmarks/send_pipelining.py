"""What the send process's pipelining rule buys: a frame smaller than the one being committed
waits for that one's answer, against writing each event-loop iteration's frame as soon as fewer
than two are unanswered (the rule before):

    .venv/bin/python benchmarks/send_pipelining.py [--rounds 5] [--duration 4] \
        [--connections 16 64 128 256] [--name send_pipelining]

Serves, in this process, two gateways of ``gateway_app`` on real SQLite brokers whose sends
their send processes commit (one with `SendProcess.hold_smaller_frames` off), and loads their
queue route (POST JSON, durable 202) with wrk at each connection count. Every row is measured
once per round, the order reversed every other round; each row reports its median round. Writes
``benchmarks/results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway_bench import post_script
from gateway_profile import gateway_on, in_rounds, measured
from harness import Result, WrkOptions

from sluice.broker.sqlite import SQLiteBroker


async def pipelining(
    options: WrkOptions, workdir: Path, rounds: int, *, connections: Sequence[int]
) -> list[Result]:
    script = post_script(workdir)
    held = SQLiteBroker(workdir / "held.db", send_process=True)
    eager = SQLiteBroker(workdir / "eager.db", send_process=True)
    assert eager._send_process is not None
    eager._send_process.hold_smaller_frames = False
    for broker in (held, eager):
        await broker.start()
    gateways = [await gateway_on(broker) for broker in (held, eager)]
    results: list[Result] = []
    try:
        for count in connections:
            at = WrkOptions(options.duration, count)
            rows = [
                (f"{count} connections: a smaller frame waits (now)", gateways[0].port),
                (
                    f"{count} connections: every frame written at once (before)",
                    gateways[1].port,
                ),
            ]
            measured_rows = await in_rounds(
                [(name, port, "/enqueue", True) for name, port in rows],
                at,
                script,
                rounds,
                "send pipelining",
            )
            for result in measured_rows:
                result.group = f"queue route, durable 202, {count} connections"
            results += measured_rows
    finally:
        for gateway in gateways:
            await gateway.shutdown(1)
        for broker in (held, eager):
            await broker.close()
    return results


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="The send process's pipelining rule.")
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64, 128, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--name", default="send_pipelining")
    args = parser.parse_args(argv)
    at_each = functools.partial(pipelining, connections=args.connections)
    report = measured(at_each, WrkOptions(args.duration), args.rounds, args.name)
    report.notes.append(
        f"Each row is the median of {args.rounds} rounds (both rows of a connection count once "
        "per round, the order reversed every other round; every round's figure beside it). "
        "Both gateways serve from this process, one at a time; loop thread µs/req is the CPU "
        "time of this process's event-loop thread per request, children µs/req that of the "
        "send processes."
    )
    report.finish()


if __name__ == "__main__":
    main(sys.argv[1:])
