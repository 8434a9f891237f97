"""The choices under the runtime's warm path, measured side by side: a round trip to a forked
Python child over two pipes vs one Unix socket pair, and with the child in the parent's process
group, its own process group (what environments do) or its own session (what they did: every
session is a scheduling autogroup).

    .venv/bin/python benchmarks/ipc_bench.py [--rounds 10000] [--runs 3]

Both processes are pinned to cpu 0, so the figures are CPU work, not cross-core wake-ups; the
variants are interleaved run by run and each row is the median of the runs' p50s. Writes
``benchmarks/results/ipc.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
from collections.abc import Callable, Sequence

from baselines import time_round_trips
from harness import Distribution, Report, Result

GROUP = "round trip of 64 bytes to a forked Python child, both pinned to cpu 0"
SIZE = 64


def _pipes() -> tuple[tuple[int, int], tuple[int, int]]:
    """(parent read, parent write), (child read, child write)."""
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    return (to_parent_r, to_child_w), (to_child_r, to_parent_w)


def _socketpair() -> tuple[tuple[int, int], tuple[int, int]]:
    ours, theirs = socket.socketpair()
    a, b = ours.detach(), theirs.detach()
    return (a, a), (b, b)


VARIANTS: dict[str, tuple[Callable[[], tuple[tuple[int, int], tuple[int, int]]], str]] = {
    "two pipes, child in the parent's process group": (_pipes, "none"),
    "two pipes, child leads its own process group (environments now)": (_pipes, "setpgid"),
    "two pipes, child leads its own session (environments before)": (_pipes, "setsid"),
    "one Unix socket pair, child in the parent's process group": (_socketpair, "none"),
}


def _round_trips(
    make: Callable[[], tuple[tuple[int, int], tuple[int, int]]],
    detach: str,
    rounds: int,
    warmup: int = 500,
) -> Distribution:
    (read_fd, write_fd), (child_read, child_write) = make()
    pid = os.fork()
    ours, theirs = {read_fd, write_fd}, {child_read, child_write}
    for fd in ours if pid == 0 else theirs:  # so the child sees EOF when we close ours
        os.close(fd)
    if pid == 0:  # the echo child
        if detach == "setsid":
            os.setsid()
        elif detach == "setpgid":
            os.setpgid(0, 0)
        while data := os.read(child_read, 65536):
            os.write(child_write, data)
        os._exit(0)
    try:
        return time_round_trips(write_fd, read_fd, rounds, SIZE, warmup)
    finally:
        for fd in ours:
            os.close(fd)
        os.waitpid(pid, 0)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--name", default="ipc", help="results/<name>.{json,md}")
    args = parser.parse_args(argv)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})  # the children inherit it
    runs: dict[str, list[Distribution]] = {name: [] for name in VARIANTS}
    try:
        for _ in range(args.runs):
            for name, (make, detach) in VARIANTS.items():
                runs[name].append(_round_trips(make, detach, args.rounds))
    finally:
        os.sched_setaffinity(0, affinity)
    report = Report(args.name)
    for i, (name, dists) in enumerate(runs.items()):
        report.add(
            Result(
                GROUP,
                name,
                "p50 µs",
                statistics.median(d.p50 for d in dists),
                baseline=i == 0,
                extra={
                    "p99 µs": statistics.median(d.p99 for d in dists),
                    "p50 of each run": " ".join(f"{d.p50:.1f}" for d in dists),
                },
                settings={"rounds": args.rounds, "runs": args.runs},
            )
        )
    report.notes.append(
        "Runs interleave the variants; each row is the median of its runs' p50 (p99 likewise)."
    )
    report.finish()


if __name__ == "__main__":
    main(sys.argv[1:])
