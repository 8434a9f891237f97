"""What the send process's pipelining rule buys: a frame smaller than the one being committed
waits for that one's answer, against writing each event-loop iteration's frame as soon as fewer
than two are unanswered (the rule before):

    .venv/bin/python benchmarks/send_pipelining.py [--rounds 5] [--duration 4] \
        [--connections 16 64 128 256] [--name send_pipelining]

Serves, in this process, two gateways of ``gateway_app`` on real SQLite brokers whose sends
their send processes commit (one with `SendProcess.hold_smaller_frames` off), and loads their
queue route (POST JSON, durable 202) with wrk at each connection count, recording how many
sends each frame to a child carried (warm-ups included). Every row is measured
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
from harness import Result, Scalar, WrkOptions

from sluice.broker.send_process import SendProcess
from sluice.broker.sqlite import SQLiteBroker


class FrameSizes:
    """The number of sends in each frame a send process writes (recorded from its unanswered
    frames after each flush: one `len` per frame, nothing per request)."""

    def __init__(self, process: SendProcess) -> None:
        self.sizes: list[int] = []
        flush = process._flush

        def recorded(*, at_once: bool = False) -> None:
            before = len(process._in_flight)
            flush(at_once=at_once)
            if len(process._in_flight) > before:
                self.sizes.append(len(process._in_flight[-1][0]))

        process._flush = recorded  # type: ignore[method-assign]

    def percentiles(self) -> dict[str, Scalar]:
        """p10 / p50 / p90 of the sends per frame recorded since the last call."""
        sizes, self.sizes = sorted(self.sizes), []
        if not sizes:
            return {}
        at = [sizes[min(len(sizes) - 1, int(len(sizes) * q))] for q in (0.1, 0.5, 0.9)]
        return {"sends per frame p10 / p50 / p90": " / ".join(map(str, at))}


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
    frames = [FrameSizes(broker._send_process) for broker in (held, eager)]  # type: ignore[arg-type]
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
            for result, sizes in zip(measured_rows, frames, strict=True):
                result.group = f"queue route, durable 202, {count} connections"
                result.extra.update(sizes.percentiles())
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
