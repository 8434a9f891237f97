"""What the send process's child spends per commit and per message, and what its pipe reads cost:

    .venv/bin/python benchmarks/send_process_cost.py [--commits 300] [--rounds 3] [--name N]

In this process: frames as the gateway's loop writes them (plain one-message sends of
`gateway_bench`'s body), turned into group-commit operations and committed as the child does
(`send_process._Frame`, `groupcommit.commit_group`), for frames of 4, 16, 26 and 64 sends (at 64
connections a frame carries a few dozen). Each frame size is committed with ``synchronous=FULL``,
as the child runs, and side by side with ``synchronous=OFF``, which skips the flush: the
difference is what the flush costs a commit. Then a pipe read with 3 KB waiting, asked for with
1 MiB (what the child used to ask for) and with 64 KiB (`send_process.READ_SIZE`). Rounds
alternate the two settings; each row is its median round. Writes
``benchmarks/results/<name>.{json,md}`` (``send_process_cost`` unless ``--name`` says otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import orjson
from gateway_bench import BODY
from harness import Report, Result

from sluice.broker.contract import QueueConfig
from sluice.broker.groupcommit import commit_group
from sluice.broker.send_process import READ_SIZE, _Frame
from sluice.broker.sqlite import (
    QueueCache,
    SQLiteBroker,
    _Ids,
    open_writer,
    send_standard,
    send_standard_alone,
)

FRAME_SIZES = (4, 16, 26, 64)
QUEUE = "bench"


class Child:
    """A child's writer state on its own database: what `send_process.serve` keeps."""

    def __init__(self, path: Path, synchronous: str) -> None:
        asyncio.run(_create_queue(path))
        self.conn = open_writer(path, {"synchronous": synchronous})
        cache = QueueCache()
        self.send_fn = partial(send_standard, cache)
        self.alone_fn = partial(send_standard_alone, cache)
        self.ids = _Ids()

    def commit(self, frame: bytes) -> bytes:
        parsed = _Frame(frame, self.ids, self.send_fn, self.alone_fn)
        ops = parsed.operations
        return parsed.answer(dict(zip(map(id, ops), commit_group(self.conn, ops), strict=True)))


async def _create_queue(path: Path) -> None:
    async with SQLiteBroker(path) as broker:
        await broker.create_queue(QueueConfig(QUEUE))


def frame(sends: int) -> bytes:
    body = BODY.decode()
    return orjson.dumps([round(time.time() * 1000), [[QUEUE, [[body]] * sends]]])


def commits(child: Child, sends: int, count: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``count`` commits of frames of ``sends`` sends."""
    frames = [frame(sends) for _ in range(count)]
    wall, cpu = time.perf_counter(), time.process_time()
    for f in frames:
        child.commit(f)
    return time.perf_counter() - wall, time.process_time() - cpu


# Run in a fresh interpreter, as the child is: how malloc serves a 1 MiB buffer depends on the
# heap's history (after large frees glibc stops using mmap for it), and the child's heap is young.
_PIPE_READ = """
import os, sys, time
size, count = int(sys.argv[1]), int(sys.argv[2])
r, w = os.pipe()
data = b"x" * 3000
started = time.perf_counter()
for _ in range(count):
    os.write(w, data)
    os.read(r, size)
print((time.perf_counter() - started) / count * 1e6)
"""


def pipe_read(size: int, count: int = 20_000) -> float:
    """µs per 3 KB written to a pipe and read back asking for ``size`` bytes."""
    argv = [sys.executable, "-c", _PIPE_READ, str(size), str(count)]
    return float(subprocess.run(argv, capture_output=True, check=True, text=True).stdout)


def measure(directory: Path, count: int, rounds: int) -> list[Result]:
    children = {s: Child(directory / f"{s}.db", s) for s in ("FULL", "OFF")}
    for child in children.values():
        commits(child, 26, 50)  # warm: statements prepared, the queue cached
    samples: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for r in range(rounds):
        order = ["FULL", "OFF"] if r % 2 == 0 else ["OFF", "FULL"]
        for sends in FRAME_SIZES:
            for setting in order:
                samples.setdefault((sends, setting), []).append(
                    commits(children[setting], sends, max(count, 2000 // sends))
                )
    results = []
    for sends in FRAME_SIZES:
        for setting, name in [
            ("FULL", "synchronous=FULL, as the child commits"),
            ("OFF", "synchronous=OFF, no flush (diagnostic)"),
        ]:
            n = max(count, 2000 // sends)
            wall = statistics.median(w for w, _ in samples[(sends, setting)]) / n
            cpu = statistics.median(c for _, c in samples[(sends, setting)]) / n
            results.append(
                Result(
                    f"child commit, frames of {sends} one-message sends",
                    name,
                    "wall µs/commit",
                    round(wall * 1e6),
                    baseline=setting == "FULL",
                    extra={
                        "cpu µs/commit": round(cpu * 1e6),
                        "wall µs/message": round(wall * 1e6 / sends, 1),
                        "cpu µs/message": round(cpu * 1e6 / sends, 1),
                    },
                    settings={"commits per round": n, "rounds": rounds},
                )
            )
    reads: dict[int, list[float]] = {1 << 20: [], READ_SIZE: []}
    for _ in range(rounds):
        for size in reads:
            reads[size].append(pipe_read(size))
    for size in reads:
        results.append(
            Result(
                "a pipe read with 3 KB waiting, in a fresh interpreter",
                f"asking for {size // 1024} KiB" + (" (READ_SIZE)" if size == READ_SIZE else ""),
                "µs per write+read",
                round(statistics.median(reads[size]), 2),
                baseline=size == 1 << 20,
            )
        )
    return results


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="The send process child's cost per commit.")
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="send_process_cost", help="results/<name>.{json,md}")
    args = parser.parse_args(argv)
    report = Report(args.name)
    with tempfile.TemporaryDirectory() as tmp:
        for result in measure(Path(tmp), args.commits, args.rounds):
            report.add(result)
    report.notes.append(
        "In one process, no pipes: the child's work per frame (decode, group commit, answer) "
        "without the gateway or wrk beside it. Under gateway load the child shares two vCPUs "
        "with the loop and wrk, so its CPU per message there is higher (gateway_profile)."
    )
    report.finish()


if __name__ == "__main__":
    main(sys.argv[1:])
