"""What the garbage collector costs the gateway's event loop, before and after `settle_heap`:

    .venv/bin/python benchmarks/gateway_gc.py [--duration 4] [--rounds 2]

Serves the queue route of ``gateway_app`` in this process (SQLite broker, send process, as the
gateway role runs it), loads it with wrk, and records every collection (`gc.callbacks`): per
generation the number of collections, their total and longest pause. First with CPython's default
collector settings, then after `sluice.platform.settle_heap` (what `sluice dev|gateway|worker` call
once started); each ``--rounds`` times. Writes ``benchmarks/results/gateway_gc.{json,md}``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway_bench import post_script
from gateway_profile import gateway_on, measure, measured
from harness import Result, WrkOptions, console

from sluice.broker.sqlite import SQLiteBroker
from sluice.platform import settle_heap

GROUP = "garbage collection under load, queue route, server in this process"


class Collections:
    """Every collection's generation and pause, from `gc.callbacks`."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def summary(self, requests: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for generation in range(3):
            pauses = [p for g, p in self.pauses if g == generation]
            out[f"gen{generation} collections"] = len(pauses)
            out[f"gen{generation} total ms"] = round(sum(pauses) * 1e3, 1)
            out[f"gen{generation} longest ms"] = round(max(pauses, default=0.0) * 1e3, 1)
        out["collector µs/req"] = round(sum(p for _, p in self.pauses) / max(1, requests) * 1e6, 2)
        return out


async def run(options: WrkOptions, workdir: Path, rounds: int) -> list[Result]:
    script = post_script(workdir)
    broker = SQLiteBroker(workdir / "broker.db", send_process=True)
    await broker.start()
    gateway = await gateway_on(broker)
    results = []
    try:
        for label in ("CPython's default collector", "after settle_heap()"):
            if label.startswith("after"):
                settle_heap()
            for round_no in range(rounds):
                console().log(f"gateway gc: {label}, round {round_no + 1}")
                collections = Collections()
                gc.callbacks.append(collections)
                try:
                    result = await measure(label, gateway.port, "/enqueue", options, script)
                finally:
                    gc.callbacks.remove(collections)
                # The measured run plus its one-second warm-up.
                requests = int(result.value * (options.duration + 1))
                result.name = f"{label}, round {round_no + 1}"
                result.group = GROUP
                result.extra = {
                    "tracked objects": len(gc.get_objects()),
                    "frozen objects": gc.get_freeze_count(),
                    **collections.summary(requests),
                    "loop thread µs/req": result.extra["loop thread µs/req"],
                    "p50 ms": result.extra["p50 ms"],
                }
                results.append(result)
    finally:
        await gateway.shutdown(1)
        await broker.close()
    return results


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="Collector pauses under gateway load.")
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    report = measured(run, WrkOptions(args.duration, args.connections), args.rounds, "gateway_gc")
    report.notes.append(
        "Collections are counted over the wrk run and its one-second warm-up; 'collector µs/req' "
        "is their total pause divided by the requests of both. The default rounds run first: the "
        "freeze cannot be undone within a process."
    )
    report.write()
    print(report.markdown())


if __name__ == "__main__":
    main(sys.argv[1:])
